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
    from circuitlens.cli import commands
    from circuitlens.core import io

    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    def distill(args) -> int:  # noqa: ANN001 (what commands.distill does when it checkpoints)
        monkeypatch.setattr(io.os, "fsync", full)
        io.atomic_torch_save({"step": 1}, Path(args.out) / "checkpoints" / "trainer.pt")
        return 0

    monkeypatch.setattr(commands, "distill", distill)
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
    from circuitlens.cli import commands

    def interrupted(args) -> int:  # noqa: ANN001
        raise KeyboardInterrupt

    monkeypatch.setattr(commands, "reproduce", interrupted)
    monkeypatch.setattr(commands, "demo", interrupted)
    assert main(["reproduce", "--quick", "--out", str(tmp_path / "r")]) == 130
    err = capsys.readouterr().err.strip()
    assert err == (
        f"circuitlens: interrupted; run the same command again to resume from {tmp_path / 'r'}"
    )
    assert main(["reproduce", "--quick"]) == 130  # the default directory
    assert capsys.readouterr().err.strip().endswith("resume from results/reproduce-quick")
    assert main(["demo"]) == 130  # nothing to resume
    assert capsys.readouterr().err.strip() == "circuitlens: interrupted"


# -- the flags: one table, flag -> config field ----------------------------------------------


def _commands(parser, path=()):
    """(command path, its parser) of every command the parser runs, nested ones included."""
    import argparse

    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield " ".join(path), parser
    for action in subs:
        for name, child in action.choices.items():
            yield from _commands(child, (*path, name))


def _literal(hint):
    """The first Literal in annotation ``hint`` (a union searched), else None."""
    from typing import Literal, get_args, get_origin

    if get_origin(hint) is Literal:
        return hint
    return next((x for x in map(_literal, get_args(hint)) if x is not None), None)


def _declared_default(cls, name):
    import dataclasses

    (f,) = [f for f in dataclasses.fields(cls) if f.name == name]
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def test_every_option_of_every_command_comes_from_the_table() -> None:
    """Each command's options are exactly its entries of FLAGS (no hand-written one left, no
    entry unused), each name once per command."""
    from circuitlens.cli import build_parser
    from circuitlens.cli.flags import FLAGS, flags_of

    commands = dict(_commands(build_parser()))
    assert {"reproduce", "run", "demo", "distill", "zoo train", "real build", "plan"} <= set(
        commands
    )
    assert {c for f in FLAGS for c in f.commands} <= set(commands)
    for command, parser in commands.items():
        options = [
            s for a in parser._actions for s in a.option_strings if s not in ("-h", "--help")
        ]
        names = [f.name for f in flags_of(command)]
        assert len(set(names)) == len(names), (command, names)
        assert sorted(options) == sorted(names), command


def test_every_flag_names_a_real_field_of_its_config() -> None:
    import dataclasses

    from circuitlens.cli.flags import FLAGS, config_classes, config_field
    from circuitlens.distill.config import FLAT_KEYS, DistillConfig

    classes = config_classes()
    fielded = [f for f in FLAGS if f.field]
    assert {f.name for f in fielded} >= {"--steps", "--sweep-n", "--lam", "--dtype", "--tasks"}
    for flag in fielded:
        part, _, name = flag.field.partition(".")
        assert name in {x.name for x in dataclasses.fields(classes[part])}, flag.name
        assert config_field(flag)[0] is classes[part]
        if part in ("sweep", "map"):  # a part's field: by its flat name, which must exist
            assert FLAT_KEYS[flag.key] == (part, name)
        if part in ("sweep", "map", "train", "distill"):  # a name with_overrides takes
            DistillConfig().with_overrides(**{flag.key: _declared_default(classes[part], name)})
    with pytest.raises(ValueError, match="has no field 'nope'"):
        config_field(dataclasses.replace(fielded[0], field="train.nope"))


