from __future__ import annotations

import io
import threading
import time

from tqdm import tqdm

from circuitlens.core.progress import heartbeat


def test_a_bar_keeps_redrawing_during_a_long_step() -> None:
    out = io.StringIO()
    bar = tqdm(total=3, file=out, mininterval=0)
    before = out.getvalue().count("\r")
    with heartbeat(bar, "evaluating", interval=0.05):
        time.sleep(0.4)  # one long step: no update() call
    assert out.getvalue().count("\r") - before >= 4
    assert "evaluating" in out.getvalue()
    assert not any(t.name == "circuitlens-heartbeat" for t in threading.enumerate())
    bar.close()


def test_a_disabled_bar_is_left_alone() -> None:
    with heartbeat(tqdm(total=1, disable=True)), heartbeat(None):
        pass
