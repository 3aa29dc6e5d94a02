from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from circuitlens import get_task, load_model
from circuitlens.core.types import HeadMap
from circuitlens.core.validate import ConfigError
from circuitlens.distill.train_config import lr_grid_around
from circuitlens.distill.trainer import CONDITIONS, CircuitTrainer, TrainConfig, TrainRun


@pytest.fixture
def pair(make_llama_dir):
    teacher = load_model(make_llama_dir(seed=1, n_layers=3, n_heads=4, n_kv_heads=2, d_model=32))
    student = load_model(make_llama_dir(seed=2))  # 2 layers x 4 heads (2 K/V)
    return teacher, student


TASK = get_task("entity_tracking", n_boxes=3, seed=0, n_val=16, n_test=16)
MAP = HeadMap(pairs=[("L1H3", "L2H0"), ("L0H0", "L1H1")])
FAST = TrainConfig(steps=4, batch_size=8, eval_every=2, eval_n=16, weight_decay=0.1, lr=1e-2)


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_only_mapped_entries_move(pair) -> None:
    teacher, student = pair
    before, t_before = _snapshot(student), _snapshot(teacher)
    trainer = CircuitTrainer(student, teacher, TASK, MAP, FAST)
    history = trainer.train(progress=False)
    after = _snapshot(student)
    moved = 0
    for n, p in after.items():
        mask = trainer.masks.get(n)
        if mask is None:
            assert torch.equal(p, before[n]), n  # wholly frozen parameter: bit for bit
        else:
            assert torch.equal(p[~mask], before[n][~mask]), n  # frozen entries: bit for bit
            moved += int((p[mask] != before[n][mask]).sum())
    assert moved > 0.9 * trainer.fraction.params
    assert all(torch.equal(p, t_before[n]) for n, p in _snapshot(teacher).items())
    assert len(history) == 4 and all(math.isfinite(r["loss"]) for r in history)
    # debiased CKA (the default) can fall slightly below 0 for unrelated activations
    assert "val_accuracy" in history[1] and -1 <= history[1]["mean_cka"] <= 1
    assert trainer.fraction.heads == 2 and trainer.fraction.total_heads == 8


