"""Each condition's own learning rate, chosen on validation from one grid; cells that record
their lr, kept step and the area under their validation curve."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from circuitlens.core.validate import ConfigError
from circuitlens.experiments import ExperimentConfig, ExperimentResult, run_experiment, runner
from circuitlens.experiments.cell import Cell, val_auc
from circuitlens.experiments.lr_choice import (
    LR_FILE,
    LRChoice,
    choose_lr,
    pilot_choice,
    read_choices,
)

GRID = (3e-3, 3e-2)
RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


def grid_cfg(**overrides) -> ExperimentConfig:
    """Two conditions, two seeds, a two-point grid, patience: a few zoo steps each."""
    base = ExperimentConfig(
        tasks=("entity_tracking",), conditions=("student", "ce", "ce+align"), seeds=(0, 1),
        use_circuit=False, format_accuracy=False,
        task_options={"entity_tracking": {"n_train": 64}},  # cells train on fresh samples
    ).with_overrides(
        sweep_n=16, test_n=24, steps=6, batch_size=8, eval_every=2, eval_n=24,
        cka_eval_n=16,  # the default 128 held-out prompts were most of a run's time
        checkpoint_every=2, patience=1, lr_grid=GRID,
    )  # fmt: skip
    return base.with_overrides(**overrides) if overrides else base


def _strip(cell: Cell) -> dict:
    return {k: v for k, v in cell.to_dict().items() if k not in ("seconds", "resumed")}


@pytest.fixture(scope="module")
def chosen(tmp_path_factory) -> ExperimentResult:
    return run_experiment(grid_cfg(), tmp_path_factory.mktemp("lr") / "run", progress=False)


def test_each_condition_trains_at_its_best_grid_lr(chosen: ExperimentResult) -> None:
    d = chosen.directory / "entity_tracking"
    doc = json.loads((d / LR_FILE).read_text())
    assert set(doc) == {"ce", "ce+align"}
    for c, entry in doc.items():
        assert entry["grid"] == sorted(GRID) and entry["seed"] == 0
        assert entry["source"] == "first-seed"
        accs = {float(k): v for k, v in entry["val_accuracy"].items()}
        assert set(accs) == set(GRID)
        assert entry["lr"] == choose_lr(accs)
        best = max(accs.values())
        assert entry["lr"] == min(g for g, a in accs.items() if a == best)  # ties: smaller
        cells = [x for x in chosen.cells if x.condition == c]
        assert {x.seed for x in cells} == {0, 1}
        for x in cells:
            assert x.lr == entry["lr"] and x.kept_step is not None and x.kept_step <= x.steps
        # the choice's seed: its cell is the chosen grid point's run (its checkpoint, resumed)
        first = next(x for x in cells if x.seed == 0)
        assert first.kept_step == entry["kept_step"][repr(entry["lr"])]
        kept = [p["val_accuracy"] for p in first.curve if p["step"] == first.kept_step]
        assert kept == [accs[entry["lr"]]]
    assert not (d / "lr-grid").exists()  # the trials' checkpoints are gone once chosen


def test_the_reused_grid_point_equals_a_cell_trained_at_that_lr(
    chosen: ExperimentResult, tmp_path: Path
) -> None:
    """The first seed's cell takes the chosen grid point's checkpoint instead of training
    again: the same cell as one trained from scratch at that lr without a grid."""
    lr = read_choices(chosen.directory / "entity_tracking" / LR_FILE)["ce+align"].lr
    cfg = grid_cfg(lr=lr, lr_grid=None, conditions=("ce+align",), seeds=(0,))
    plain = run_experiment(cfg, tmp_path / "plain", progress=False)
    want = next(c for c in chosen.cells if c.condition == "ce+align" and c.seed == 0)
    assert _strip(plain.cells[0]) == _strip(want)


def test_an_interrupted_choice_keeps_its_finished_grid_points(
    chosen: ExperimentResult, tmp_path: Path, monkeypatch
) -> None:
    d = tmp_path / "run"
    real, calls = runner._lr_trial, []

    def dies_on_the_fourth(*args, **kwargs):
        calls.append((args[2], args[3]))  # condition, lr
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "_lr_trial", dies_on_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(grid_cfg(), d, progress=False)
    partial = read_choices(d / "entity_tracking" / LR_FILE)
    assert partial["ce"].done and not partial["ce+align"].done
    assert partial["ce"].lr is not None and partial["ce+align"].lr is None
    calls.clear()
    again = run_experiment(grid_cfg(), d, progress=False)
    assert calls == [("ce+align", max(GRID))]  # only the grid point still missing
    want = json.loads((chosen.directory / "entity_tracking" / LR_FILE).read_text())
    assert json.loads((d / "entity_tracking" / LR_FILE).read_text()) == want
    ref = {(c.condition, c.seed): _strip(c) for c in chosen.cells}
    assert {(c.condition, c.seed): _strip(c) for c in again.cells} == ref


def test_a_pilot_directory_gives_the_choice(chosen: ExperimentResult, tmp_path: Path) -> None:
    pilot = chosen.directory
    cfg = grid_cfg(lr_from=str(pilot), conditions=("ce",), seeds=(1,))
    run = run_experiment(cfg, tmp_path / "run", progress=False)
    got = read_choices(tmp_path / "run" / "entity_tracking" / LR_FILE)["ce"]
    want = read_choices(pilot / "entity_tracking" / LR_FILE)["ce"]
    assert got.lr == want.lr and got.source == str(pilot)
    assert [c.lr for c in run.cells] == [want.lr]
    ref = next(c for c in chosen.cells if c.condition == "ce" and c.seed == 1)
    assert _strip(run.cells[0]) == _strip(ref)
    with pytest.raises(ConfigError, match="same grid"):
        pilot_choice(pilot, "entity_tracking", "ce", (1e-3, 2e-3))
    with pytest.raises(ConfigError, match="no finished choice"):
        pilot_choice(pilot, "entity_tracking", "kd", GRID)


@pytest.mark.unit
def test_choose_lr_breaks_ties_to_the_smaller_and_nan_loses() -> None:
    assert choose_lr({1e-3: 0.8, 1e-4: 0.8, 1e-2: 0.7}) == 1e-4
    assert choose_lr({1e-3: math.nan, 1e-2: 0.1}) == 1e-2
    entry = LRChoice("ce", (1e-4, 1e-3), 0).with_point(1e-3, 0.5, 20)
    assert not entry.done and entry.lr is None and entry.missing() == [1e-4]
    back = LRChoice.from_dict("ce", json.loads(json.dumps(entry.to_dict())))
    assert back == entry


@pytest.mark.unit
def test_val_auc_hand_computed() -> None:
    curve = [{"step": 10, "val_accuracy": 0.5}, {"step": 20, "val_accuracy": 0.7},
             {"step": 40, "val_accuracy": 0.7}]  # fmt: skip
    # trapezoids: 10 * 0.6 + 20 * 0.7 = 20, over 30 steps
    assert val_auc(curve) == pytest.approx(20 / 30)
    assert val_auc(curve, until=70) == pytest.approx((20 + 30 * 0.7) / 60)  # held after
    assert val_auc(curve[:1]) == 0.5 and val_auc([]) is None
    flat = [{"step": s, "val_accuracy": 1.0} for s in (5, 10, 15)]
    assert val_auc(flat) == 1.0


@pytest.mark.unit
def test_cells_without_lr_and_kept_step_still_load() -> None:
    """Cells written before the fields existed (the committed exports) read back with
    ``lr`` and ``kept_step`` None, unchanged by a round trip, and have a ``val_auc``."""
    doc = json.loads((RESULTS / "reproduce-zoo.json").read_text())
    for saved in doc["cells"]:
        cell = Cell.from_dict(saved)
        assert cell.lr is None and cell.kept_step is None
        assert cell.to_dict() == saved
        assert cell.val_auc is None or 0 <= cell.val_auc <= 1
