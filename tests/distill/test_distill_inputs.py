"""distill_circuit leaves the caller's student alone, checks its input up front, says its cost,
and prints short."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from circuitlens import distill_circuit, get_task, load_model
from circuitlens.core.validate import ConfigError
from circuitlens.distill.config import DistillConfig
from circuitlens.distill.trainer import TrainRun
from circuitlens.measure.runtime_estimate import estimate_distill_cost

FAST = dict(sweep_n=16, test_n=32, eval_n=16, budget=2, batch_size=8, eval_every=0)
QUIET = TrainRun(progress=False)


@pytest.fixture(scope="module")
def setup(make_llama_dir):
    teacher = load_model(make_llama_dir(seed=1, n_layers=3))
    task = get_task("entity_tracking", n_boxes=3, n_val=16, n_test=32)
    return teacher, task


def _params(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_the_callers_student_is_not_trained_unless_inplace(setup, make_llama_dir, caplog) -> None:
    teacher, task = setup
    student = load_model(make_llama_dir(seed=2))
    before = _params(student)
    with caplog.at_level(logging.INFO, logger="circuitlens.measure.runtime_estimate"):
        result = distill_circuit(teacher, student, task, steps=2, run=QUIET, **FAST)
    assert "expected about" in caplog.text  # the cost, said before the work
    assert all(torch.equal(p, before[n]) for n, p in student.named_parameters())
    assert result.student is not student
    assert any(not torch.equal(p, before[n]) for n, p in result.student.named_parameters())
    text = repr(result)
    assert text.startswith("DistillResult(ce+align, 2 steps, 2 ablation pair(s)")
    assert "tensor" not in text and "Linear" not in text and len(text) < 400
    sweep = repr(result.teacher_sweep)
    assert sweep.startswith(
        f"AblationResult(teacher: {result.config.sweep.metric} on 16 probe prompts"
    )
    assert "tensor" not in sweep and len(sweep) < 300
    inplace = distill_circuit(teacher, student, task, steps=1, progress=False, inplace=True, **FAST)
    assert inplace.student is student
    assert any(not torch.equal(p, before[n]) for n, p in student.named_parameters())


def test_nan_and_oversized_requests_fail_before_work(setup, make_llama_dir) -> None:
    teacher, task = setup
    with pytest.raises(ConfigError, match=r"TrainConfig\.lam must be a finite number"):
        distill_circuit(teacher, make_llama_dir(seed=2), task, lam=math.nan, **FAST)
    # sharding is refused, given in the run or by name as an option of the run
    with pytest.raises(ConfigError, match=r"does not shard.*CircuitTrainer"):
        distill_circuit(teacher, make_llama_dir(seed=2), task, run=TrainRun(fsdp=True), **FAST)
    with pytest.raises(ConfigError, match=r"does not shard.*CircuitTrainer"):
        distill_circuit(teacher, make_llama_dir(seed=2), task, fsdp=True, **FAST)
    with pytest.raises(ConfigError, match=r"asks for 64 test prompts .* n_test=64"):
        distill_circuit(teacher, make_llama_dir(seed=2), task, **(FAST | {"test_n": 64}))
    # the advice: a task with more test prompts
    bigger = get_task("entity_tracking", n_boxes=3, n_val=16, n_test=64)
    cfg = DistillConfig().with_overrides(**(FAST | {"test_n": 64, "steps": 0}))
    distill_circuit(teacher, make_llama_dir(seed=2), bigger, cfg, run=QUIET)


def test_cost_estimate_is_positive_and_grows_with_steps(setup, make_llama_dir) -> None:
    teacher, task = setup
    student = load_model(make_llama_dir(seed=2))
    small = estimate_distill_cost(teacher, student, task, DistillConfig().with_overrides(steps=10))
    large = estimate_distill_cost(
        teacher, student, task, DistillConfig().with_overrides(steps=1000)
    )
    assert 0 < small.seconds < large.seconds and large.flops > small.flops
    assert "expected about" in str(large) and "training" in str(large)


def test_cost_of_a_screened_sweep_is_its_screen_and_top_heads() -> None:
    from circuitlens.measure.runtime_estimate import sweep_passes

    # an exact sweep ablates every head ("auto" is exact at every size for now); a screened
    # one (576 heads, SmolLM2-sized) about 0.15 of them + a margin
    assert sweep_passes(96, 12, 100) == pytest.approx(96 * 100 * 13 / 24 + 300)
    assert sweep_passes(576, 30, 100) == pytest.approx(576 * 100 * 31 / 60 + 300)
    screened = sweep_passes(576, 30, 100, method="screened")
    assert screened == pytest.approx(300 + (86 + 22) * 100 * 31 / 60 + 300)
    assert screened < sweep_passes(576, 30, 100, top=200, method="screened") < 576 * 100 * 31 / 60


@pytest.fixture(scope="module")
def zoo_pair():
    return load_model("zoo:entity-tracking-teacher"), load_model("zoo:entity-tracking-student")


@pytest.fixture
def small_jsonl(tmp_path, zoo_pair):
    """A 60-line JSONL task from the zoo task's own prompts (the zoo's word-level tokenizer
    does not know the IOI file's names)."""
    import json

    source = get_task("entity_tracking", model=zoo_pair[0], n_train=0, n_val=0, n_test=60)
    keys = ("answer", "corrupted", "corrupted_answer", "ablation")
    lines = [
        json.dumps({"prompt": p.text, "wrong_answers": list(p.wrong_answers)} | {
            k: getattr(p, k) for k in keys
        })
        for p in source.split("test")
    ]  # fmt: skip
    path = tmp_path / "small.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.integration
