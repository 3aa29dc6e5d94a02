"""``run_experiment`` / ``circuitlens reproduce``: the table, resumption, refusal to mix configs."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from circuitlens.ablation.result import AblationResult
from circuitlens.cli import main
from circuitlens.core.rundir import RunFileError
from circuitlens.core.types import Head, HeadMap
from circuitlens.distill.setup import Setup
from circuitlens.distill.trainer import CircuitTrainer
from circuitlens.experiments import (
    ALL_CONDITIONS,
    ExperimentConfig,
    ExperimentResult,
    run_experiment,
)
from circuitlens.experiments.cell import Cell
from circuitlens.experiments.config import LABELS
from circuitlens.experiments.tables import signed
from circuitlens.measure.cka import CKAWithNull
from circuitlens.report.page import write_report

TRAINED = ("ce", "ce+align", "ce+rand")


def tiny(**overrides) -> ExperimentConfig:
    """A run of a few zoo steps, its prompt sets as small as the tables and curves allow."""
    tasks = overrides.pop("tasks", ("entity_tracking",))
    base = ExperimentConfig(
        tasks=tasks,
        conditions=("student", "teacher", *TRAINED),
        seeds=(0, 1),
        use_circuit=False,
        # cells train on fresh samples, never on the train split: 64, not the default 2000
        task_options={t: {"n_train": 64} for t in tasks},
    ).with_overrides(
        sweep_n=16,
        test_n=24,
        steps=4,
        batch_size=8,
        eval_every=2,
        eval_n=16,
        cka_eval_n=16,  # the default 128 held-out prompts were most of a run's time
        checkpoint_every=2,
    )
    return base.with_overrides(**overrides) if overrides else base


def _strip(cell: Cell | dict) -> dict:
    d = cell if isinstance(cell, dict) else cell.to_dict()
    return {k: v for k, v in d.items() if k not in ("seconds", "resumed")}


def _hand_setup(**fields: object) -> Setup:
    """A setup written by hand (a 2 x 4-head pair, one pair mapped): what the tables read."""
    sweep = AblationResult.from_dict(
        {"p_own": 0.5, "p_baseline": 0.5, "p_ablated": [[0.5] * 4] * 2, "delta": [[0.0] * 4] * 2}
    )
    base = dict(
        task="entity_tracking", circuit=None, circuit_note="", teacher_sweep=sweep,
        student_sweep=sweep, head_map=HeadMap([("L1H0", "L1H0")], [0.0]),
        teacher_accuracy=0.9, student_accuracy=0.5, student_test_correct=(),
        teacher_test_correct=(), student_circuit_accuracy=0.1, teacher_circuit_accuracy=None,
        student_format_accuracy={}, teacher_format_accuracy={}, student_val_accuracy=0.5,
        fingerprints={}, teacher_shape=(2, 4, 4), student_shape=(2, 4, 4), seconds=0.0,
    )  # fmt: skip
    return Setup(**(base | fields))


def _hand_cell(**fields: object) -> Cell:
    """A cell written by hand (one pair): ``fields`` replace the defaults."""
    cka = CKAWithNull(torch.tensor([0.2]), torch.tensor([0.0]), torch.tensor([0.01]), 20)
    base = dict(
        task="entity_tracking", condition="ce", seed=0, accuracy=0.5, test_correct=(1, 0),
        circuit_accuracy=0.1, format_accuracy={}, mean_cka_before=0.1, mean_cka_after=0.2,
        cka_before=cka, cka_after=cka, heads_trained=1, head_fraction=0.125,
        param_fraction=0.03, pairs=((Head(1, 0), Head(1, 0)),), steps=30, final_loss=1.0,
        curve=(), seconds=0.0, resumed=False,
    )  # fmt: skip
    return Cell(**(base | fields))


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> ExperimentResult:
    return run_experiment(tiny(), tmp_path_factory.mktemp("exp") / "run", progress=False)


def test_table_has_every_condition_with_mean_over_seeds(finished: ExperimentResult) -> None:
    table = finished.table()
    assert list(table.condition) == [
        "student (before training)",
        "teacher",
        "CE",
        "CE + Align CKA",
        "CE + Rand CKA",
    ]
    trained = table[table.condition.isin(["CE", "CE + Align CKA", "CE + Rand CKA"])]
    assert (trained.n_seeds == 2).all()
    cells = finished.cells_frame()
    for cond in TRAINED:
        acc = cells[cells.condition == cond].accuracy
        row = table[
            table.condition
            == {"ce": "CE", "ce+align": "CE + Align CKA", "ce+rand": "CE + Rand CKA"}[cond]
        ].iloc[0]
        assert row.accuracy_mean == pytest.approx(acc.mean())
        assert row.accuracy_std == pytest.approx(acc.std(ddof=1))
    # one of the student's 8 heads (budget 0.13) is trained, and a small part of the weights
    assert (trained.head_fraction == 1 / 8).all()
    assert (trained.param_fraction < 0.1).all() and (trained.param_fraction > 0).all()
    assert table[table.condition == "CE"].points_vs_ce.iloc[0] == 0


def test_random_control_keeps_the_student_heads(finished: ExperimentResult) -> None:
    by = {(c.condition, c.seed): c.pairs for c in finished.cells}
    for seed in (0, 1):
        align, rand = by[("ce+align", seed)], by[("ce+rand", seed)]
        assert [s for s, _ in align] == [s for s, _ in rand]
    assert by[("ce", 0)] == by[("ce+align", 0)]


def test_report_files(finished: ExperimentResult, tmp_path: Path) -> None:
    d = finished.directory
    for name in ("table.md", "table.csv", "cells.csv", "mcnemar.csv", "cka.csv", "config.json"):
        assert (d / name).is_file(), name
    assert not (d / "report.html").exists()  # presentation is the caller's: write_report
    html = write_report(finished, tmp_path / "page.html").read_text()
    assert "plotly" in html.lower() and "Head mapping" in html
    assert "CE + Align CKA" in (d / "table.md").read_text()
    saved = ExperimentConfig.from_dict(json.loads((d / "config.json").read_text()))
    assert saved == finished.config
    # curves: step 0 (the untrained student) and the evaluations at steps 2 and 4
    curves = finished.curves()
    assert sorted(curves.step.unique().tolist()) == [0, 2, 4]


def test_resume_redoes_only_missing_cells(finished: ExperimentResult, tmp_path: Path) -> None:
    d = tmp_path / "run"
    shutil.copytree(finished.directory, d)
    gone = d / "entity_tracking" / "ce+align" / "seed1" / "cell.json"
    original = json.loads(gone.read_text())
    gone.unlink()
    kept = {p: p.stat().st_mtime_ns for p in d.rglob("cell.json")}
    again = run_experiment(tiny(), d, progress=False)
    for p, mtime in kept.items():
        assert p.stat().st_mtime_ns == mtime, f"{p} was redone"
    assert _strip(json.loads(gone.read_text())) == _strip(original)  # same seed, same result
    assert len(again.cells) == len(finished.cells)


def test_interrupted_cell_resumes_to_the_same_result(
    finished: ExperimentResult, tmp_path: Path, monkeypatch
) -> None:
    """A cell stopped right after its step-2 checkpoint resumes from it to the uninterrupted
    run's result, bit for bit, and the cells after it too: the finished run without seed 0's
    trained cells (its setup read from setup.json, as every resumed run reads it)."""
    d = tmp_path / "run"
    shutil.copytree(finished.directory, d)
    for c in TRAINED:
        shutil.rmtree(d / "entity_tracking" / c / "seed0")
    saves = []
    real_save = CircuitTrainer.save_checkpoint

    def save_then_stop(self) -> None:
        real_save(self)
        saves.append(self.state.step)
        if len(saves) == 1:
            raise KeyboardInterrupt  # stopped right after the step-2 checkpoint of cell one

    monkeypatch.setattr(CircuitTrainer, "save_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(tiny(), d, progress=False)
    assert (d / "entity_tracking" / "ce" / "seed0" / "checkpoint" / "trainer.pt").is_file()
    monkeypatch.setattr(CircuitTrainer, "save_checkpoint", real_save)
    resumed = run_experiment(tiny(), d, progress=False)
    first = next(c for c in resumed.cells if c.condition == "ce" and c.seed == 0)
    assert first.resumed is True
    assert not (d / "entity_tracking" / "ce" / "seed0" / "checkpoint").exists()
    ref = {(c.condition, c.seed): _strip(c) for c in finished.cells}
    for c in resumed.cells:
        assert _strip(c) == ref[(c.condition, c.seed)]


def test_other_config_is_refused_then_fresh_starts_over(
    finished: ExperimentResult, tmp_path: Path
) -> None:
    d = tmp_path / "run"
    shutil.copytree(finished.directory, d)
    other = tiny(steps=6)
    with pytest.raises(ValueError, match="another config.*distill.*fresh"):
        run_experiment(other, d, progress=False)
    assert len(ExperimentResult.load(d).cells) == len(finished.cells)  # nothing lost
    cfg = tiny(conditions=("student", "teacher"))
    result = run_experiment(cfg, d, fresh=True, progress=False)
    assert result.cells == [] and len(result.table()) == 2


def test_another_selection_extends_the_run(finished: ExperimentResult, tmp_path: Path) -> None:
    """Seeds and conditions are a selection of cells: a run of seed 0, then of seed 1, gives
    the cells of one run of both (bit for bit), and the table shows them all."""
    d = tmp_path / "run"
    first = run_experiment(tiny(seeds=(0,)), d, progress=False)
    assert {c.seed for c in first.cells} == {0}
    second = run_experiment(tiny(seeds=(1,), conditions=("student", "ce")), d, progress=False)
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["seeds"] == [0, 1] and cfg["conditions"] == list(tiny().conditions)
    key = lambda c: (c.condition, c.seed)  # noqa: E731
    got = {key(c): _strip(c) for c in second.cells}
    want = {key(c): _strip(c) for c in finished.cells}
    assert set(got) == set(want) - {("ce+align", 1), ("ce+rand", 1)}  # only what was asked
    assert all(got[k] == want[k] for k in got)
    assert (d / "entity_tracking" / "ce" / "seed1" / "cell.json").is_file()
    with pytest.raises(ValueError, match="another config"):  # a cell's own options: refused
        run_experiment(tiny(seeds=(2,), steps=6), d, progress=False)


@pytest.mark.unit
def test_bad_names_list_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="unknown condition.*'distil'.*ce\\+align"):
        ExperimentConfig(conditions=("ce", "distil"))
    with pytest.raises(ValueError, match="unknown task.*ioi.*entity_tracking"):
        ExperimentConfig(tasks=("ioi",))
    with pytest.raises(ValueError, match="unknown experiment config keys.*seed"):
        ExperimentConfig.from_dict({"seed": 1})
    with pytest.raises(ValueError, match="unknown config keys.*lamda"):
        ExperimentConfig().with_overrides(lamda=2)
    assert set(ALL_CONDITIONS) >= set(ExperimentConfig().conditions)


@pytest.mark.unit
def test_steps_to_target_hand_computed(tmp_path: Path) -> None:
    cfg = ExperimentConfig(tasks=("entity_tracking",), conditions=("ce", "ce+align"), seeds=(0, 1))
    setup = _hand_setup()

    def cell(cond: str, seed: int, accs: list[float]) -> Cell:
        return _hand_cell(
            condition=cond, seed=seed, accuracy=accs[-1],
            test_correct=tuple(_seeded_correct(accs[-1], f"{cond}/{seed}")),
            curve=tuple({"step": 10 * (i + 1), "val_accuracy": a} for i, a in enumerate(accs)),
        )  # fmt: skip

    cells = [
        cell("ce", 0, [0.52, 0.58, 0.70]),
        cell("ce", 1, [0.55, 0.62, 0.70]),  # CE ends at 0.70 (both seeds): the target
        cell("ce+align", 0, [0.61, 0.71, 0.72]),
        cell("ce+align", 1, [0.50, 0.55, 0.69]),  # never reaches 0.70
    ]
    r = ExperimentResult(tmp_path, cfg, {"entity_tracking": setup}, cells)
    assert r.target("entity_tracking") == pytest.approx(0.70)
    assert [r.steps_to_target(c) for c in cells] == [30, 30, 20, None]
    t = r.table().set_index("condition")
    assert t.loc["CE", "steps_to_target"] == 30 and t.loc["CE", "reached_target"] == "2/2"
    assert t.loc["CE + Align CKA", "steps_to_target"] == 20
    assert t.loc["CE + Align CKA", "reached_target"] == "1/2"
    assert t.loc["CE + Align CKA", "points_vs_ce"] == pytest.approx(100 * (0.705 - 0.70))
    assert "never" not in r.markdown() and "20 (1/2)" in r.markdown()
    fixed = ExperimentResult(tmp_path, ExperimentConfig(target_accuracy=0.8), r.setups, cells)
    assert all(fixed.steps_to_target(c) is None for c in cells)
    assert math.isnan(fixed.table().set_index("condition").loc["CE", "steps_to_target"])
    no_ce = ExperimentResult(tmp_path, cfg, r.setups, cells[2:])  # no CE: no automatic target
    assert no_ce.target("entity_tracking") is None
    assert no_ce.table().reached_target.tolist() == [""] and "never" not in no_ce.markdown()


@pytest.mark.acceptance
def test_cli_reproduce_prints_table_and_report(tmp_path: Path, capsys) -> None:
    cfg = tiny(conditions=("student", "teacher", "ce"), seeds=(0,))
    f = tmp_path / "exp.json"
    f.write_text(json.dumps(cfg.to_dict()))
    out = tmp_path / "out"
    assert main(["reproduce", "--config", str(f), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "| entity_tracking | CE " in printed and "report.html" in printed
    assert main(["reproduce", "--config", str(f), "--out", str(out), "--steps", "2"]) == 2
    assert "another config" in capsys.readouterr().err
    assert main(["reproduce", "--conditions", "ce", "bogus", "--out", str(out)]) == 2
    assert "valid conditions" in capsys.readouterr().err


def test_changed_model_weights_are_refused(
    finished: ExperimentResult, tmp_path: Path, monkeypatch
) -> None:
    d = tmp_path / "run"
    shutil.copytree(finished.directory, d)
    import circuitlens.experiments.runner as ex  # where run_experiment looks it up

    real = ex.model_fingerprint
    monkeypatch.setattr(
        ex, "model_fingerprint", lambda spec: "sha256:other" if "teacher" in spec else real(spec)
    )
    with pytest.raises(ValueError, match="teacher of task 'entity_tracking' changed.*delete"):
        run_experiment(tiny(), d, progress=False)
    assert finished.setups["entity_tracking"].fingerprints["teacher"].startswith("sha256:")


def test_cells_carry_the_papers_columns(finished: ExperimentResult) -> None:
    from circuitlens.experiments.stats import mcnemar

    n_test = finished.config.distill.test_n
    for cell in finished.cells:
        assert len(cell.test_correct) == n_test and set(cell.test_correct) <= {0, 1}
        assert cell.accuracy == pytest.approx(sum(cell.test_correct) / n_test)
        assert 0 <= cell.circuit_accuracy <= 1
        assert set(cell.format_accuracy) == {"default"}  # entity tracking has one format
        assert cell.format_accuracy["default"] == pytest.approx(cell.accuracy)
        after = cell.cka_after
        assert after.estimator == "unbiased" and after.n_perm >= 20
        assert len(after.value) == len(cell.pairs) == len(after.null_sd)
        assert bool((after.null_sd > 0).all())
        assert all({"loss", "val_accuracy", "step"} <= set(row) for row in cell.curve)
        # the defaults (no lr_grid, no patience): the config's lr, the last step kept
        assert cell.lr == finished.config.distill.train.lr and cell.kept_step == cell.steps
        assert 0 <= cell.val_auc <= 1
    table = finished.table().set_index("condition")
    assert table.loc["CE", "circuit_accuracy_mean"] >= 0
    assert not math.isnan(table.loc["CE + Align CKA", "cka_null_sd"])
    # McNemar pooled over the two seeds equals the test on the concatenated outcomes
    mc = finished.mcnemar_table().set_index("B")
    by = {(c.condition, c.seed): list(c.test_correct) for c in finished.cells}
    want = mcnemar(by[("ce+align", 0)] + by[("ce+align", 1)], by[("ce", 0)] + by[("ce", 1)])
    assert mc.loc["CE", "p"] == pytest.approx(want.p) and mc.loc["CE", "n"] == 2 * n_test
    assert mc.loc["CE", "seeds"] == 2 and "CE + Rand CKA" in mc.index
    md = finished.markdown()
    for words in ("circuit-only", "McNemar", "(null)", "steps to CE final", "Head maps", "val AUC"):
        assert words in md, words
    assert (finished.directory / "mcnemar.csv").is_file()


@pytest.mark.acceptance
def test_tasks_in_worker_processes_equal_one_process(tmp_path: Path, monkeypatch) -> None:
    """``jobs=2``: each task in its own process with half the threads; the cells equal a
    one-process run with that many threads, bit for bit. The workers are recorded in the
    run's lock while they run, and none is left after."""
    import torch

    import circuitlens.experiments.workers as workers
    from circuitlens.core.rundir import _pid_alive

    recorded: list[int] = []

    def record(directory, pids) -> None:  # noqa: ANN001
        recorded.extend(pids)
        real_record(directory, pids)

    real_record = workers.record_workers
    monkeypatch.setattr(workers, "record_workers", record)

    cfg = tiny(tasks=("entity_tracking", "theory_of_mind"), seeds=(0,), conditions=("ce+align",))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run_experiment(cfg, tmp_path / "one", progress=False)
        torch.set_num_threads(2)
        two = run_experiment(cfg, tmp_path / "two", progress=False, jobs=2)
    finally:
        torch.set_num_threads(threads)
    key = lambda c: (c["task"], c["condition"], c["seed"])  # noqa: E731
    assert len(two.cells) == len(one.cells) == 2
    assert sorted(map(_strip, two.cells), key=key) == sorted(map(_strip, one.cells), key=key)
    assert len(recorded) == 2 and not any(_pid_alive(p) for p in recorded)
    with pytest.raises(ValueError, match="jobs must be"):
        run_experiment(cfg, tmp_path / "bad", progress=False, jobs=0)
    assert not (tmp_path / "bad").exists()  # refused before anything is written


