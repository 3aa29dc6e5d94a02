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
    (run / "cell.json").write_text("{}")
    prepare_run_directory(run)  # a marked directory is resumed as it is
    assert (run / "cell.json").is_file()
    prepare_run_directory(run, fresh=True)  # and --fresh empties it
    assert not (run / "cell.json").exists() and (run / MARKER).is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    prepare_run_directory(empty, fresh=True)
    assert (empty / MARKER).is_file()


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