def test_resume_matches_uninterrupted(pair, tmp_path, monkeypatch) -> None:
    teacher, student = pair
    start = _snapshot(student)
    cfg = dataclasses.replace(FAST, checkpoint_every=2)
    CircuitTrainer(student, teacher, TASK, MAP, cfg, run=TrainRun(tmp_path / "a")).train(False)
    straight = _snapshot(student)

    def restart() -> None:  # a new process: the weights in memory are the initial ones
        with torch.no_grad():
            for n, p in student.named_parameters():
                p.copy_(start[n])

    restart()
    trainer = CircuitTrainer(student, teacher, TASK, MAP, cfg, run=TrainRun(tmp_path / "b"))
    real_losses, calls = trainer.losses, {"n": 0}

    def dies_at_step_3(prompts, step=None):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_losses(prompts, step=step)

    monkeypatch.setattr(trainer, "losses", dies_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(progress=False)
    restart()
    CircuitTrainer(student, teacher, TASK, MAP, cfg, run=TrainRun(tmp_path / "b")).train(False)
    resumed = _snapshot(student)
    assert all(torch.equal(resumed[n], straight[n]) for n in straight)
    other = dataclasses.replace(cfg, lam=2.0)
    with pytest.raises(ValueError, match="another config"):
        CircuitTrainer(student, teacher, TASK, MAP, other, run=TrainRun(tmp_path / "b")).train(
            False
        )


@pytest.mark.parametrize("condition", CONDITIONS)
def test_every_condition_runs(pair, condition) -> None:
    teacher, student = pair
    cfg = dataclasses.replace(FAST, condition=condition, steps=2, eval_every=0)
    history = CircuitTrainer(student, teacher, TASK, MAP, cfg).train(progress=False)
    assert len(history) == 2 and all(math.isfinite(r["loss"]) for r in history)


def test_bad_input(pair) -> None:
    teacher, student = pair
    with pytest.raises(ValueError, match="lam"):
        TrainConfig(lam=-1.0)
    with pytest.raises(ValueError, match="valid: ce, ce\\+align"):
        TrainConfig(condition="distill")
    with pytest.raises(ValueError, match="batch_size >= 4"):
        TrainConfig(batch_size=2)
    with pytest.raises(ValueError, match="outside the model"):
        CircuitTrainer(student, teacher, TASK, HeadMap(pairs=[("L5H0", "L0H0")]), FAST)
    with pytest.raises(ValueError, match="outside the model"):
        CircuitTrainer(student, teacher, TASK, HeadMap(pairs=[("L0H0", "L0H9")]), FAST)


@pytest.mark.parametrize(("site", "positions"), [("result", "last"), ("z", "tokens")])
def test_sites_train_the_mapped_heads(pair, site, positions) -> None:
    teacher, student = pair
    before = _snapshot(student)
    cfg = dataclasses.replace(FAST, condition="align", steps=2, eval_every=0, site=site,
                              positions=positions)  # fmt: skip
    trainer = CircuitTrainer(student, teacher, TASK, MAP, cfg)
    history = trainer.train(progress=False)
    assert all(math.isfinite(r["loss"]) for r in history)
    moved = sum(int((p != before[n]).sum()) for n, p in _snapshot(student).items())
    assert moved > 0  # the alignment term alone has gradients at this site
    null = trainer.heldout_cka(n=16)
    assert null.value.shape == (2,) and (null.null_sd > 0).all()


def test_bf16_trains_only_the_mapped_slices_near_the_float32_run(make_llama_dir, unchecked) -> None:
    """``dtype="bfloat16"``: the student's forward and backward under bf16 autocast (float32
    master weights), the teacher loaded in bf16, CKA in float32. Frozen entries stay bit-exact,
    the losses are finite, and the run stays near the float32 one: after 4 steps at lr 1e-2
    the trained entries are within 0.05 of the float32 run's (each step moves them by up to
    lr = 0.01; bf16 keeps 8 bits of mantissa, about 2 significant digits)."""
    teacher32 = load_model(make_llama_dir(seed=1, n_layers=3))
    teacher16 = load_model(make_llama_dir(seed=1, n_layers=3), dtype=torch.bfloat16)
    runs = {}
    for dtype, teacher in (("float32", teacher32), ("bfloat16", teacher16)):
        student = load_model(make_llama_dir(seed=2))
        before = _snapshot(student)
        cfg = dataclasses.replace(FAST, dtype=dtype, condition="ce+align")
        trainer = CircuitTrainer(
            student, teacher, TASK, MAP, cfg, run=TrainRun(teacher_cache=False)
        )
        history = trainer.train(progress=False)
        assert all(math.isfinite(r["loss"]) and math.isfinite(r["mean_cka"]) for r in history)
        after = _snapshot(student)
        for n, p in after.items():
            assert p.dtype == torch.float32, n  # master weights stay float32
            mask = trainer.masks.get(n)
            frozen = before[n] if mask is None else before[n][~mask]
            assert torch.equal(p if mask is None else p[~mask], frozen), n
        runs[dtype] = (after, trainer.masks, history)
    (a32, masks, h32), (a16, _, h16) = runs["float32"], runs["bfloat16"]
    moved = [n for n in masks if not torch.equal(a16[n][masks[n]], a32[n][masks[n]])]
    assert moved  # bf16 is not silently float32
    for n, m in masks.items():
        torch.testing.assert_close(a16[n][m], a32[n][m], atol=0.05, rtol=0)
    for r16, r32 in zip(h16, h32, strict=True):
        assert r16["loss"] == pytest.approx(r32["loss"], rel=0.05)
    with unchecked(), pytest.raises(ValueError, match="unknown dtype 'float16'"):
        TrainConfig(
            dtype="float16"
        )  # the config's own check, as a caller without the hook meets it


#: patience on every step's validation: the runs below stop long before the cap, whatever the
#: curve (16 val prompts give at most 17 distinct accuracies, so at most 17 strict improvements
#: in 40 evaluations, and two non-improvements in a row must come)
PATIENT = dataclasses.replace(FAST, steps=40, eval_every=1, patience=2, lr=3e-3)


def _reset(model, weights) -> None:
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(weights[n])


def test_patience_stops_and_keeps_the_best_evaluation_bit_for_bit(pair) -> None:
    teacher, student = pair
    start = _snapshot(student)
    trainer = CircuitTrainer(student, teacher, TASK, MAP, PATIENT)
    history = trainer.train(progress=False)
    kept = _snapshot(student)
    vals = [r["val_accuracy"] for r in history]
    best = max(vals)
    assert trainer.state.step < PATIENT.steps  # stopped before the cap
    assert trainer.kept_step == history[vals.index(best)]["step"]  # the earliest best
    assert trainer.state.step == trainer.kept_step + PATIENT.patience  # 2 evals without gain
    assert all(v <= best for v in vals[vals.index(best) :])
    # the kept weights are those of a run of exactly kept_step steps (same seed, no patience)
    _reset(student, start)
    short = dataclasses.replace(PATIENT, steps=trainer.kept_step, patience=None)
    plain = CircuitTrainer(student, teacher, TASK, MAP, short)
    plain_history = plain.train(progress=False)
    assert plain.kept_step == trainer.kept_step  # without patience: the last step
    assert all(torch.equal(p, kept[n]) for n, p in _snapshot(student).items())
    assert [r["loss"] for r in plain_history] == [r["loss"] for r in history[: len(plain_history)]]


def test_patience_at_the_cap_keeps_the_best_and_none_keeps_the_last(pair) -> None:
    teacher, student = pair
    start = _snapshot(student)
    cfg = dataclasses.replace(PATIENT, steps=6, patience=100)  # never stops: the cap ends it
    trainer = CircuitTrainer(student, teacher, TASK, MAP, cfg)
    history = trainer.train(progress=False)
    vals = [r["val_accuracy"] for r in history]
    assert trainer.state.step == 6 and trainer.kept_step == vals.index(max(vals)) + 1
    kept = _snapshot(student)
    _reset(student, start)
    CircuitTrainer(
        student,
        teacher,
        TASK,
        MAP,
        dataclasses.replace(cfg, steps=trainer.kept_step, patience=None),
    ).train(progress=False)
    assert all(torch.equal(p, kept[n]) for n, p in _snapshot(student).items())


def test_an_interrupted_patient_run_resumes_to_the_same_stop(pair, tmp_path, monkeypatch) -> None:
    """The best weights and the counter are in the checkpoint: a run interrupted after its best
    evaluation (and before its stop) stops at the same step with the same weights, and a
    finished run's checkpoint trains no further."""
    teacher, student = pair
    start = _snapshot(student)
    cfg = dataclasses.replace(PATIENT, checkpoint_every=1)
    straight = CircuitTrainer(student, teacher, TASK, MAP, cfg, run=TrainRun(tmp_path / "a"))
    straight.train(progress=False)
    want, stop = _snapshot(student), straight.state.step
    _reset(student, start)
    trainer = CircuitTrainer(student, teacher, TASK, MAP, cfg, run=TrainRun(tmp_path / "b"))
    real_losses = trainer.losses

    def dies_before_the_stop(prompts, step=None):
        if step == stop:  # after the best evaluation's checkpoint, before the stop
            raise KeyboardInterrupt
        return real_losses(prompts, step=step)

    monkeypatch.setattr(trainer, "losses", dies_before_the_stop)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(progress=False)
    _reset(student, start)  # a new process
    resumed = CircuitTrainer(student, teacher, TASK, MAP, cfg, run=TrainRun(tmp_path / "b"))
    history = resumed.train(progress=False)
    assert (resumed.state.step, resumed.kept_step) == (stop, straight.kept_step)
    assert history == straight.state.history
    assert all(torch.equal(p, want[n]) for n, p in _snapshot(student).items())
    _reset(student, start)  # the stopped run's checkpoint: no step is taken again
    again = CircuitTrainer(student, teacher, TASK, MAP, cfg, run=TrainRun(tmp_path / "a"))
    monkeypatch.setattr(again, "losses", lambda *a, **k: pytest.fail("trained after the stop"))
    again.train(progress=False)
    assert again.kept_step == straight.kept_step
    assert all(torch.equal(p, want[n]) for n, p in _snapshot(student).items())


def test_a_checkpoint_saved_before_the_new_fields_resumes(pair, tmp_path) -> None:
    teacher, student = pair
    cfg = dataclasses.replace(FAST, checkpoint_every=2)
    CircuitTrainer(student, teacher, TASK, MAP, cfg, run=TrainRun(tmp_path)).train(False)
    f = tmp_path / "trainer.pt"
    saved = torch.load(f, weights_only=False)
    for k in ("patience", "lr_grid", "lr_from"):  # as an older version wrote it
        del saved["config"][k]
    torch.save(saved, f)
    trainer = CircuitTrainer(student, teacher, TASK, MAP, cfg, run=TrainRun(tmp_path))
    assert trainer.load_checkpoint() and trainer.state.step == 4


def test_choosing_options_are_checked(unchecked) -> None:
    assert TrainConfig(lr_grid=[1e-4, 2e-4]).lr_grid == (1e-4, 2e-4)  # a file's list: a tuple
    assert TrainConfig(lr_grid=[1, 2]).lr_grid == (1.0, 2.0)
    for bad, match in (
        (dict(patience=0), "patience must be >= 1"),
        (dict(patience=3, eval_every=0), "eval_every > 0"),
        (dict(lr_grid=[1e-4, 0.0]), "learning rates > 0"),
        (dict(lr_grid=[1e-4, 1e-4]), "repeats"),
        (dict(lr_grid="1e-4"), "list of numbers"),
        (dict(lr_from=""), "lr_from"),
    ):
        with unchecked(), pytest.raises(ConfigError, match=match):
            TrainConfig(**bad)  # the config's own check, as a caller without the hook meets it
    assert lr_grid_around(2e-4) == pytest.approx((1e-4, 2e-4, 4e-4))
