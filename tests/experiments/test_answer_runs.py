"""``benchmarks/answer_runs.sh start``, dry (``ANSWER_DRY=1``: no process started): each task
with pending cells gets a run; once one task is finished, the other's pending seeds are split
over two directories, the split is chosen once, and the second directory's finished cells are
copied into the task's."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from circuitlens.experiments.config import UNTRAINED

pytestmark = pytest.mark.unit

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "answer_runs.sh"
TRAINED = ["ce", "ce+align", "ce+permuted"]
TASKS = {"entity-tracking": "entity_tracking", "theory-of-mind": "theory_of_mind"}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "benchmarks").mkdir()
    shutil.copy(SCRIPT, tmp_path / "benchmarks" / SCRIPT.name)
    for name, task in TASKS.items():
        run = tmp_path / "runs" / f"answer-{name}"
        (run / task).mkdir(parents=True)
        config = {"tasks": [task], "conditions": [*UNTRAINED, *TRAINED], "seeds": list(range(6))}
        (run / "config.json").write_text(json.dumps(config))
        (run / ".circuitlens-run").write_text("{}")
        for f in ("setup.json", "lr.json"):
            (run / task / f).write_text(f'{{"{f}": 1}}')
    return tmp_path


def _finish(run: Path, task: str, seeds, conditions=TRAINED) -> None:
    for c in conditions:
        for s in seeds:
            cell = run / task / c / f"seed{s}" / "cell.json"
            cell.parent.mkdir(parents=True, exist_ok=True)
            cell.write_text(json.dumps({"condition": c, "seed": s, "in": run.name}))


def _start(
    root: Path, command: str = "start", py: str = sys.executable, only: str = "", check=True
) -> list[str]:
    env = {"ANSWER_DRY": "1", "ANSWER_PY": py, "PATH": "/usr/bin:/bin", "ANSWER_ONLY": only}
    out = subprocess.run(
        ["bash", str(root / "benchmarks" / SCRIPT.name), command],
        env=env, capture_output=True, text=True, check=check,
    )  # fmt: skip
    return out.stdout.splitlines() if check else [out.stderr.strip()]


def test_both_tasks_pending_each_gets_one_run(root: Path) -> None:
    _finish(root / "runs" / "answer-entity-tracking", "entity_tracking", range(6))
    _finish(root / "runs" / "answer-entity-tracking", "entity_tracking", [], ["ce"])
    (root / "runs/answer-entity-tracking/entity_tracking/ce/seed5/cell.json").unlink()
    assert _start(root) == [
        "answer-entity-tracking: would start",
        "answer-theory-of-mind: would start",
    ]
    assert not (root / "runs" / "answer-theory-of-mind-b").exists()


def test_one_task_left_runs_on_two_directories_and_merges_back(root: Path) -> None:
    runs = root / "runs"
    _finish(runs / "answer-entity-tracking", "entity_tracking", range(6))
    _finish(runs / "answer-theory-of-mind", "theory_of_mind", [0])
    _finish(runs / "answer-theory-of-mind", "theory_of_mind", [1], ["ce"])  # seed 1 pending
    assert _start(root) == [
        "answer-theory-of-mind: would start (--seeds 1 2 3)",
        "answer-theory-of-mind-b: would start (--seeds 4 5)",
    ]
    b = runs / "answer-theory-of-mind-b"
    assert (runs / "answer-theory-of-mind-b.seeds").read_text().split() == ["4", "5"]
    for f in (
        "config.json",
        ".circuitlens-run",
        "theory_of_mind/setup.json",
        "theory_of_mind/lr.json",
    ):
        assert (b / f).read_bytes() == (runs / "answer-theory-of-mind" / f).read_bytes()

    # the second directory finishes seed 4, the first seed 1: the split stays as chosen
    _finish(b, "theory_of_mind", [4])
    _finish(runs / "answer-theory-of-mind", "theory_of_mind", [1])
    assert _start(root) == [
        "answer-theory-of-mind: would start (--seeds 2 3)",
        "answer-theory-of-mind-b: would start (--seeds 5)",
    ]
    merged = runs / "answer-theory-of-mind" / "theory_of_mind" / "ce+align" / "seed4" / "cell.json"
    assert json.loads(merged.read_text())["in"] == "answer-theory-of-mind-b"

    # every seed finished in one directory or the other: nothing to start
    _finish(b, "theory_of_mind", [5])
    _finish(runs / "answer-theory-of-mind", "theory_of_mind", [2, 3])
    assert _start(root) == ["every cell of both tasks is finished"]
    cells = list((runs / "answer-theory-of-mind").glob("theory_of_mind/*/seed*/cell.json"))
    assert len(cells) == 6 * len(TRAINED)


def test_export_keeps_a_running_task_to_its_cells(root: Path) -> None:
    """``export``: a task with a cell pending is exported with ``--report none`` (no table or
    report page, no test-set summary before its last cell), a finished one with its page;
    the second directory's cells are merged first, so they count."""
    runs = root / "runs"
    _finish(runs / "answer-entity-tracking", "entity_tracking", range(5))
    _finish(runs / "answer-entity-tracking-b", "entity_tracking", [5])
    _finish(runs / "answer-theory-of-mind", "theory_of_mind", range(6), ["ce", "ce+align"])
    # a Python that runs the script's own snippets but prints what it would export
    py = root / "py"
    py.write_text(
        "#!/bin/sh\n"
        f'case "$1" in benchmarks/export_run.py) echo "$@";; *) exec {sys.executable} "$@";; esac\n'
    )
    py.chmod(0o755)
    assert _start(root, "export", str(py)) == [
        "benchmarks/export_run.py --report html runs/answer-entity-tracking answer-entity-tracking",
        "benchmarks/export_run.py --report none runs/answer-theory-of-mind answer-theory-of-mind",
    ]


def test_one_task_alone_takes_both_cores_and_the_other_follows(root: Path) -> None:
    """``ANSWER_ONLY=<task>``: that task's pending seeds split over both directories while the
    other waits; once it is finished, a plain ``start`` splits the other's."""
    runs = root / "runs"
    _finish(runs / "answer-entity-tracking", "entity_tracking", [0, 1])
    _finish(runs / "answer-theory-of-mind", "theory_of_mind", [0])
    assert _start(root, only="entity-tracking") == [
        "answer-entity-tracking: would start (--seeds 2 3)",
        "answer-entity-tracking-b: would start (--seeds 4 5)",
    ]
    assert not (runs / "answer-theory-of-mind-b").exists()
    assert "no such task" in _start(root, only="entity_tracking", check=False)[0]

    _finish(runs / "answer-entity-tracking", "entity_tracking", [2, 3])
    _finish(runs / "answer-entity-tracking-b", "entity_tracking", [4, 5])
    assert "every cell is finished" in _start(root, only="entity-tracking", check=False)[0]
    assert _start(root) == [
        "answer-theory-of-mind: would start (--seeds 1 2 3)",
        "answer-theory-of-mind-b: would start (--seeds 4 5)",
    ]
    assert len(list(runs.glob("answer-entity-tracking/entity_tracking/*/seed*/cell.json"))) == 18
