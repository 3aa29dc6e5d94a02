from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from circuitlens.cli import main


def test_help_lists_commands(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "demo" in out and "zoo" in out


def test_python_dash_m_runs() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "circuitlens", "zoo", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "list" in out and "train" in out


def test_zoo_list_shows_all_models(capsys) -> None:
    assert main(["zoo", "list"]) == 0
    out = capsys.readouterr().out
    for name in (
        "entity-tracking-teacher",
        "entity-tracking-student",
        "theory-of-mind-teacher",
        "theory-of-mind-student",
    ):
        assert name in out


def test_list_names_every_registered_model(capsys) -> None:
    from circuitlens.models.registry import registered_models

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "zoo:entity-tracking-teacher" in out and "real:smollm2-135m" in out
    assert all(name in out for name in registered_models())


def test_unknown_zoo_model_is_an_error(capsys) -> None:
    assert main(["zoo", "train", "nope"]) == 2
    assert "the zoo holds" in capsys.readouterr().err


def test_version(capsys) -> None:
    from circuitlens import __version__

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"circuitlens {__version__}"


@pytest.mark.acceptance
def test_distill_reads_models_task_and_options_from_a_json_file(
    make_llama_dir, tmp_path, capsys
) -> None:
    import json

    run = {
        "teacher": str(make_llama_dir(seed=1, n_layers=3)),
        "student": str(make_llama_dir(seed=2)),
        "task": "entity_tracking",
        "task_options": {"n_boxes": 3, "n_val": 16, "n_test": 32},
        "budget": 2,
        "train": {"batch_size": 8, "eval_every": 0, "steps": 5},
    }
    path = tmp_path / "run.json"
    path.write_text(json.dumps({**run, "task": "no_such_task"}))
    out = tmp_path / "out"
    assert main(["distill", "--config", str(path), "--out", str(out), "--no-progress"]) == 2
    assert "unknown task 'no_such_task'" in capsys.readouterr().err  # the file's task is used
    path.write_text(json.dumps(run))
    args = ["distill", "--config", str(path), "--out", str(out), "--no-progress"]
    flags = ["--steps", "2", "--sweep-n", "16", "--test-n", "32", "--task-option", "seed=3"]
    assert main(args + flags) == 0
    saved = json.loads((out / "result" / "config.json").read_text())
    assert (
        saved["train"]["steps"] == 2 and saved["sweep"]["n"] == 16 and saved["map"]["budget"] == 2
    )
    assert json.loads((out / "result" / "metrics.json").read_text())["steps"] == 2
    assert main(args + flags + ["--fresh", "--device", "cpu", "--threads", "1"]) == 0  # its
    # own directory: --fresh may empty it
    assert main(args + flags + ["--fresh", "--dtype", "bfloat16"]) == 0  # bf16 training
    saved = json.loads((out / "result" / "config.json").read_text())
    assert saved["train"]["dtype"] == "bfloat16"
    assert capsys.readouterr().out.count("saved to") == 3


def test_distill_bad_config_names_the_field_before_loading(tmp_path, capsys, unchecked) -> None:
    path = tmp_path / "run.toml"
    path.write_text('teacher = "zoo:nope"\n[train]\nlam = "big"\n')
    with unchecked():  # the config's own message, not the test session's type check
        assert main(["distill", "--config", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "TrainConfig.lam must be a number (got str 'big')" in err
    assert not (tmp_path / "o").exists()  # refused before anything was made
    assert main(["distill", "--task-option", "n_boxes", "--out", str(tmp_path / "o")]) == 2
    assert "write it as KEY=VALUE" in capsys.readouterr().err


def test_zoo_train_refuses_a_second_trainer_of_the_same_model(
    tmp_path, monkeypatch, capsys
) -> None:
    import json
    import os

    from circuitlens.core.rundir import LOCK

    monkeypatch.chdir(tmp_path)
    lock = tmp_path / "runs" / "zoo" / "entity-tracking-student" / LOCK
    lock.parent.mkdir(parents=True)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(json.dumps({"pid": other.pid, "host": os.uname().nodename}))
        assert main(["zoo", "train", "entity-tracking-student", "--steps", "1"]) == 2
        assert f"process {other.pid}" in capsys.readouterr().err
    finally:
        other.kill()
        other.wait()


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("circuitlens: error: ") and "\n" not in err, err
    assert "Traceback" not in err
    return err


def test_a_full_disk_is_one_line_naming_the_file(tmp_path, monkeypatch, capsys) -> None:
    """A full disk while a command writes its checkpoint: one line, the final path, exit 1."""
    import circuitlens.cli as cli
    from circuitlens.core import io

    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    def distill(args) -> int:  # noqa: ANN001 (what _distill does when it checkpoints)
        monkeypatch.setattr(io.os, "fsync", full)
        io.atomic_torch_save({"step": 1}, Path(args.out) / "checkpoints" / "trainer.pt")
        return 0

    monkeypatch.setattr(cli, "_distill", distill)
    assert main(["distill", "--out", str(tmp_path / "out")]) == 1
    err = _one_error_line(capsys)
    assert f"writing {tmp_path / 'out' / 'checkpoints' / 'trainer.pt'} failed" in err
    assert "No space left on device. Free some space" in err


def test_a_full_disk_writing_a_results_json_is_named(tmp_path, monkeypatch) -> None:
    """The JSON parts of a result are wrapped like its weights: ResultSaveError naming the
    final file (not the temporary directory)."""
    import circuitlens.distill.result as distill_result
    from circuitlens.distill.result import DistillResult, ResultSaveError

    def full(path, text) -> None:  # noqa: ANN001
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(distill_result, "atomic_write_text", full)
    result = DistillResult.__new__(DistillResult)
    monkeypatch.setattr(DistillResult, "_json_parts", lambda self: {"metrics.json": {"a": 1}})
    with pytest.raises(ResultSaveError) as e:
        result.save(tmp_path / "result")
    msg = str(e.value)
    assert msg.startswith(f"writing {tmp_path / 'result' / 'metrics.json'} failed: No space")
    assert ".result." not in msg and "same command again" in msg
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no temporary left


def test_an_out_that_cannot_be_written_is_refused_before_any_work(
    tmp_path, monkeypatch, capsys
) -> None:
    import os

    import circuitlens
    import circuitlens.core.rundir as rundir
    import circuitlens.experiments.runner as runner

    def no_work(*_: object, **__: object) -> None:
        pytest.fail("a model loaded before --out was checked")

    monkeypatch.setattr(circuitlens, "load_model", no_work)
    monkeypatch.setattr(runner, "load_model", no_work)
    blocker = tmp_path / "notes.txt"
    blocker.write_text("x")
    assert main(["distill", "--out", str(blocker / "out"), "--no-progress"]) == 2
    err = _one_error_line(capsys)
    assert f"is under {str(blocker)!r}, which is a file, not a directory" in err
    assert "pass another --out" in err

    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.geteuid() == 0:  # root writes anyway: a read-only directory simulated

        def denied(*_: object, **kw: object) -> None:
            raise PermissionError(13, "Permission denied", f"{kw.get('dir')}/.tmpab12")

        monkeypatch.setattr(rundir.tempfile, "mkstemp", denied)
    try:
        assert main(["reproduce", "--quick", "--out", str(ro / "run"), "--no-progress"]) == 2
    finally:
        ro.chmod(0o755)
    err = _one_error_line(capsys)
    assert f"cannot write into {str(ro)!r} (Permission denied)" in err and ".tmp" not in err
    assert not (ro / "run").exists()


def test_ctrl_c_says_how_to_resume(tmp_path, monkeypatch, capsys) -> None:
    import circuitlens.cli as cli

    def interrupted(args) -> int:  # noqa: ANN001
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_reproduce", interrupted)
    monkeypatch.setattr(cli, "_demo", interrupted)
    assert main(["reproduce", "--quick", "--out", str(tmp_path / "r")]) == 130
    err = capsys.readouterr().err.strip()
    assert err == (
        f"circuitlens: interrupted; run the same command again to resume from {tmp_path / 'r'}"
    )
    assert main(["reproduce", "--quick"]) == 130  # the default directory
    assert capsys.readouterr().err.strip().endswith("resume from results/reproduce-quick")
    assert main(["demo"]) == 130  # nothing to resume
    assert capsys.readouterr().err.strip() == "circuitlens: interrupted"