def test_a_small_jsonl_task_runs_with_the_default_sizes(zoo_pair, small_jsonl, caplog) -> None:
    """issue 39: the default counts (sweep_n 200, test_n 500, eval_n 200) are lowered to what
    a 60-line file's splits hold (probe 6, test 12, val 6), with a note; what was asked for
    explicitly and is too large is refused, naming the JSONL task's own option."""
    from circuitlens.distill.pipeline import fit_split_sizes

    teacher, student = zoo_pair
    task = get_task("jsonl", path=small_jsonl)
    sizes = {s: len(task.split(s)) for s in ("train", "val", "test", "probe")}
    assert sizes == {"train": 36, "val": 6, "test": 12, "probe": 6}
    fitted = fit_split_sizes(task, DistillConfig())
    assert (fitted.sweep.n, fitted.test_n, fitted.train.eval_n) == (6, 12, 6)
    assert fit_split_sizes(task, fitted) == fitted  # fitted: nothing more to lower
    with caplog.at_level(logging.INFO, logger="circuitlens.distill.pipeline"):
        result = distill_circuit(teacher, student, task, steps=2, run=QUIET)
    assert "probe split holds 6 prompts, fewer than the default 200" in caplog.text
    assert result.config.sweep.n == 6 and result.config.test_n == 12
    assert result.teacher_sweep.config.split == "probe"
    assert result.metrics["steps"] == 2 and 0 <= result.metrics["student_accuracy_after"] <= 1
    with pytest.raises(ConfigError, match=r"asks for 50 probe prompts .* raise probe_fraction"):
        distill_circuit(teacher, student, task, sweep_n=50, steps=0, run=QUIET)
    with pytest.raises(ConfigError, match=r"asks for 20 val prompts .* raise val_fraction"):
        distill_circuit(teacher, student, task, eval_n=20, steps=0, run=QUIET)


@pytest.mark.acceptance
def test_cli_distill_on_a_small_jsonl_task(zoo_pair, small_jsonl, tmp_path, capsys) -> None:
    from circuitlens.cli import main
    from circuitlens.distill.result import DistillResult

    out = tmp_path / "out"
    args = ["distill", "--task", "jsonl", "--task-option", f"path={small_jsonl}", "--steps", "1"]
    assert main(args + ["--out", str(out), "--no-progress"]) == 0
    assert "student_accuracy_after" in capsys.readouterr().out
    assert DistillResult.load(out / "result").config.sweep.n == 6