def test_card_format_only_measures_the_same_cells_without_the_other_format(
    tmp_path: Path,
) -> None:
    """``format_accuracy=False`` skips the other prompt formats and nothing else: every other
    field of a cell and of the setup is the one of a run that measures them."""
    cfg = tiny(tasks=("theory_of_mind",), seeds=(0,), conditions=("student", "ce"), steps=2)
    both = run_experiment(cfg, tmp_path / "both", progress=False)
    card = run_experiment(cfg.with_overrides(format_accuracy=False), tmp_path / "card", False)
    assert set(both.cells[0].format_accuracy) == {"plain", "instruction"}
    assert card.cells[0].format_accuracy == {}
    drop = lambda c: {k: v for k, v in _strip(c).items() if k != "format_accuracy"}  # noqa: E731
    assert drop(card.cells[0]) == drop(both.cells[0])
    for setup in card.setups.values():
        assert setup.student_format_accuracy == setup.teacher_format_accuracy == {}
    assert "Accuracy by prompt format" in both.markdown()
    assert "Accuracy by prompt format" not in card.markdown()
    with pytest.raises(ValueError, match="format_accuracy"):  # named (the type check)
        cfg.with_overrides(format_accuracy="no")


def test_no_circuit_only_skips_that_measure_and_changes_no_other(tmp_path: Path) -> None:
    """``circuit_only=False`` (``--no-circuit-only``): each cell's ``circuit_accuracy`` is None
    and every other field is the one of a run that measures it, bit for bit; the tables show
    the column empty. A run may resume with or without it: it is a run option, not the
    config's."""
    cfg = tiny(tasks=("entity_tracking",), seeds=(0,), conditions=("student", "ce"), steps=2)
    both = run_experiment(cfg, tmp_path / "both", progress=False)
    skip = run_experiment(cfg, tmp_path / "skip", progress=False, circuit_only=False)
    assert isinstance(both.cells[0].circuit_accuracy, float)
    assert skip.cells[0].circuit_accuracy is None
    drop = lambda c: {k: v for k, v in _strip(c).items() if k != "circuit_accuracy"}  # noqa: E731
    assert drop(skip.cells[0]) == drop(both.cells[0])
    again = ExperimentResult.load(tmp_path / "skip")  # None is written and read back
    assert again.cells[0].circuit_accuracy is None
    row = again.table()
    ce = row[row.condition == LABELS["ce"]].iloc[0]
    assert math.isnan(ce.circuit_accuracy_mean)
    assert "nan" not in again.markdown().lower().split("head maps")[0]


