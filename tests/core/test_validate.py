"""Every config field is checked (type, finite, range) and a bad one is named."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from circuitlens import DistillConfig, ExperimentConfig, TrainConfig
from circuitlens.core.validate import ConfigError


@pytest.fixture(autouse=True)
def _library_checks_only(unchecked):
    """These tests read the configs' own messages for wrong values from files and flags: what a
    caller meets, without the test session's type checks (which would refuse them first)."""
    with unchecked():
        yield


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("lam", math.nan, r"TrainConfig\.lam must be a finite number"),
        ("lam", math.inf, r"TrainConfig\.lam must be a finite number"),
        ("lam", -1.0, r"TrainConfig\.lam must be >= 0"),
        ("lr", 0.0, r"lr and kd_temperature must be > 0"),
        ("lr", "1e-3", r"TrainConfig\.lr must be a number \(got str '1e-3'\)"),
        ("steps", 1.5, r"TrainConfig\.steps must be an integer \(got float 1\.5\)"),
        ("steps", True, r"TrainConfig\.steps must be an integer"),
        ("steps", -3, r"TrainConfig\.steps must be >= 0"),
        ("batch_size", 0, r"TrainConfig\.batch_size must be >= 1"),
        ("eval_cka", "yes", r"TrainConfig\.eval_cka must be bool"),
        ("weight_decay", math.nan, r"TrainConfig\.weight_decay must be a finite"),
    ],
)
def test_train_config_fields(field: str, value: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**{field: value})


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("sweep_n", 0, r"\[sweep\] \(given as sweep_n\): AblationConfig\.n must be >= 1"),
        ("test_n", 0, r"DistillConfig\.test_n must be >= 1"),
        ("budget", 1.5, r"budget 1\.5 is a fraction above 1: write a count of heads as an int"),
        ("budget", 0, r"\[map\] \(given as budget\): budget must be a fraction in \(0, 1\]"),
        ("budget", math.nan, r"MapConfig\.budget must be a finite"),
        ("metric", "acc", r"\[sweep\] \(given as metric\): unknown metric 'acc'; valid: "),
        ("map_seed", "0", r"\[map\] \(given as map_seed\): MapConfig\.seed must be an int"),
    ],
)
def test_distill_config_fields(field: str, value: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        DistillConfig().with_overrides(**{field: value})


def test_the_advice_of_the_budget_error_works() -> None:
    one, half = (DistillConfig().with_overrides(budget=b).map.budget for b in (1, 0.5))
    assert one == 1 and half == 0.5


def test_overrides_are_validated() -> None:
    with pytest.raises(ConfigError, match="lam"):
        DistillConfig().with_overrides(lam=math.nan)


@pytest.mark.parametrize(
    "text, match",
    [
        ("[train]\nsteps = 'ten'\n", r"TrainConfig\.steps must be an integer \(got str 'ten'\)"),
        ("[train]\nlam = nan\n", r"TrainConfig\.lam must be a finite number"),
        ("train = 3\n", r"\[train\] must be a table of options \(got int 3\)"),
        ("sweep_n = 1.0\n", r"\(given as sweep_n\): AblationConfig\.n must be an int"),
        ("[sweep]\nn = 1.0\n", r"\[sweep\]: AblationConfig\.n must be an int"),
        ("budget = [1]\n", r"MapConfig\.budget must be"),
        ("steps = \n", r"not valid toml"),
    ],
)
def test_toml_with_a_wrong_type_names_the_field(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "run.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        DistillConfig.load(path)


def test_json_config_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"train": {"lr": "fast"}}))
    with pytest.raises(ConfigError, match=r"TrainConfig\.lr must be a number"):
        DistillConfig.load(path)
    with pytest.raises(ConfigError, match="no such config file"):
        DistillConfig.load(tmp_path / "nope.toml")
    path.write_text(json.dumps({"train": {"lr": 0.01}}))  # the fix
    assert DistillConfig.load(path).train.lr == 0.01


@pytest.mark.parametrize(
    "d, match",
    [
        ({"seeds": "0"}, r"seeds must be a list of int \(got str '0'\)"),
        ({"seeds": [0, 1.5]}, r"seeds must hold only int"),
        ({"tasks": "entity_tracking"}, r"tasks must be a list of str"),
        ({"circuit_n": 0}, r"\[circuit\]: CircuitConfig\.n must be >= 1"),
        ({"circuit": {"n": 0}}, r"\[circuit\]: CircuitConfig\.n must be >= 1"),
        ({"target_accuracy": 2.0}, r"target_accuracy must be between 0 and 1"),
        ({"use_circuit": "no"}, r"use_circuit must be bool"),
        ({"distill": 3}, r"ExperimentConfig\.distill must be a DistillConfig"),
        ({"distill": {"train": {"lam": "big"}}}, r"TrainConfig\.lam must be a number"),
        ({"models": []}, r"models must be a table"),
    ],
)
def test_experiment_config_fields(d: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ExperimentConfig.from_dict(d)


def test_experiment_toml_with_a_wrong_type(tmp_path: Path) -> None:
    path = tmp_path / "exp.toml"
    path.write_text("seeds = [0]\n[distill]\nsweep_n = 'many'\n")
    with pytest.raises(ConfigError, match=r"\(given as sweep_n\): AblationConfig\.n must be an"):
        ExperimentConfig.load(path)
    path.write_text("seeds = [0]\n[distill]\nsweep_n = 50\n")
    assert ExperimentConfig.load(path).distill.sweep.n == 50


def test_circuit_and_ablation_configs_are_checked() -> None:
    from circuitlens import CircuitConfig
    from circuitlens.ablation.config import AblationConfig

    with pytest.raises(ConfigError, match=r"CircuitConfig\.n must be >= 1"):
        CircuitConfig(n=0)
    with pytest.raises(ConfigError, match=r"CircuitConfig\.complete_to must be between 0 and 1"):
        CircuitConfig(complete_to=1.5)
    with pytest.raises(ConfigError, match=r"CircuitConfig\.min_effect must be a finite"):
        CircuitConfig(min_effect=math.nan)
    with pytest.raises(ConfigError, match=r"AblationConfig\.n must be >= 1"):
        AblationConfig(n=0)
    assert AblationConfig(n=None).n is None and CircuitConfig(n=5).n == 5


def test_require_keys_names_the_record_the_missing_keys_and_the_fix() -> None:
    from circuitlens.core.validate import require_keys

    require_keys({"a": 1, "b": 2}, ("a", "b"), KeyError, "x", "rec", "fix it")  # complete: passes
    with pytest.raises(ValueError, match=r"^rec lacks \['b'\]: written by another .*; fix it$"):
        require_keys({"a": 1}, ("a", "b"), ValueError, "a rec is a table", "rec", "fix it")
    with pytest.raises(ValueError, match=r"^a rec is a table \(got list\)$"):
        require_keys([1], ("a",), ValueError, "a rec is a table", "", "fix it")
