"""What chooses the heads (the sweeps, the key they are kept under, the setup's map) reads the
task's probe prompts, never the test prompts that results are reported on."""

from __future__ import annotations

import copy

import pytest

from circuitlens import get_task, load_model
from circuitlens.distill.config import DistillConfig
from circuitlens.distill.sweeps import sweeps, sweeps_key
from circuitlens.distill.trainer import TrainConfig
from circuitlens.tasks import prompt_scores

SIZES = dict(n_boxes=3, n_val=8, n_test=16, n_probe=8)


@pytest.fixture(scope="module")
def models(make_llama_dir):
    return load_model(make_llama_dir(seed=1, n_layers=3)), load_model(make_llama_dir(seed=2))


@pytest.fixture(scope="module")
def task():
    return get_task("entity_tracking", seed=0, **SIZES)


def _with_split(task, split: str):
    """``task`` with its ``split`` prompts replaced by another seed's (the others kept)."""
    other = get_task("entity_tracking", seed=1, **SIZES)
    out = copy.copy(task)
    out._splits = {**{s: task.split(s) for s in ("train", "val", "test", "probe")}}
    out._splits[split] = other.split(split)
    return out


CFG = DistillConfig().with_overrides(
    sweep_n=8, test_n=16, budget=2, n_boot=0, train=TrainConfig(steps=1, eval_every=0)
)


def test_the_sweeps_read_the_probe_prompts(models, task) -> None:
    teacher, student = models
    assert not {p.text for p in task.split("probe")} & {p.text for p in task.split("test")}
    t_sweep, s_sweep = sweeps(teacher, student, task, CFG, progress=False)
    assert t_sweep.config.split == s_sweep.config.split == "probe"
    # reference: the student's P, unablated, on the first 8 probe prompts
    own = float(prompt_scores(student, task, "probe", 8, "prob").mean())
    assert s_sweep.p_own == pytest.approx(own) and t_sweep.p_baseline == pytest.approx(own)
    assert s_sweep.prompt_delta.shape[-1] == 8


def test_the_sweeps_key_reads_the_probe_prompts_only(models, task, monkeypatch) -> None:
    teacher, student = models
    key = sweeps_key(teacher, student, task, CFG, None)
    read: list[tuple[str, int | None]] = []
    split = task.split
    monkeypatch.setattr(
        task, "split", lambda name="test", n=None: read.append((name, n)) or split(name, n)
    )
    assert sweeps_key(teacher, student, task, CFG, None) == key
    assert read == [("probe", 8)]
    monkeypatch.undo()
    # other test prompts: the same key (the sweeps are still valid); other probe prompts: not
    assert sweeps_key(teacher, student, _with_split(task, "test"), CFG, None) == key
    assert sweeps_key(teacher, student, _with_split(task, "probe"), CFG, None) != key


def test_the_setups_map_is_chosen_on_probe_and_scored_on_test(models, task) -> None:
    """``prepare``: other test prompts leave the sweeps and the map (a method that also reads
    the heads' z) as they were; other probe prompts change the sweeps."""
    from circuitlens.distill.pipeline import prepare

    teacher, student = models
    cfg = CFG.with_overrides(map_method="cka")
    base = prepare(teacher, student, task, cfg, progress=False)
    new_test = prepare(teacher, student, _with_split(task, "test"), cfg, progress=False)
    assert new_test.head_map.pairs == base.head_map.pairs
    assert new_test.student_sweep.delta.equal(base.student_sweep.delta)
    assert new_test.teacher_sweep.delta.equal(base.teacher_sweep.delta)
    # scored on test: the setup's references are the test prompts' (reference: evaluated)
    correct = prompt_scores(student, task, "test", 16).tolist()
    assert list(base.student_test_correct) == [int(x) for x in correct]
    _, s_sweep = sweeps(teacher, student, _with_split(task, "probe"), cfg, progress=False)
    assert not s_sweep.delta.equal(base.student_sweep.delta)