def test_a_run_saved_before_a_config_field_existed_resumes(
    finished: ExperimentResult, tmp_path: Path
) -> None:
    """A config.json without a field added since is read with the field's default: the run
    is the same config and resumes, no cell redone."""
    d = tmp_path / "run"
    shutil.copytree(finished.directory, d)
    saved = json.loads((d / "config.json").read_text())
    del saved["format_accuracy"], saved["design"]  # the design: a run saved before it existed
    (d / "config.json").write_text(json.dumps(saved))
    kept = {p: p.stat().st_mtime_ns for p in d.rglob("cell.json")}
    again = run_experiment(tiny(), d, progress=False)
    assert all(p.stat().st_mtime_ns == m for p, m in kept.items())
    assert len(again.cells) == len(finished.cells)
    with pytest.raises(ValueError, match="another config.*format_accuracy"):
        run_experiment(tiny(format_accuracy=False), d, progress=False)


@pytest.mark.unit
def test_auto_jobs_is_one_process_per_task_on_the_cpu_only(monkeypatch) -> None:
    import torch

    from circuitlens.experiments.runner import auto_jobs

    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert auto_jobs(2) == auto_jobs(2, "cpu") == 2
    assert auto_jobs(1) == 1 and auto_jobs(3) == 2
    assert auto_jobs(2, "cuda") == auto_jobs(2, "cuda:1") == 1
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert auto_jobs(2) == 1