def test_each_flag_default_is_its_dataclass_default() -> None:
    """The default a flag's help shows is its field's declared default; the flag itself is
    None until given (a flag left out leaves a --config file's value), so a bare command line
    is the dataclasses' defaults."""
    from circuitlens.cli import build_parser
    from circuitlens.cli.commands import _run_spec
    from circuitlens.cli.flags import (
        FLAGS,
        DistillRun,
        argparse_options,
        config_classes,
        field_default,
        given_fields,
    )
    from circuitlens.distill.config import DistillConfig

    classes = config_classes()
    for flag in (f for f in FLAGS if f.field):
        part, _, name = flag.field.partition(".")
        assert field_default(flag) == _declared_default(classes[part], name), flag.name
        for command in flag.commands:
            options = argparse_options(flag, command)
            assert options.get("default") is None, (flag.name, command)
            if "{default}" in flag.help:
                assert f"default {field_default(flag)}" in options["help"], flag.name
    assert (
        "(default 200)"
        in argparse_options(next(f for f in FLAGS if f.name == "--sweep-n"), "distill")["help"]
    )
    args = build_parser().parse_args(["distill"])
    assert given_fields(args, "distill") == {}
    spec, config = _run_spec(args)
    assert config == DistillConfig()
    assert spec == {**vars(DistillRun()), "task_options": {}}


def test_choices_are_the_literals_of_the_fields() -> None:
    from typing import get_args, get_type_hints

    from circuitlens.cli import build_parser
    from circuitlens.cli.flags import FLAGS, MODEL_SETS, config_field

    commands = dict(_commands(build_parser()))
    seen = 0
    for flag in FLAGS:
        for command in flag.commands:
            (action,) = [a for a in commands[command]._actions if flag.name in a.option_strings]
            literal = None
            if flag.field:
                cls, f = config_field(flag)
                literal = _literal(get_type_hints(cls)[f.name])
            if literal is not None:
                seen += 1
                assert tuple(action.choices) == get_args(literal), flag.name
            elif flag.choices is None:
                assert action.choices is None, flag.name
    assert seen >= 1  # --dtype: TrainConfig.dtype's DType
    assert tuple(commands["reproduce"]._option_string_actions["--models"].choices) == MODEL_SETS


def _other_value(flag, default):
    """A valid command-line value for ``flag`` that is not ``default``."""
    from circuitlens.cli.flags import argparse_options

    options = argparse_options(flag, flag.commands[0])
    listed = options.get("choices") or (flag.names() if flag.names else None)
    if listed:
        return [next(str(x) for x in listed if x != default)]
    if isinstance(default, tuple | list) and len(default) > 1:
        return [str(default[-1])]  # a subset: the last one
    if isinstance(default, tuple | list):
        return [str(default[0] + 1)]  # one seed: another
    if isinstance(default, bool) or not isinstance(default, int | float | str):
        raise AssertionError(f"{flag.name}: no value to try for default {default!r}")
    if isinstance(default, str):
        return [default.replace("entity-tracking", "theory-of-mind").replace("entity", "ioi")]
    return [str(default + 1 if isinstance(default, int) else default / 2)]


def _leaves(obj, prefix=""):
    """A dataclass's fields, nested ones by their dotted path."""
    import dataclasses

    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out |= _leaves(value, f"{prefix}{f.name}.")
        else:
            out[prefix + f.name] = value
    return out


def _distill_leaves(args):
    from circuitlens.cli.commands import _run_spec

    spec, config = _run_spec(args)
    run = {f"run.{k}": v for k, v in spec.items() if k != "task_options"}
    leaves = _leaves(config)
    return run | {k if "." in k else f"distill.{k}": v for k, v in leaves.items()}


def test_a_distill_command_line_sets_exactly_the_fields_given() -> None:
    from circuitlens.cli import build_parser
    from circuitlens.cli.flags import flags_of

    parser = build_parser()
    bare = _distill_leaves(parser.parse_args(["distill"]))
    fielded = [f for f in flags_of("distill") if f.field]
    assert len(fielded) >= 10
    argv = []
    for flag in fielded:
        value = _other_value(flag, bare[flag.field])
        got = _distill_leaves(parser.parse_args(["distill", flag.name, *value]))
        assert {k for k in bare if got[k] != bare[k]} == {flag.field}, flag.name
        argv += [flag.name, *value]
    got = _distill_leaves(parser.parse_args(["distill", *argv]))  # all at once: all of them
    assert {k for k in bare if got[k] != bare[k]} == {f.field for f in fielded}


