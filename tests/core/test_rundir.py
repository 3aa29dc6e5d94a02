"""Output directories: only a run's own directory is ever deleted; one run per directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from circuitlens import ExperimentConfig, run_experiment
from circuitlens.cli import main
from circuitlens.core.rundir import (
    LOCK,
    MARKER,
    RunDirectoryError,
    RunFileError,
    RunLockedError,
    prepare_run_directory,
    read_json,
    run_directory,
    run_lock,
)


def test_fresh_deletes_only_a_marked_directory(tmp_path: Path) -> None:
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "chapter1.tex").write_text("years of work")
    with pytest.raises(
        RunDirectoryError, match=r"refusing to delete .*chapter1\.tex.*new or empty"
    ):
        prepare_run_directory(mine, fresh=True)
    assert (mine / "chapter1.tex").read_text() == "years of work"
    with pytest.raises(RunDirectoryError, match="refusing to write into"):
        prepare_run_directory(mine)
    # the advice: a new (or empty) directory
    run = prepare_run_directory(tmp_path / "new", fresh=True)
    assert (run / MARKER).is_file()
    (run / "config.json").write_text(json.dumps({"tasks": ["entity_tracking"]}))
    (run / "entity_tracking" / "ce" / "seed0").mkdir(parents=True)
    (run / "entity_tracking" / "ce" / "seed0" / "cell.json").write_text("{}")
    prepare_run_directory(run)  # a marked directory is resumed as it is
    assert (run / "entity_tracking" / "ce" / "seed0" / "cell.json").is_file()
    prepare_run_directory(run, fresh=True)  # and --fresh empties it
    assert sorted(p.name for p in run.iterdir()) == [MARKER]
    empty = tmp_path / "empty"
    empty.mkdir()
    prepare_run_directory(empty, fresh=True)
    assert (empty / MARKER).is_file()


def test_fresh_refuses_a_run_directory_holding_a_users_file(tmp_path: Path) -> None:
    """What every command writes is deleted; a file of the user's in a finished run's
    directory makes --fresh refuse, naming it, and nothing is deleted."""
    from circuitlens.core.rundir import RUN_ENTRIES

    run = prepare_run_directory(tmp_path / "run")
    # a finished reproduce run: tables, pages, task directories, a sweep point (a sub-run)
    (run / "config.json").write_text(json.dumps({"tasks": ["entity_tracking", "my_jsonl"]}))
    for name in ("table.md", "cells.csv", "report.html", "plotly.min.js", ".table.md.x.tmp"):
        (run / name).write_text("x")
    for d in ("entity_tracking/circuit", "my_jsonl/ce/seed0", "checkpoints", "result"):
        (run / d).mkdir(parents=True)
    prepare_run_directory(run / "lam=0.3")
    assert {"table.md", "checkpoints", "result"} <= set(RUN_ENTRIES)
    (run / "mynotes.txt").write_text("what I saw")
    (run / "plots").mkdir()  # a directory of the user's: no marker, no task of the config
    before = sorted(p.name for p in run.iterdir())
    with pytest.raises(RunDirectoryError, match=r"mynotes\.txt, plots.*nothing was deleted"):
        prepare_run_directory(run, fresh=True)
    assert sorted(p.name for p in run.iterdir()) == before  # nothing lost
    (run / "mynotes.txt").rename(tmp_path / "mynotes.txt")  # the advice: move them out
    (run / "plots").rmdir()
    prepare_run_directory(run, fresh=True)
    assert sorted(p.name for p in run.iterdir()) == [MARKER]


def test_cli_fresh_keeps_a_users_notes_in_a_finished_run(tmp_path: Path, capsys) -> None:
    run = prepare_run_directory(tmp_path / "run", kind="reproduce")
    (run / "table.md").write_text("old table")
    (run / "mynotes.txt").write_text("what I saw")
    code = main(["reproduce", "--quick", "--fresh", "--out", str(run), "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "mynotes.txt" in err and "Move them out" in err
    assert (run / "mynotes.txt").read_text() == "what I saw"
    assert (run / "table.md").read_text() == "old table"


def test_a_file_is_not_an_output_directory(tmp_path: Path) -> None:
    f = tmp_path / "out"
    f.write_text("x")
    with pytest.raises(RunDirectoryError, match="is a file"):
        prepare_run_directory(f)


def test_cli_reproduce_fresh_refuses_a_users_directory(tmp_path: Path, capsys) -> None:
    mine = tmp_path / "data"
    mine.mkdir()
    (mine / "keep.csv").write_text("1,2")
    code = main(["reproduce", "--quick", "--fresh", "--out", str(mine), "--no-progress"])
    assert code == 2
    assert "refusing to delete" in capsys.readouterr().err
    assert (mine / "keep.csv").read_text() == "1,2"


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_a_second_run_is_refused_and_a_stale_lock_is_taken_over(tmp_path: Path) -> None:
    run = prepare_run_directory(tmp_path / "run")
    other = _sleeper()
    try:
        (run / LOCK).write_text(json.dumps({"pid": other.pid, "host": os.uname().nodename}))
        with pytest.raises(RunLockedError, match=f"process {other.pid}.*another output"):
            with run_lock(run):
                pass
        with pytest.raises(RunLockedError):  # a second run is refused before --fresh deletes
            with run_directory(run, fresh=True):
                pass
        assert (run / MARKER).is_file()
        with pytest.raises(RunLockedError):  # run_experiment checks before any work
            run_experiment(ExperimentConfig.quick(tasks=("entity_tracking",)), run, progress=False)
    finally:
        # the advice: stop the other run (or wait for it); its lock is then stale
        other.kill()
        other.wait()
    with run_lock(run):
        assert json.loads((run / LOCK).read_text())["pid"] == os.getpid()
    assert not (run / LOCK).exists()  # released


def test_the_lock_is_released_on_an_exception(tmp_path: Path) -> None:
    with pytest.raises(KeyError):
        with run_directory(tmp_path / "r"):
            raise KeyError("boom")
    assert not (tmp_path / "r" / LOCK).exists()


def test_deleting_the_lock_file_frees_the_directory(tmp_path: Path) -> None:
    run = prepare_run_directory(tmp_path / "run")
    other = _sleeper()
    try:
        (run / LOCK).write_text(json.dumps({"pid": other.pid, "host": os.uname().nodename}))
        with pytest.raises(RunLockedError, match="delete the lock file"):
            with run_lock(run):
                pass
        (run / LOCK).unlink()  # the advice, for a lock whose process is known to be gone
        with run_lock(run):
            pass
    finally:
        other.kill()
        other.wait()


def test_reproduce_checks_every_task_before_any_work(tmp_path: Path, monkeypatch) -> None:
    """A cross-tokenizer pair in the second task is refused before the first task's work."""
    import circuitlens.experiments.runner as runner
    from circuitlens.tasks import TokenizerMismatchError

    calls = []
    real = runner.require_compatible_tokenizers

    def second_mismatches(teacher, student, task, *args):  # noqa: ANN001, ANN002, ANN202
        calls.append(task.name)
        if task.name == "theory_of_mind":
            raise TokenizerMismatchError("stand-in mismatch")
        return real(teacher, student, task, *args)

    monkeypatch.setattr(runner, "require_compatible_tokenizers", second_mismatches)
    monkeypatch.setattr(runner, "_setup_task", lambda *a, **k: pytest.fail("work started"))
    cfg = ExperimentConfig.quick(use_circuit=False)
    with pytest.raises(TokenizerMismatchError, match="stand-in"):
        run_experiment(cfg, tmp_path / "run", progress=False)
    assert calls == ["entity_tracking", "theory_of_mind"]
    assert not (tmp_path / "run" / LOCK).exists()