@pytest.mark.unit
def test_cli_jobs_takes_auto_or_a_whole_number(tmp_path: Path, capsys) -> None:
    for bad in ("0", "two"):
        with pytest.raises(SystemExit):
            main(["reproduce", "--jobs", bad, "--out", str(tmp_path / "x")])
        assert "whole number >= 1 or 'auto'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_a_given_circuit_is_mapped_into_without_a_search(tmp_path: Path, monkeypatch) -> None:
    """``circuits`` names a teacher circuit found before: no search runs, every mapped teacher
    head (the aligned map's and the random control's from the circuit) is one of its heads,
    and the run's config.json carries it."""
    from circuitlens.experiments import runner

    monkeypatch.setattr(runner, "find_circuit", lambda *a, **k: pytest.fail("searched"))
    given = {"A": ["L3H1", "L2H5"], "B": ["L1H0"]}
    cfg = tiny(
        use_circuit=True,
        circuits={"entity_tracking": given},
        conditions=("ce+align", "ce+rand"),
        seeds=(0,),
        steps=2,
        random_from="circuit",
    )
    result = run_experiment(cfg, tmp_path / "run", progress=False)
    setup = result.setups["entity_tracking"]
    assert setup.circuit is not None and setup.circuit.to_dict()["groups"] == given
    allowed = {"L3H1", "L2H5", "L1H0"}
    assert {str(t) for _, t in setup.head_map.pairs} <= allowed
    for cell in result.cells:
        assert {str(t) for _, t in cell.pairs} <= allowed, cell.condition
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["circuits"] == {"entity_tracking": given}


