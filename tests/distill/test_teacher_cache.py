"""The teacher cache: the values of the live computation bit for bit, shared across
conditions and processes (disk), keyed by what determines them, and no teacher pass during
training once it is filled."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from circuitlens import get_task, load_model
from circuitlens.core.hooks import z_name
from circuitlens.core.types import Circuit, HeadMap
from circuitlens.distill.teacher_cache import TeacherCache, TeacherFeed, model_hash
from circuitlens.distill.trainer import CircuitTrainer, TrainConfig, TrainRun
from circuitlens.tasks import tokenize_prompts

TASK = get_task("entity_tracking", n_boxes=3, seed=0, n_val=16, n_test=16)
MAP = HeadMap(pairs=[("L1H3", "L2H0"), ("L0H0", "L1H1")])
CFG = TrainConfig(
    condition="ce+align", steps=3, batch_size=8, eval_every=0, lr=1e-2, checkpoint_every=0
)


@pytest.fixture
def pair(make_llama_dir):
    teacher = load_model(make_llama_dir(seed=1, n_layers=3, n_heads=4, n_kv_heads=2, d_model=32))
    student = load_model(make_llama_dir(seed=2))
    return teacher, student


def _params(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_cached_outputs_equal_a_plain_teacher_forward(pair) -> None:
    """Reference: the teacher's full forward with a cache of every hook, indexed by hand."""
    teacher, student = pair
    trainer = CircuitTrainer(student, teacher, TASK, MAP, dataclasses.replace(CFG, condition="kd"))
    outs = trainer.teacher_outputs()
    assert len(outs) == CFG.steps
    for prompts, out in zip(trainer.schedule, outs, strict=True):
        b = tokenize_prompts(teacher, prompts)
        with torch.no_grad():
            logits, cache = teacher.run_with_cache(b.tokens)
        rows = torch.arange(len(prompts))
        last = logits[rows, b.positions["last"]]
        assert torch.equal(out.logits, last)
        assert torch.equal(out.labels, last.argmax(-1))
        for layer in (1, 2):  # the teacher layers of MAP
            z = cache[z_name(layer)][rows, b.positions["last"]]  # [batch, heads, d_head]
            assert torch.equal(out.z[layer, "last"][:, 0], z)


def test_the_schedule_is_the_old_per_step_draw(pair) -> None:
    import random

    teacher, student = pair
    trainer = CircuitTrainer(student, teacher, TASK, MAP, CFG)
    rng = random.Random(f"train:{CFG.seed}")
    heldout = TASK.heldout_texts()
    assert trainer.schedule == [TASK.sample(rng, 8, exclude=heldout) for _ in range(CFG.steps)]


def test_a_pool_of_train_prompts_is_n_distinct_prompts_in_distinct_batches(pair) -> None:
    teacher, student = pair
    cfg = dataclasses.replace(CFG, steps=12, train_prompts=10)
    trainer = CircuitTrainer(student, teacher, TASK, MAP, cfg)
    texts = [[p.text for p in batch] for batch in trainer.schedule]
    used = {t for batch in texts for t in batch}
    assert len(trainer.schedule) == 12
    assert all(len(set(batch)) == len(batch) == 8 for batch in texts)
    assert len(used) <= 10 and len(used) > 8  # 12 batches of 8 out of 10 reach more than 8
    assert not used & TASK.heldout_texts()
    # the pool is the first 10 distinct fresh draws of the seed's stream
    import random

    rng = random.Random(f"train:{cfg.seed}")
    first = []
    while len(set(first)) < 10:
        first.append(TASK.sample(rng, 1, exclude=TASK.heldout_texts())[0].text)
    assert used <= set(first)
    # the same seed, another condition: the same pool and batches (paired conditions)
    other = CircuitTrainer(student, teacher, TASK, MAP, dataclasses.replace(cfg, condition="ce"))
    assert other.schedule == trainer.schedule


def test_a_pool_smaller_than_a_batch_is_refused() -> None:
    from circuitlens.core.validate import ConfigError

    with pytest.raises(ConfigError, match="train_prompts .* below batch_size"):
        dataclasses.replace(CFG, train_prompts=4)


