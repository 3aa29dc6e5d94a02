"""Progress bars that keep moving through long single steps.

A tqdm bar redraws only when it is updated, so during one long step (an evaluation of a large
model, a task's setup inside a run) its elapsed time freezes and the run looks hung.
:func:`heartbeat` redraws a bar from a background thread every ``interval`` seconds while the
step runs, with a note of what it is doing.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def heartbeat(bar: Any, note: str | None = None, interval: float = 1.0) -> Iterator[None]:
    """Inside the ``with``, redraw ``bar`` every ``interval`` s (showing ``note`` as its
    postfix); a disabled bar (or None) is left alone."""
    if bar is None or getattr(bar, "disable", True):
        yield
        return
    if note is not None:
        bar.set_postfix_str(note, refresh=True)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            bar.refresh()

    thread = threading.Thread(target=beat, name="circuitlens-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