def test_given_circuits_that_cannot_be_used_are_refused_by_name(
    tmp_path: Path, monkeypatch
) -> None:
    from circuitlens.core.validate import ConfigError

    ok = {"entity_tracking": {"A": ["L3H1"]}}
    with pytest.raises(ConfigError, match="use_circuit is False"):
        tiny(circuits=ok)
    with pytest.raises(ValueError, match="unknown task 'induction'"):
        tiny(use_circuit=True, circuits={"induction": {"A": ["L0H0"]}})
    with pytest.raises(ConfigError, match=r"circuits\['entity_tracking'\].*'L3 H1'"):
        tiny(use_circuit=True, circuits={"entity_tracking": {"A": ["L3 H1"]}})
    with pytest.raises(ConfigError, match="non-empty"):
        tiny(use_circuit=True, circuits={"entity_tracking": {"A": []}})
    # a head the teacher (4 layers x 8 heads) lacks: named before any sweep
    import circuitlens.distill.sweeps as distill  # the runner's sweeps (kept_sweeps) call this

    monkeypatch.setattr(distill, "sweeps", lambda *a, **k: pytest.fail("work started"))
    far = tiny(use_circuit=True, circuits={"entity_tracking": {"A": ["L9H0"]}}, seeds=(0,))
    with pytest.raises(ValueError, match=r"circuits\['entity_tracking'\].*L9H0 is outside"):
        run_experiment(far, tmp_path / "far", progress=False)
    # fewer circuit heads than a one-to-one map needs (the student's 8 heads, budget 2)
    few = tiny(use_circuit=True, circuits=ok, seeds=(0,), budget=2, one_to_one=True)
    with pytest.raises(ValueError, match="has 1 heads.*needs at least 2.*budget to 1"):
        run_experiment(few, tmp_path / "few", progress=False)


@pytest.mark.unit
def test_cli_circuit_flag_reads_saved_circuits(tmp_path: Path, monkeypatch, capsys) -> None:
    """``reproduce --circuit TASK=FILE`` maps into a circuit saved with ``Circuit.save``."""
    import circuitlens.experiments as ex
    from circuitlens.core.types import Circuit

    seen = []

    def fake(cfg, *a, **k):
        seen.append(cfg)
        raise ValueError("stopped here")

    monkeypatch.setattr(ex, "run_experiment", fake)
    f = tmp_path / "c.json"
    Circuit({"A": ["L3H1", "L2H5"], "S": ["L0H0"]}, meta={"method": "x"}).save(f)
    out = str(tmp_path / "o")
    assert main(["reproduce", "--circuit", f"entity_tracking={f}", "--out", out]) == 2
    assert "stopped here" in capsys.readouterr().err
    assert seen[0].use_circuit
    assert seen[0].circuits == {"entity_tracking": {"A": ["L3H1", "L2H5"], "S": ["L0H0"]}}
    for bad, msg in [
        ("entity_tracking", "TASK=FILE"),
        (f"entity_tracking={tmp_path / 'none.json'}", "no file"),
        (f"induction={f}", "unknown task 'induction'"),
    ]:
        assert main(["reproduce", "--circuit", bad, "--out", out]) == 2
        assert msg in capsys.readouterr().err
    assert len(seen) == 1  # refused before the run