def test_read_json_names_a_damaged_file_and_the_fix(tmp_path: Path) -> None:
    f = tmp_path / "setup.json"
    f.write_text(json.dumps({"task": "entity_tracking", "seconds": 1.5}))
    assert read_json(f, "the setup") == {"task": "entity_tracking", "seconds": 1.5}
    for content, problem in [
        (b'{"task": "entity_tr', "not valid JSON: Unterminated string"),
        (b"", "not valid JSON: Expecting value"),
        (b"[1, 2]", "not a JSON object: it holds a list"),
        (b'{"a": "\xff\xfe"}', "not UTF-8 text"),
    ]:
        f.write_bytes(content)
        with pytest.raises(RunFileError) as e:
            read_json(f, "the setup")
        assert isinstance(e.value, RunDirectoryError) and isinstance(e.value, ValueError)
        assert e.value.path == f
        assert str(e.value).startswith(f"the setup {str(f)!r} is damaged ({problem}")
        assert "delete it to recompute that step (the rest of the run is kept)" in str(e.value)
        assert str(e.value).endswith("or rerun with --fresh to start over")
    with pytest.raises(FileNotFoundError):
        read_json(tmp_path / "none.json", "the setup")


_PARENT = """
import multiprocessing, os, sys, time
from concurrent.futures import ProcessPoolExecutor
from circuitlens.core.rundir import die_with_parent

if __name__ == "__main__":
    pool = ProcessPoolExecutor(
        1, mp_context=multiprocessing.get_context("spawn"), initializer=die_with_parent,
        initargs=(os.getpid(),),
    )
    print(pool.submit(os.getpid).result(), flush=True)
    pool.submit(time.sleep, 120)  # a cell that would go on writing
    time.sleep(120)
"""


def _gone(pid: int) -> bool:
    from circuitlens.core.rundir import _pid_alive

    return not _pid_alive(pid)


@pytest.mark.acceptance
def test_workers_die_with_their_killed_parent(tmp_path: Path) -> None:
    """kill -9 of a run: its pool worker exits within seconds instead of writing on."""
    import signal
    import time

    script = tmp_path / "parent.py"
    script.write_text(_PARENT)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, env=env)
    worker = 0
    try:
        worker = int(parent.stdout.readline())
        assert not _gone(worker)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        deadline = time.time() + 10
        while not _gone(worker) and time.time() < deadline:
            time.sleep(0.1)
        assert _gone(worker), f"worker {worker} outlived its parent"
    finally:
        parent.kill()
        parent.wait()
        if worker and not _gone(worker):  # the test failed: leave nothing running
            os.kill(worker, signal.SIGKILL)


def test_a_lock_stays_live_while_a_worker_of_its_run_lives(tmp_path: Path) -> None:
    from circuitlens.core.rundir import record_workers

    run = prepare_run_directory(tmp_path / "run")
    worker = _sleeper()
    dead = _sleeper()
    dead.kill()
    dead.wait()
    try:
        with run_lock(run):
            record_workers(run, [worker.pid])
            assert json.loads((run / LOCK).read_text())["workers"] == [worker.pid]
        # a killed run: its lock (with a dead pid) stays behind, one worker still writing
        (run / LOCK).write_text(
            json.dumps({"pid": dead.pid, "host": os.uname().nodename, "workers": [worker.pid]})
        )
        with pytest.raises(RunLockedError, match=f"process {worker.pid}"):
            with run_directory(run):
                pass
    finally:
        worker.kill()
        worker.wait()
    with run_lock(run):  # every process of that run gone: the lock is stale, taken over
        assert json.loads((run / LOCK).read_text())["pid"] == os.getpid()
