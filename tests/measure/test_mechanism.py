"""The mechanism check (:mod:`circuitlens.measure.mechanism`): the trained heads ablated again
after
training, beside their teacher partners' impacts."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from circuitlens import get_task, load_model
from circuitlens.ablation.config import AblationConfig
from circuitlens.ablation.result import AblationResult
from circuitlens.ablation.sweep import ablation_sweep
from circuitlens.core.types import Head, HeadMap
from circuitlens.distill.config import DistillConfig
from circuitlens.distill.pipeline import BeforeTraining, distill_circuit, train_condition
from circuitlens.distill.setup import Setup
from circuitlens.distill.sweeps import sweeps
from circuitlens.distill.trainer import TrainConfig, TrainRun
from circuitlens.mapping.map import map_heads
from circuitlens.measure.cka import CKAWithNull
from circuitlens.measure.mechanism import MechanismCheck, compare, head_impacts

SWEEP_N, TEST_N = 16, 32


@pytest.fixture(scope="module")
def trained() -> dict[str, Any]:
    """The zoo's entity-tracking student (trained: its heads have clear impacts, unlike a
    random model's) trained three steps in ``ce+align`` with the untrained sweeps passed."""
    teacher = load_model("zoo:entity-tracking-teacher")
    student = load_model("zoo:entity-tracking-student")
    task = get_task("entity_tracking", n_val=16, n_test=TEST_N, tokenizers=[teacher, student])
    cfg = DistillConfig().with_overrides(sweep_n=SWEEP_N, n_boot=0, budget=2, test_n=TEST_N)
    t_sweep, s_sweep = sweeps(teacher, student, task, cfg, progress=False)
    head_map = map_heads(s_sweep, t_sweep, budget=cfg.map.budget)
    train = TrainConfig(condition="ce+align", steps=3, batch_size=8, eval_every=0, lr=1e-2)
    done = train_condition(
        teacher, student, task, head_map, dataclasses.replace(cfg, train=train),
        TrainRun(progress=False), BeforeTraining(student_sweep=s_sweep, teacher_sweep=t_sweep),
    )  # fmt: skip
    return {
        "teacher": teacher,
        "student": student,
        "task": task,
        "t_sweep": t_sweep,
        "s_sweep": s_sweep,
        "head_map": head_map,
        "done": done,
    }


def test_after_impacts_equal_a_full_exact_sweep_of_the_trained_student(trained) -> None:
    check = trained["done"].mechanism
    s_sweep = trained["s_sweep"]
    full = ablation_sweep(
        trained["student"],
        trained["task"],
        AblationConfig(
            metric=s_sweep.config.metric,
            split=s_sweep.config.split,
            n=s_sweep.config.n,
            n_boot=0,
            method="exact",
        ),
        progress=False,
    )
    heads = trained["head_map"].student_heads
    want = torch.stack([full.delta[h.layer, h.head] for h in heads])
    torch.testing.assert_close(torch.tensor(check.dp_student_after), want)
    assert check.p_baseline_after == pytest.approx(full.p_baseline)
    # the check measured the trained student, not the untrained one
    assert check.dp_student_after != check.dp_student_before
    assert check.p_baseline_after != pytest.approx(s_sweep.p_baseline, abs=1e-6)


def test_before_values_are_the_untrained_sweeps_at_the_pairs(trained) -> None:
    check, head_map = trained["done"].mechanism, trained["head_map"]
    s_sweep, t_sweep = trained["s_sweep"], trained["t_sweep"]
    assert check.student_heads == [str(s) for s, _ in head_map.pairs]
    assert check.teacher_heads == [str(t) for _, t in head_map.pairs]
    at = lambda sweep, h: float(sweep.delta[h.layer, h.head])  # noqa: E731
    assert check.dp_student_before == [at(s_sweep, s) for s in head_map.student_heads]
    assert check.dp_teacher == [at(t_sweep, t) for t in head_map.teacher_heads]
    # the map chose each partner at this distance: the gap before training
    assert check.gap_before == pytest.approx(head_map.distances)
    assert (check.metric, check.split, check.n) == ("prob", "probe", SWEEP_N)
    assert check.baseline == "own" and check.p_baseline_before == s_sweep.p_baseline
    done = trained["done"]
    assert check.cka_before == pytest.approx(done.cka_before.value.tolist())
    assert check.cka_after == pytest.approx(done.cka_after.value.tolist())
    back = MechanismCheck.from_dict(json.loads(json.dumps(check.to_dict())))
    assert back == check