def test_an_experiment_command_line_sets_exactly_the_fields_given() -> None:
    from circuitlens.cli import build_parser
    from circuitlens.cli.commands import _experiment_config
    from circuitlens.cli.flags import flags_of
    from circuitlens.experiments import ExperimentConfig

    parser = build_parser()
    base = ExperimentConfig.preset("paper-zoo-quick")
    bare_config, knobs = _experiment_config(parser.parse_args(["run", "x.toml"]), base)
    assert knobs == {} and bare_config == base
    bare = _leaves(base)
    for command in ("reproduce", "run"):
        first = [command] if command == "reproduce" else [command, "x.toml"]
        for flag in (f for f in flags_of(command) if f.field):
            part, _, name = flag.field.partition(".")
            path = name if part == "experiment" else f"distill.{flag.field}"
            value = _other_value(flag, bare[path])
            config, knobs = _experiment_config(parser.parse_args([*first, flag.name, *value]), base)
            assert knobs == {}, flag.name
            changed = {k for k, v in _leaves(config).items() if v != bare[k]}
            assert changed == {path}, (flag.name, changed)
    config, knobs = _experiment_config(parser.parse_args(["reproduce", "--lam", "0.1,0.3"]), base)
    assert knobs == {"lam": [0.1, 0.3]} and config == base  # a curve: swept, not set


def test_every_command_help_works(capsys) -> None:
    from circuitlens.cli import build_parser

    for command in dict(_commands(build_parser())):
        with pytest.raises(SystemExit) as e:
            main([*command.split(), "--help"])
        assert e.value.code == 0, command
        assert "usage: circuitlens " + command in capsys.readouterr().out


def test_the_command_line_keeps_its_options() -> None:
    """The options each command had before the table (the table may add, never drop one)."""
    from circuitlens.cli.flags import Flag, flags_of

    runs = {"--steps", "--lam", "--budget", "--map-method", "--out", "--device", "--threads"}
    runs |= {"--fresh", "--no-progress"}
    experiments = runs | {"--tasks", "--conditions", "--seeds", "--circuit", "--set", "--jobs"}
    before = {
        "reproduce": experiments | {"--quick", "--config", "--models"},
        "run": experiments,
        "demo": {"--n", "--seed"},
        "distill": runs
        | {"--config", "--teacher", "--student", "--task", "--task-option", "--sweep-n"}
        | {"--test-n", "--condition", "--seed", "--dtype", "--save-model"},
        "zoo train": {"--steps", "--out", "--fresh", "--continue-shipped"},
        "real build": {"--out", "--fresh", "--threads"},
        "plan": {"--effect", "--sd", "--contrasts", "--alpha", "--power", "--from"}
        | {"--max-seeds", "--sims"},
    }
    for command, names in before.items():
        assert names <= {f.name for f in flags_of(command)}, command
    with pytest.raises(ValueError, match="takes its default and choices from the field"):
        Flag("--x", ("distill",), "x", field="train.seed", default=3)


def test_no_circuit_only_is_for_one_run(tmp_path, capsys, monkeypatch) -> None:
    """``--no-circuit-only`` reaches the run (``circuit_only=False``); with a curve it is
    refused before any work, named."""
    import circuitlens.experiments as experiments

    seen: dict = {}

    def fake_run(config, out, **kwargs):  # noqa: ANN001, ANN202
        seen.update(kwargs)
        raise ValueError("stopped here")

    monkeypatch.setattr(experiments, "run_experiment", fake_run)
    out = str(tmp_path / "r")
    assert main(["reproduce", "--quick", "--no-circuit-only", "--out", out]) == 2
    assert seen["circuit_only"] is False
    assert (
        main(["reproduce", "--quick", "--no-circuit-only", "--lam", "0.1,0.3", "--out", out]) == 2
    )
    assert "--no-circuit-only is for one run" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
