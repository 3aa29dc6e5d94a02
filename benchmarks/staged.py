"""A benchmark run in named stages under one time budget, its JSON rewritten after each stage.

A :class:`StagedRun` runs each stage under what is left of the budget (counted from ``t0``): a
stage past it is stopped by SIGALRM and recorded as ``timeout``, later ones as ``skipped``; a
stage that raises :class:`Skip` is recorded as ``skipped`` with the reason, one that fails as
``error`` with its traceback, and the others still run. The JSON is rewritten atomically after
each stage, so a killed run keeps what finished. Siblings import it as ``from staged import
StagedRun``; ``gpu_scale.py`` is its user.
"""

from __future__ import annotations

import json
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

Facts = dict[str, Any]


class StageTimeout(BaseException):
    """The run's time budget ran out during a stage (a BaseException: no ``except Exception``
    on the way up swallows it)."""


class Skip(Exception):
    """A stage cannot run (what it needs is missing); the message says why."""


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise :class:`StageTimeout` in the main thread after ``seconds`` (SIGALRM)."""

    def fire(signum: int, frame: Any) -> None:
        raise StageTimeout(f"the budget ran out after {seconds:.0f} s of this stage")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class StagedRun:
    """The stages' facts, the objects they share (``models``), and the JSON written after each.

    ``wanted(name)`` says whether stage ``name`` was asked for; ``header`` opens the JSON,
    ``summary(stages)`` closes it (figures computed from the stages' facts); ``after()`` runs
    after every stage that ran (e.g. to free the memory it dropped); ``label`` prefixes the
    progress lines on stderr.
    """

    def __init__(
        self,
        out: Path,
        *,
        budget_s: float,
        t0: float,
        wanted: Callable[[str], bool],
        header: Facts,
        summary: Callable[[dict[str, Facts]], Facts],
        after: Callable[[], None] = lambda: None,
        label: str = "bench",
    ) -> None:
        self.out, self.budget_s, self.t0 = out, budget_s, t0
        self.wanted, self.header, self.summary = wanted, header, summary
        self.after, self.label = after, label
        self.models: dict[str, Any] = {}
        self.stages: dict[str, Facts] = {}

    def left(self) -> float:
        """Seconds of the budget left."""
        return self.budget_s - (time.perf_counter() - self.t0)

    def stage(self, name: str, fn: Callable[[], Facts], also: bool = False) -> None:
        """Run ``fn`` as stage ``name`` (if wanted, or ``also``) under what is left of the
        budget, record its facts (with ``status`` first and ``stage_wall_s`` last) or why not,
        and rewrite the JSON."""
        left = self.left()
        if not (also or self.wanted(name)):
            self.stages[name] = {"status": "skipped", "reason": "not in --stages"}
        elif left <= 0:
            self.stages[name] = {"status": "skipped", "reason": "the budget ran out before it"}
        else:
            print(f"[{self.label}] {name} ({left:.0f} s of the budget left)", file=sys.stderr)
            t0 = time.perf_counter()
            try:
                with deadline(left):
                    facts = fn()
                self.stages[name] = {"status": "ok", **facts}
            except Skip as e:
                self.stages[name] = {"status": "skipped", "reason": str(e)}
            except StageTimeout as e:
                self.stages[name] = {"status": "timeout", "reason": str(e)}
            except Exception as e:  # a failed stage is recorded; the others still run
                self.stages[name] = {
                    "status": "error",
                    "error": f"{type(e).__name__}: {e}",
                    "traceback": traceback.format_exc()[-4000:],
                }
            self.stages[name]["stage_wall_s"] = round(time.perf_counter() - t0, 3)
            self.after()
            print(f"[{self.label}] {name}: {self.stages[name]['status']}", file=sys.stderr)
        self.write()

    def record(self, name: str, facts: Facts) -> None:
        """Record stage ``name`` as ``facts`` without running anything, and rewrite the JSON."""
        self.stages[name] = facts
        self.write()

    def need(self, *names: str) -> list[Any]:
        """The shared objects ``names``; :class:`Skip` where one is missing."""
        missing = [n for n in names if n not in self.models]
        if missing:
            raise Skip(f"needs {', '.join(missing)} (its build stage did not run)")
        return [self.models[n] for n in names]

    def write(self) -> Facts:
        """The JSON now (``header``, ``elapsed_s``, ``stages``, ``summary(stages)``), written
        atomically to ``out``; returned."""
        from circuitlens.core.io import atomic_write_text

        result = {
            **self.header,
            "elapsed_s": round(time.perf_counter() - self.t0, 2),
            "stages": self.stages,
            **self.summary(self.stages),
        }
        atomic_write_text(self.out, json.dumps(result, indent=1, default=str))
        return result