def test_disk_cache_gives_the_same_training_without_the_teacher(pair, tmp_path) -> None:
    teacher, student = pair
    start = _params(student)
    first = TeacherCache(tmp_path)
    CircuitTrainer(student, teacher, TASK, MAP, CFG, run=TrainRun(teacher_cache=first)).train(False)
    trained = _params(student)
    assert first.computed == CFG.steps and len(list(tmp_path.glob("*.safetensors"))) == 1

    with torch.no_grad():
        for n, p in student.named_parameters():
            p.copy_(start[n])
    second = TeacherCache(tmp_path)  # another process: reads the file
    calls = []
    real = teacher.run_with_cache
    teacher.run_with_cache = lambda *a, **k: calls.append(1) or real(*a, **k)
    try:
        CircuitTrainer(student, teacher, TASK, MAP, CFG, run=TrainRun(teacher_cache=second)).train(
            False
        )
    finally:
        del teacher.run_with_cache
    assert second.computed == 0 and calls == []  # the teacher never ran
    assert all(torch.equal(p, trained[n]) for n, p in _params(student).items())


def test_no_cache_runs_the_teacher_each_step_with_the_same_result(pair) -> None:
    teacher, student = pair
    start = _params(student)
    CircuitTrainer(student, teacher, TASK, MAP, CFG).train(False)
    cached = _params(student)
    with torch.no_grad():
        for n, p in student.named_parameters():
            p.copy_(start[n])
    calls = []
    real = teacher.run_with_cache
    teacher.run_with_cache = lambda *a, **k: calls.append(1) or real(*a, **k)
    try:
        trainer = CircuitTrainer(
            student, teacher, TASK, MAP, CFG, run=TrainRun(teacher_cache=False)
        )
        trainer.train(False)
    finally:
        del teacher.run_with_cache
    assert len(calls) == CFG.steps
    assert all(torch.equal(p, cached[n]) for n, p in _params(student).items())
    with pytest.raises(ValueError, match="teacher_cache=False"):
        trainer.teacher_outputs()


def test_conditions_of_one_seed_share_one_teacher_pass(pair) -> None:
    teacher, student = pair
    cache = TeacherCache()
    for condition in ("ce+align", "ce+shuffled", "ce", "align"):
        cfg = dataclasses.replace(CFG, condition=condition)
        CircuitTrainer(
            student, teacher, TASK, MAP, cfg, run=TrainRun(teacher_cache=cache)
        ).teacher_outputs()
    assert cache.computed == CFG.steps
    other_seed = dataclasses.replace(CFG, seed=1)
    CircuitTrainer(
        student, teacher, TASK, MAP, other_seed, run=TrainRun(teacher_cache=cache)
    ).teacher_outputs()
    assert cache.computed == 2 * CFG.steps  # other batches: another pass


def test_the_key_follows_the_teachers_weights(pair, tmp_path) -> None:
    teacher, student = pair
    cache = TeacherCache(tmp_path)
    batches = [TASK.split("val", 8)]
    before = cache.key(teacher, batches, [1], ["last"], False)
    h = model_hash(teacher)
    with torch.no_grad():
        p = next(teacher.parameters())
        p.view(-1)[0] += 1.0
    assert model_hash(teacher) != h
    assert TeacherCache(tmp_path).key(teacher, batches, [1], ["last"], False) != before
    assert cache.key(teacher, batches, [1, 2], ["last"], False) != cache.key(
        teacher, batches, [1], ["last"], False
    )


def test_a_damaged_file_is_recomputed(pair, tmp_path) -> None:
    teacher, _ = pair
    batches = [TASK.split("val", 8)]
    good = TeacherCache(tmp_path).get(teacher, batches, [1], ["last"])
    (f,) = tmp_path.glob("*.safetensors")
    f.write_bytes(b"not a safetensors file")
    again = TeacherCache(tmp_path)
    out = again.get(teacher, batches, [1], ["last"])
    assert again.computed == 1 and torch.equal(out[0].z[1, "last"], good[0].z[1, "last"])


def test_circuit_positions_are_cached_per_head(pair) -> None:
    teacher, student = pair
    circuit = Circuit.from_dict(
        {
            "groups": {"movers": ["L2H0"], "late": ["L1H1"]},
            "positions": {"movers": "query_label", "late": "last"},
        }
    )
    cfg = dataclasses.replace(CFG, positions="circuit")
    trainer = CircuitTrainer(student, teacher, TASK, MAP, cfg, circuit)
    out = trainer.teacher_outputs()[0]
    assert set(out.z) == {(layer, p) for layer in (1, 2) for p in ("last", "query_label")}
    trainer.train(False)  # runs on the cached rows


