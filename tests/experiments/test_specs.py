"""An experiment on any task and pair: task specs, the shipped config files, the live
registries (a condition registered in a test runs inside ``run_experiment``), ``circuitlens
run``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from circuitlens.cli import main
from circuitlens.core.validate import ConfigError
from circuitlens.distill import conditions as cond_module
from circuitlens.distill.conditions import Condition, register_condition
from circuitlens.experiments import ExperimentConfig, run_experiment
from circuitlens.experiments.config import CONFIGS_DIR
from circuitlens.tasks import get_task

ZOO = {"teacher": "zoo:entity-tracking-teacher", "student": "zoo:entity-tracking-student"}
SMALL = dict(
    sweep_n=8, test_n=16, steps=2, batch_size=4, eval_every=2, eval_n=8, cka_eval_n=8, budget=2
)


def _jsonl_from_zoo(path: Path, n: int = 240) -> Path:
    """A JSONL task the zoo pair reads: the zoo's entity-tracking prompts written as lines."""
    task = get_task("entity_tracking", seed=3, n_train=n, n_val=0, n_test=0)
    lines = [
        {
            "prompt": p.text,
            "answer": p.answer,
            "wrong_answers": list(p.wrong_answers),
            "ablation": p.ablation,
        }
        for p in task.split("train")
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


@pytest.mark.unit
def test_the_shipped_configs_build_and_the_paper_zoo_file_is_the_default() -> None:
    files = sorted(CONFIGS_DIR.glob("*.toml"))
    names = {f.stem for f in files}
    assert {"paper-zoo", "paper-zoo-quick", "paper-real", "ioi-smollm2"} <= names
    for f in files:
        cfg = ExperimentConfig.load(f)
        assert ExperimentConfig.from_dict(cfg.to_dict()) == cfg, f
    assert ExperimentConfig.load(CONFIGS_DIR / "paper-zoo.toml") == ExperimentConfig()
    assert ExperimentConfig.quick() == ExperimentConfig.preset("paper-zoo-quick")
    real = ExperimentConfig.real(quick=True)
    assert real.models["theory_of_mind"]["student"] == "real:smollm2-theory-of-mind-student"
    assert "kd" not in ExperimentConfig.real(teacher="gemma3").conditions
    with pytest.raises(ConfigError, match="shipped: .*paper-zoo"):
        ExperimentConfig.preset("no-such-config")


@pytest.mark.unit
def test_a_task_table_names_the_type_options_and_pair() -> None:
    cfg = ExperimentConfig.from_dict(
        {
            "tasks": {
                "ioi": {"task": "jsonl", **ZOO, "options": {"path": "x.jsonl"}},
                "et3": {"task": "entity_tracking", "n_boxes": 3, **ZOO},
            },
            "conditions": ["ce"],
        }
    )
    assert cfg.tasks == ("ioi", "et3")
    assert cfg.task_spec("ioi") == ("jsonl", {"path": "x.jsonl"})
    assert cfg.task_spec("et3") == ("entity_tracking", {"n_boxes": 3})
    assert cfg.models["et3"] == ZOO
    # a built-in task with no table is its own type, without options
    assert ExperimentConfig().task_spec("theory_of_mind") == ("theory_of_mind", {})
    assert ExperimentConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.unit
@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"task": "sorting", **ZOO}, "unknown task type 'sorting'; valid: .*jsonl"),
        ({"task": "jsonl", **ZOO}, "JSONL task without a file"),
        ({"task": "jsonl", "path": "x", "teacher": "zoo:x"}, "models needs .* for task.*'mine'"),
        ({"task": "entity_tracking", "seed": 2, **ZOO}, "set by the experiment"),
        ({"task": "jsonl", **ZOO, "options": [1]}, "options must be a table"),
    ],
)
def test_bad_task_specs_are_named_with_their_fix(spec: dict, message: str) -> None:
    with pytest.raises((ConfigError, ValueError), match=message):
        ExperimentConfig.from_dict({"tasks": {"mine": spec}, "conditions": ["ce"]})


@pytest.mark.unit
def test_task_options_for_a_task_not_in_the_experiment_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"task_options names task\(s\) \['ioi'\]"):
        ExperimentConfig(task_options={"ioi": {"task": "jsonl", "path": "x"}})


@pytest.fixture
def registered() -> str:
    """A condition registered by the test (and removed after it)."""
    name = "ce+half-align"
    register_condition(Condition(name, "CE + Align, a test's own", ("ce", "align"), default=False))
    yield name
    cond_module._REGISTRY.pop(name, None)
    cond_module.LABELS.pop(name, None)


def test_a_condition_registered_later_runs_inside_run_experiment(
    registered: str, tmp_path: Path
) -> None:
    cfg = ExperimentConfig(
        tasks=("entity_tracking",), conditions=("ce", registered), seeds=(0,), use_circuit=False
    ).with_overrides(**SMALL)
    result = run_experiment(cfg, tmp_path / "run", progress=False, jobs=1)
    cell_file = tmp_path / "run/entity_tracking" / registered / "seed0/cell.json"
    cell = json.loads(cell_file.read_text())
    assert cell["condition"] == registered and cell["steps"] == 2
    assert {c.condition for c in result.cells} == {"ce", registered}


@pytest.mark.acceptance
def test_a_jsonl_task_runs_as_an_experiment_through_the_cli(tmp_path: Path, capsys) -> None:
    data = _jsonl_from_zoo(tmp_path / "mine.jsonl")
    config = tmp_path / "mine.toml"
    config.write_text(
        'conditions = ["student", "teacher", "ce", "ce+align"]\nseeds = [0]\n'
        "use_circuit = false\nformat_accuracy = false\n\n[tasks.boxes]\n"
        f'task = "jsonl"\nteacher = "{ZOO["teacher"]}"\nstudent = "{ZOO["student"]}"\n'
        f'options = {{path = "{data}", val_fraction = 0.2, test_fraction = 0.2}}\n'
    )
    sets = [a for k, v in SMALL.items() for a in ("--set", f"{k}={v}")]
    out = tmp_path / "out"
    argv = ["run", str(config), "--out", str(out), "--no-progress", "--jobs", "1", *sets]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "boxes" in printed and (out / "report.html").is_file()
    for c in ("ce", "ce+align"):
        cell = json.loads((out / "boxes" / c / "seed0" / "cell.json").read_text())
        assert cell["task"] == "boxes" and len(cell["test_correct"]) == 16
    setup = json.loads((out / "boxes" / "setup.json").read_text())
    assert setup["task"] == "boxes"
    # the same command resumes: nothing left to run, the same table
    assert main(argv) == 0
    assert capsys.readouterr().out.count("boxes") >= 1