@pytest.mark.parametrize(
    "name",
    ["config.json", "entity_tracking/setup.json", "entity_tracking/ce+align/seed1/cell.json"],
)
def test_a_half_written_file_is_named_with_its_fix(
    finished: ExperimentResult, tmp_path: Path, capsys, name: str
) -> None:
    """A run file cut in half (a write killed outside circuitlens, a full disk) is refused by
    loading, resuming and the CLI alike, naming the file and the fix; the fix works: deleting
    the file recomputes that step and keeps every other cell."""
    d = tmp_path / "run"
    shutil.copytree(finished.directory, d)
    f = d / name
    text = f.read_text()
    f.write_text(text[: len(text) // 2])
    resume = lambda: run_experiment(tiny(), d, progress=False)  # noqa: E731
    for attempt in (lambda: ExperimentResult.load(d), resume):
        with pytest.raises(RunFileError) as e:
            attempt()
        message = str(e.value)
        assert e.value.path == f and str(f) in message and "not valid JSON" in message
        assert "delete it to recompute" in message and "--fresh" in message
        assert "\n" not in message
    config = tmp_path / "exp.json"
    config.write_text(json.dumps(tiny().to_dict()))
    assert main(["reproduce", "--config", str(config), "--out", str(d), "--no-progress"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("circuitlens: error: ") and str(f) in last and "delete" in last
    kept = {p: p.stat().st_mtime_ns for p in d.rglob("cell.json") if p != f}
    f.unlink()
    again = run_experiment(tiny(), d, progress=False)
    assert all(p.stat().st_mtime_ns == m for p, m in kept.items())  # the rest is kept
    key = lambda c: (c.condition, c.seed)  # noqa: E731
    assert {key(c): _strip(c) for c in again.cells} == {key(c): _strip(c) for c in finished.cells}
    assert (
        again.setups["entity_tracking"].head_map.to_dict()
        == finished.setups["entity_tracking"].head_map.to_dict()
    )


def _seeded_correct(acc: float, key: str, n: int = 10) -> list[int]:
    """``n`` per-prompt 0/1 outcomes, ``acc`` of them right, in an order seeded by ``key``."""
    import random

    out = [1] * round(acc * n) + [0] * (n - round(acc * n))
    random.Random(key).shuffle(out)
    return out


def _comparison_run(directory: Path, **overrides: object) -> ExperimentResult:
    """A run written as cell files only: entity tracking with CE, CE + Align CKA and CE + Rand
    CKA on seeds 0-2 (Align also on seed 3, which CE lacks) and KD on seed 0 only; theory of
    mind with CE and CE + Align CKA on seeds 0-1. Ten test prompts per seed."""
    accs = {
        ("entity_tracking", "ce"): [0.5, 0.6, 0.4],
        ("entity_tracking", "ce+align"): [0.7, 0.7, 0.7, 0.9],  # diffs +0.2, +0.1, +0.3
        ("entity_tracking", "ce+rand"): [0.6, 0.5, 0.6],  # diffs +0.1, -0.1, +0.2
        ("entity_tracking", "kd"): [0.8],  # one seed: +0.3
        ("theory_of_mind", "ce"): [0.5, 0.5],
        ("theory_of_mind", "ce+align"): [0.6, 0.7],
    }
    cfg = ExperimentConfig(
        tasks=("entity_tracking", "theory_of_mind"),
        conditions=("ce", "ce+align", "ce+rand", "kd"),
        seeds=(0, 1, 2, 3),
        **overrides,
    )
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(cfg.to_dict()))
    for (task, cond), per_seed in accs.items():
        for seed, acc in enumerate(per_seed):
            cell = _hand_cell(
                task=task, condition=cond, seed=seed, accuracy=acc,
                pairs=((Head(1, 0), Head(0, 7)),), curve=({"step": 10, "val_accuracy": acc},),
                test_correct=tuple(_seeded_correct(acc, f"{task}/{cond}/{seed}")),
            )  # fmt: skip
            d = directory / task / cond / f"seed{seed}"
            d.mkdir(parents=True)
            (d / "cell.json").write_text(json.dumps(cell.to_dict()))
    return ExperimentResult.load(directory)


@pytest.mark.unit
def test_comparisons_are_seed_level_and_hand_computed(tmp_path: Path) -> None:
    """Each condition against CE over the seeds both have: the mean of the per-seed accuracy
    differences, the exact sign-flip p on them, Holm within each task, McNemar per seed."""
    from circuitlens.experiments import stats

    result = _comparison_run(tmp_path / "run")
    comp = result.comparisons()
    assert list(zip(comp.task, comp.A, comp.B, strict=True)) == [
        ("entity_tracking", "CE + Align CKA", "CE"),
        ("entity_tracking", "CE + Rand CKA", "CE"),
        ("entity_tracking", "KD", "CE"),
        ("theory_of_mind", "CE + Align CKA", "CE"),
    ]
    rows = comp.set_index(["task", "condition"])
    align = rows.loc[("entity_tracking", "ce+align")]
    assert align.n_seeds == 3 and align.seeds == [0, 1, 2]  # seed 3 has no CE cell
    assert align["diffs"] == pytest.approx([0.2, 0.1, 0.3])
    assert align.mean_diff == pytest.approx((0.2 + 0.1 + 0.3) / 3)
    assert align.p_sign_flip == pytest.approx(2 / 8)  # only +++ and --- reach the mean
    assert align.p_sign_flip == stats.sign_flip_test(align["diffs"])
    assert align.p_t == pytest.approx(stats.paired_t_test([0.2, 0.1, 0.3]).p)
    rand = rows.loc[("entity_tracking", "ce+rand")]
    assert rand.mean_diff == pytest.approx(0.2 / 3) and rand.p_sign_flip == pytest.approx(6 / 8)
    # the default primary family is CE + Align - CE alone: Holm over one is the p itself; the
    # other rows are exploratory, with no Holm p
    assert list(comp.role) == ["primary", "exploratory", "exploratory", "primary"]
    assert align.p_holm == align.p_sign_flip and math.isnan(rand.p_holm)
    assert rand.verdict.startswith("[exploratory] CE + Rand CKA \u2212 CE: +0.067 [")
    assert "p (unadjusted) 0.75" in rand.verdict
    tom = rows.loc[("theory_of_mind", "ce+align")]
    assert tom.p_sign_flip == pytest.approx(0.5) and tom.p_holm == tom.p_sign_flip  # own family
    by = {(c.task, c.condition, c.seed): list(c.test_correct) for c in result.cells}
    want = [
        stats.mcnemar(by[("entity_tracking", "ce+align", s)], by[("entity_tracking", "ce", s)]).p
        for s in (0, 1, 2)
    ]
    assert align.per_seed_mcnemar == pytest.approx(want)
    low, high = stats.two_way_bootstrap_ci(
        {s: by[("entity_tracking", "ce+align", s)] for s in (0, 1, 2)},
        {s: by[("entity_tracking", "ce", s)] for s in (0, 1, 2)},
    )
    assert (align.ci_low, align.ci_high) == pytest.approx((low, high))
    # 3 seeds cannot reject at 0.05 (2/8 > 0.05): no power at any effect
    assert align.power == 0.0
    assert low <= 0 and 0.05 <= high  # 10 prompts a seed: a wide interval
    assert align.verdict == (
        f"CE + Align CKA \u2212 CE: +0.200 [{signed(low)}, {signed(high)}], 3 seeds, p_Holm "
        "0.25; the interval contains 0 and +0.05: undecided"
    )
    # the cells alone make the table: loaded again, the same numbers
    again = ExperimentResult.load(tmp_path / "run").comparisons()
    assert again.drop(columns="verdict").equals(comp.drop(columns="verdict"))
    assert list(again.verdict) == list(comp.verdict)


@pytest.mark.unit
def test_holm_runs_over_the_declared_primary_family(tmp_path: Path) -> None:
    """A declared family of three contrasts, one not against CE and one (KD) with a single
    shared seed: Holm over the three, the untested one counted as p = 1; CE + Rand CKA - CE,
    not declared, is exploratory."""
    from circuitlens.experiments.design import DesignConfig

    primary = ("ce+align - ce", "ce+align - ce+rand", "kd - ce")
    result = _comparison_run(tmp_path / "run", design=DesignConfig(primary=primary))
    comp = result.comparisons()
    et = comp[comp.task == "entity_tracking"]
    assert list(et.contrast) == [*primary, "ce+rand - ce"]
    assert list(et.role) == ["primary"] * 3 + ["exploratory"]
    vs_rand = et.set_index("contrast").loc["ce+align - ce+rand"]
    # per seed CE + Align - CE + Rand: +0.1, +0.2, +0.1, all positive: p = 2/8
    assert vs_rand["diffs"] == pytest.approx([0.1, 0.2, 0.1]) and vs_rand.B == "CE + Rand CKA"
    # Holm over [0.25, 0.25, 1 (KD: one seed)]: 0.25 * 3 = 0.75, then max(0.75, 0.25 * 2)
    assert list(et.p_holm[:2]) == pytest.approx([0.75, 0.75]) and math.isnan(et.p_holm.iloc[2])
    tom = comp[comp.task == "theory_of_mind"]  # only CE + Align - CE has cells there
    assert list(tom.contrast) == ["ce+align - ce"] and tom.p_holm.iloc[0] == pytest.approx(1.0)


@pytest.mark.unit
def test_one_shared_seed_is_reported_not_tested(tmp_path: Path) -> None:
    """KD shares one seed with CE: the row has that seed's difference and its McNemar p, NaN
    intervals and p's, a verdict that says no seed-level test exists, and stays out of Holm."""
    from circuitlens.experiments import stats

    result = _comparison_run(tmp_path / "run")
    kd = result.comparisons().set_index("condition").loc["kd"]
    assert kd.n_seeds == 1 and kd.seeds == [0] and kd.mean_diff == pytest.approx(0.8 - 0.5)
    for col in ("ci_low", "ci_high", "p_sign_flip", "p_t", "p_holm", "power"):
        assert math.isnan(kd[col]), col
    assert "1 seed: no seed-level test" in kd.verdict
    by = {
        (c.condition, c.seed): list(c.test_correct)
        for c in result.cells
        if c.task == "entity_tracking"
    }
    assert kd.per_seed_mcnemar == [stats.mcnemar(by[("kd", 0)], by[("ce", 0)]).p]
    only_one = ExperimentResult(
        result.directory, result.config, {}, [c for c in result.cells if c.seed == 0]
    )
    comp = only_one.comparisons()
    assert len(comp) == 4 and (comp.n_seeds == 1).all() and comp.p_holm.isna().all()
    assert comp.verdict.str.contains("1 seed: no seed-level test").all()
    assert only_one.markdown().startswith("**Exploratory run.** design: 4 seed(s) cannot")


@pytest.mark.unit
def test_markdown_leads_with_the_verdicts(tmp_path: Path) -> None:
    """table.md starts with the seed-level comparison's verdicts, then its table, then the
    other tables; the pooled McNemar table says it is no test of the seeds."""
    result = _comparison_run(tmp_path / "run")
    md = result.markdown()
    comp = result.comparisons()
    # 4 seeds cannot reject: the run is labelled exploratory first, with why
    assert md.startswith(f"**Exploratory run.** {result.design_note()}\n\nSeed-level comparisons")
    first_table = md.index("\n|")
    at = [md.index(v) for v in comp.verdict]
    assert at == sorted(at) and at[-1] < first_table  # every verdict, in order, before any table
    assert md.index("| task ") < md.index("| condition")  # the comparisons, then the main table
    header = md[first_table + 1 :].splitlines()[0]  # the comparisons' table comes first
    assert "p sign-flip" in header and "p Holm" in header and "per-seed McNemar p" in header
    assert "power" in [c.strip() for c in header.split("|")] and "MDD" not in header
    pooled = md[md.index("McNemar (pooled prompts; not seed-level)") :]
    assert "not a valid test of the conditions" in pooled
    assert "p (pooled prompts; not seed-level)" in pooled
    paths = result.write_tables()
    assert paths["comparisons.csv"].read_text().splitlines()[0].startswith("task,A,B,role,n_seeds")


def test_setups_and_cells_are_their_files_and_round_trip(finished: ExperimentResult) -> None:
    """A setup and a cell read back are their files: ``to_dict`` gives the dict each file
    holds, key for key in its order, and ``from_dict(to_dict(x))`` gives ``x`` again."""
    from circuitlens.distill.setup import SETUP_KEYS, SetupError
    from circuitlens.experiments.cell import CELL_KEYS, CellError

    d = finished.directory
    for t, setup in finished.setups.items():
        saved = json.loads((d / t / "setup.json").read_text())
        assert setup.to_dict() == saved and list(saved) == list(SETUP_KEYS)
        assert Setup.from_dict(setup.to_dict()).to_dict() == saved
    for cell in finished.cells:
        f = d / cell.task / cell.condition / f"seed{cell.seed}" / "cell.json"
        saved = json.loads(f.read_text())
        assert cell.to_dict() == saved
        assert list(saved) == [*CELL_KEYS, "mechanism", "lr", "kept_step"]
        assert Cell.from_dict(cell.to_dict()).to_dict() == saved
    with pytest.raises(SetupError, match=r"lacks \['head_map'\].*delete"):
        Setup.from_dict({k: v for k, v in setup.to_dict().items() if k != "head_map"})
    with pytest.raises(CellError, match=r"ce\+rand/seed1 lacks \['pairs', 'curve'\]"):
        Cell.from_dict({k: v for k, v in saved.items() if k not in ("pairs", "curve")})


RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


@pytest.mark.unit
def test_committed_run_exports_load() -> None:
    """Every run kept in ``benchmarks/results/`` (``export_run.py``) reads back: each cell is
    its dict again, each setup keeps every key and value (sweeps saved before per-prompt
    impacts existed gain ``prompt_delta: null``, before the precision option ``dtype:
    float32``; maps saved before the degenerate-assignment
    check gain its warning after theirs), and the tables are made from them."""
    docs = {p.name: json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))}
    runs = {n: doc for n, doc in docs.items() if isinstance(doc, dict) and "setups" in doc}
    assert {"reproduce-zoo.json", "reproduce-real.json"} <= set(runs)
    for name, doc in runs.items():
        for t, saved in doc["setups"].items():
            got = Setup.from_dict(saved).to_dict()
            assert list(got) == list(saved), name
            for k, v in got.items():
                want = saved[k]
                if k.endswith("_sweep"):
                    want = {"prompt_delta": None} | want
                    # sweeps saved before the precision option ran in float32
                    want = want | {"config": {"dtype": "float32"} | want["config"]}
                if k == "head_map":
                    saved_w, got_w = want["config"].get("warnings", []), v["config"]["warnings"]
                    assert got_w[: len(saved_w)] == saved_w, (name, t)
                    assert all("degenerate" in w for w in got_w[len(saved_w) :]), (name, t)
                    want = want | {"config": want["config"] | {"warnings": got_w}}
                assert v == want, (name, t, k)
        for saved in doc.get("cells", []):
            assert Cell.from_dict(saved).to_dict() == saved, name
    doc = runs["reproduce-zoo.json"]
    setups = {t: Setup.from_dict(s) for t, s in doc["setups"].items()}
    cells = [Cell.from_dict(c) for c in doc["cells"]]
    cfg = ExperimentConfig(
        tasks=tuple(setups), conditions=tuple(dict.fromkeys(c.condition for c in cells)),
        seeds=tuple(sorted({c.seed for c in cells})),
    )  # fmt: skip
    table = ExperimentResult(RESULTS, cfg, setups, cells).table()
    assert set(table.task) == set(setups) and table.accuracy_mean.between(0, 1).all()