@pytest.mark.unit
def test_gaps_gains_and_z_by_hand() -> None:
    def sweep(delta: list[list[float]], p: float) -> AblationResult:
        d = torch.tensor(delta)
        return AblationResult(p, p, p - d, d, config=AblationConfig(metric="prob", n=10))

    s_sweep = sweep([[0.10, -0.05], [0.30, 0.00]], 0.5)  # student 2 x 2
    t_sweep = sweep([[0.20, 0.00, 0.40], [0.05, 0.25, 0.00]], 0.5)  # teacher 2 x 3
    head_map = HeadMap([("L1H0", "L1H1"), ("L0H0", "L0H0")])
    cka = lambda v, m, s: CKAWithNull(torch.tensor(v), torch.tensor(m), torch.tensor(s), 20)  # noqa: E731
    check = compare(
        head_map,
        s_sweep,
        t_sweep,
        dp_after=[0.26, 0.35],
        p_baseline_after=0.7,
        cka_before=cka([0.1, 0.2], [0.0, 0.0], [0.1, 0.1]),
        cka_after=cka([0.5, 0.1], [0.1, 0.05], [0.2, 0.0]),
    )
    assert check.dp_student_before == pytest.approx([0.30, 0.10])
    assert check.dp_teacher == pytest.approx([0.25, 0.20])
    assert check.gap_before == pytest.approx([0.05, 0.10])  # |0.30-0.25|, |0.10-0.20|
    assert check.gap_after == pytest.approx([0.01, 0.15])  # |0.26-0.25|, |0.35-0.20|
    assert check.mean_gap_before == pytest.approx(0.075)
    assert check.mean_gap_after == pytest.approx(0.08)
    assert check.cka_gain == pytest.approx([0.4, -0.1])
    z = check.cka_z_after
    assert z[0] == pytest.approx((0.5 - 0.1) / 0.2) and math.isnan(z[1])  # sd 0: no z
    assert check.p_baseline_before == 0.5 and check.p_baseline_after == 0.7
    d = check.to_dict()
    assert d["mean_gap_after"] == pytest.approx(0.08) and d["gap_before"] == check.gap_before
    with pytest.raises(ValueError, match="one value per pair"):
        MechanismCheck.from_dict(d | {"dp_teacher": [0.1]})
    acc = AblationConfig(metric="accuracy")
    t_acc = AblationResult(0.5, 0.5, t_sweep.p_ablated, t_sweep.delta, config=acc)
    with pytest.raises(ValueError, match="cannot be compared"):
        flat = cka([0.0, 0.0], [0.0, 0.0], [1.0, 1.0])
        compare(head_map, s_sweep, t_acc, [0.0, 0.0], 0.5, flat, flat)


def test_head_impacts_take_another_models_baseline(trained) -> None:
    """``baseline="other"``: the given P is the baseline, the ablated scores are the model's."""
    cfg = trained["s_sweep"].config
    heads = [Head(0, 1), Head(1, 3)]
    p_own, own = head_impacts(trained["student"], trained["task"], heads, cfg)
    p, other = head_impacts(trained["student"], trained["task"], heads, cfg, p_baseline=0.9)
    assert p == 0.9
    torch.testing.assert_close(other, own + (0.9 - p_own))


@pytest.mark.unit
def test_distill_circuit_reports_the_gaps(make_llama_dir) -> None:
    task = get_task("entity_tracking", n_boxes=3, n_val=16, n_test=TEST_N)
    result = distill_circuit(
        make_llama_dir(seed=1, n_layers=3), make_llama_dir(seed=2), task, steps=1,
        sweep_n=SWEEP_N, test_n=TEST_N, eval_n=16, budget=2, batch_size=8, eval_every=0,
        n_boot=0, run=TrainRun(progress=False),
    )  # fmt: skip
    m = result.metrics
    assert m["mechanism_gap_before"] == pytest.approx(
        sum(result.head_map.distances) / len(result.head_map)
    )
    after = [
        abs(
            float(head_impacts(result.student, task, [s], result.student_sweep.config)[1][0])
            - float(result.teacher_sweep.delta[t.layer, t.head])
        )
        for s, t in result.head_map.pairs
    ]
    assert m["mechanism_gap_after"] == pytest.approx(sum(after) / len(after))


def test_a_cell_carries_the_mechanism(trained, tmp_path: Path) -> None:
    from circuitlens.core.io import json_text
    from circuitlens.experiments import ExperimentConfig
    from circuitlens.experiments.runner import _run_cell

    cfg = ExperimentConfig(
        tasks=("entity_tracking",), conditions=("ce",), seeds=(0,), use_circuit=False,
        format_accuracy=False,
    ).with_overrides(
        sweep_n=SWEEP_N, test_n=TEST_N, steps=1, batch_size=8, eval_every=0, checkpoint_every=0
    )  # fmt: skip
    nan = float("nan")
    setup = Setup(
        task="entity_tracking", circuit=None, circuit_note="", teacher_sweep=trained["t_sweep"],
        student_sweep=trained["s_sweep"], head_map=trained["head_map"], teacher_accuracy=nan,
        student_accuracy=nan, student_test_correct=(), teacher_test_correct=(),
        student_circuit_accuracy=nan, teacher_circuit_accuracy=None, student_format_accuracy={},
        teacher_format_accuracy={}, student_val_accuracy=nan, fingerprints={},
        teacher_shape=(0, 0, 0), student_shape=(0, 0, 0), seconds=0.0,
    )  # fmt: skip
    student = load_model("zoo:entity-tracking-student")
    cell = _run_cell(
        tmp_path / "cell", trained["task"], "ce", 0, cfg, setup, trained["teacher"], False,
        student=student,
    )  # fmt: skip
    saved = json.loads(json_text(cell.to_dict()))
    check = MechanismCheck.from_dict(saved["mechanism"])
    assert check.student_heads == [str(s) for s, _ in cell.pairs]
    assert check.dp_student_before == trained["done"].mechanism.dp_student_before
    assert check.cka_after == pytest.approx(cell.cka_after.value.tolist())
    assert {"accuracy", "pairs", "cka_after", "seconds", "resumed"} <= set(saved)