def test_expected_parts_come_from_one_pass_and_equal_separate_passes(pair, tmp_path) -> None:
    """The runner announces what a seed's conditions will ask (other layers for the random
    map, logits for kd): one pass computes it all, each request is served its part, and every
    part equals what a cache asked for that part alone computes."""
    teacher, _ = pair
    batches = [TASK.split("test")[:8], TASK.split("test")[8:16]]
    cache = TeacherCache(tmp_path / "wide")
    cache.expect(layers=[0, 2], logits=True)
    first = cache.get(teacher, batches, [1], ["last"])
    assert cache.computed == 2
    others = (
        cache.get(teacher, batches, [2], ["last"]),
        cache.get(teacher, batches, [0, 1], ["last"], logits=True),
    )
    assert cache.computed == 2  # served from the one pass
    assert first[0].logits is None and set(first[0].z) == {(1, "last")}
    for got, (layers, logits) in zip(
        (first, *others), [([1], False), ([2], False), ([0, 1], True)], strict=True
    ):
        want = TeacherCache().get(teacher, batches, layers, ["last"], logits=logits)
        for g, w in zip(got, want, strict=True):
            assert torch.equal(g.labels, w.labels) and set(g.z) == set(w.z)
            assert all(torch.equal(g.z[k], w.z[k]) for k in w.z)
            assert (g.logits is None) == (w.logits is None)
            assert g.logits is None or torch.equal(g.logits, w.logits)
    # a part that was not announced (a position not held) is computed
    cache.get(teacher, batches, [1], ["query_label"])
    assert cache.computed == 4


def test_training_runs_the_teacher_a_chunk_of_steps_at_a_time(pair) -> None:
    """A step's loss computes the teacher's outputs of its chunk only (a run that stops early
    never runs the teacher on the steps after), and training on chunks of any size equals
    training on one pass computed before step 1, bit for bit."""
    teacher, student = pair
    cfg = dataclasses.replace(CFG, steps=5)
    start = _params(student)
    whole = CircuitTrainer(student, teacher, TASK, MAP, cfg, run=TrainRun(teacher_cache=True))
    whole.teacher_outputs()  # every step's outputs, before step 1
    whole.train(False)
    trained = _params(student)
    with torch.no_grad():
        for n, p in student.named_parameters():
            p.copy_(start[n])

    cache = TeacherCache()
    trainer = CircuitTrainer(student, teacher, TASK, MAP, cfg, run=TrainRun(teacher_cache=cache))
    trainer.feed.chunk = 2
    with trainer.sites.capturing():
        trainer.losses(trainer.schedule[0], step=1)
        assert cache.computed == 2  # steps 1-2
        trainer.losses(trainer.schedule[1], step=2)
        assert cache.computed == 2
        trainer.losses(trainer.schedule[2], step=3)
        assert cache.computed == 4  # steps 3-4, not step 5
    student.zero_grad(set_to_none=True)
    trainer.train(False)
    assert cache.computed == 5
    assert all(torch.equal(p, trained[n]) for n, p in _params(student).items())
    with pytest.raises(ValueError, match="chunk must be at least 1"):
        TeacherFeed(teacher, trainer.schedule, cache, {}, chunk=0)


def test_a_file_is_read_by_a_process_expecting_less_and_widened_when_asked_for_more(
    pair, tmp_path
) -> None:
    """A run resumed in the middle of a seed expects fewer parts than the process that wrote
    the seed's file: it reads the file all the same. A request for a layer the file lacks
    recomputes the batches with the file's layers and the new one, and rewrites it."""
    teacher, _ = pair
    batches = [TASK.split("test")[:8], TASK.split("test")[8:16]]
    first = TeacherCache(tmp_path)
    first.expect(layers=[0, 2], logits=True)
    wide = first.get(teacher, batches, [1], ["last"])
    assert first.computed == 2 and len(list(tmp_path.glob("*.safetensors"))) == 1
    resumed = TeacherCache(tmp_path)  # expects nothing
    got = resumed.get(teacher, batches, [2], ["last"], logits=True)
    assert resumed.computed == 0
    want = TeacherCache().get(teacher, batches, [2], ["last"], logits=True)
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g.z[2, "last"], w.z[2, "last"]) and torch.equal(g.logits, w.logits)
    assert torch.equal(
        resumed.get(teacher, batches, [1], ["last"])[0].z[1, "last"], wide[0].z[1, "last"]
    )

    narrow = tmp_path / "narrow"
    TeacherCache(narrow).get(teacher, batches, [1], ["last"])
    more = TeacherCache(narrow)
    more.get(teacher, batches, [0], ["last"])
    assert more.computed == 2  # layer 0 was not in the file
    again = TeacherCache(narrow)
    again.get(teacher, batches, [0], ["last"])
    again.get(teacher, batches, [0, 1], ["last"])
    assert again.computed == 0 and len(list(narrow.glob("*.safetensors"))) == 1
