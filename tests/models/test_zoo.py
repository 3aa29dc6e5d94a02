from __future__ import annotations

import dataclasses
import json
import random

import pytest
import torch

import circuitlens.models.zoo as zoo
from circuitlens import evaluate, get_task, load_model, model_facts
from circuitlens.core.io import sha256_file


@pytest.mark.unit
def test_vocabulary_covers_both_tasks(zoo_tokenizer) -> None:
    unk = zoo_tokenizer.unk_token_id
    for name in ("entity_tracking", "theory_of_mind"):
        for p in get_task(name, seed=5, n_test=100).split("test"):
            for text in (p.text, p.corrupted, p.ablation, p.answer, *p.wrong_answers):
                assert unk not in zoo_tokenizer(text)["input_ids"], text


@pytest.mark.unit
@pytest.mark.parametrize("name", ["entity-tracking-teacher", "theory-of-mind-teacher"])
def test_training_batch_targets(name, zoo_tokenizer) -> None:
    spec = zoo.ZOO[name]
    batch = zoo.training_batch(spec, zoo_tokenizer, random.Random(0))
    ids, labels = batch["input_ids"], batch["labels"]
    scored = labels != -100
    assert scored.sum(1).eq(spec.recipe.n_queries).all()
    # Hugging Face shifts labels: a label at j is predicted from position j - 1, the query's end
    assert torch.equal(labels[scored], ids[scored])
    rows, cols = scored.nonzero(as_tuple=True)
    before = zoo_tokenizer.convert_ids_to_tokens(ids[rows, cols - 1].tolist())
    assert set(before) == ({"the"} if spec.task == "entity_tracking" else {":"})
    # probe targets: the object at its box label; the queried label at the query's end
    pos_tok = zoo_tokenizer.convert_ids_to_tokens(ids[batch["aux_rows"], batch["aux_pos"]].tolist())
    tgt = zoo_tokenizer.convert_ids_to_tokens(batch["aux_tgt"].tolist())
    if spec.task == "entity_tracking":
        for r, p, a, t in zip(
            batch["aux_rows"].tolist(), batch["aux_pos"].tolist(), pos_tok, tgt, strict=True
        ):
            if a == "the":  # query end: the label two tokens back
                assert zoo_tokenizer.convert_ids_to_tokens(int(ids[r, p - 2])) == t
            else:  # a box label: its object four tokens back
                assert zoo_tokenizer.convert_ids_to_tokens(int(ids[r, p - 4])) == t


def _tiny_spec(monkeypatch) -> str:
    spec = zoo.ZOO["entity-tracking-student"]
    tiny = dataclasses.replace(
        spec,
        arch=zoo.ZooArch(d_model=16, n_layers=2, n_heads=2, n_kv_heads=1, d_mlp=32),
        recipe=dataclasses.replace(
            spec.recipe,
            steps=12,
            batch_size=8,
            warmup=4,
            eval_every=4,
            eval_n=16,
            stop_at=2.0,
            max_boxes=3,
        ),
    )
    monkeypatch.setitem(zoo.ZOO, "tiny-test", tiny)
    monkeypatch.setattr(zoo.build, "CARD_SEED", 7)
    return "tiny-test"


def _weights(path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path / "model.safetensors")


def test_train_is_reproducible_and_resumable(tmp_path, monkeypatch) -> None:
    name = _tiny_spec(monkeypatch)
    card = zoo.train(name, out_dir=tmp_path / "a", work_dir=tmp_path / "wa", progress=False)
    zoo.train(name, out_dir=tmp_path / "b", work_dir=tmp_path / "wb", progress=False)
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert card["steps_trained"] == 12 and len(card["learning_curve"]) == 3
    assert card["sha256"]["model.safetensors"] == sha256_file(tmp_path / "a" / "model.safetensors")
    # interrupt during step 10 (the last checkpoint is at step 8), then resume: the final
    # training state equals the uninterrupted run's
    real_batch, calls = zoo.build.training_batch, {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 10:
            raise KeyboardInterrupt
        return real_batch(*args, **kwargs)

    monkeypatch.setattr(zoo.build, "training_batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        zoo.train(name, out_dir=tmp_path / "c", work_dir=tmp_path / "wc", progress=False)
    monkeypatch.setattr(zoo.build, "training_batch", real_batch)
    assert torch.load(tmp_path / "wc" / "checkpoint.pt", weights_only=False)["state"]["step"] == 8
    zoo.train(name, out_dir=tmp_path / "c", work_dir=tmp_path / "wc", progress=False)
    ck_a = torch.load(tmp_path / "wa" / "checkpoint.pt", weights_only=False)["model"]
    ck_c = torch.load(tmp_path / "wc" / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.equal(ck_a[k], ck_c[k]) for k in ck_a)
    c = _weights(tmp_path / "c")
    assert all(torch.equal(a[k], c[k]) for k in a)


# -- the shipped zoo: accuracy targets, measured on a fresh task seed ------------------------
FRESH_SEED = 2024


@pytest.fixture(scope="module")
def fresh_tasks():
    return {
        n: zoo.zoo_task(n, seed=FRESH_SEED, n_test=300)
        for n in ("entity_tracking", "theory_of_mind")
    }


# Shipped models that do not meet their target yet: the test is expected to fail (strict: it
# fails loudly once the model does meet it, so this entry must then go).
BELOW_TARGET: dict[str, str] = {}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.xfail(reason=BELOW_TARGET[n], strict=True))
        if n in BELOW_TARGET
        else n
        for n in zoo.ZOO
    ],
)
def test_shipped_zoo_model_meets_its_target(name, fresh_tasks) -> None:
    spec = zoo.ZOO[name]
    model = load_model(f"zoo:{name}")
    facts = model_facts(model)
    assert facts.n_kv_heads < facts.n_heads  # grouped K/V, as in Llama-3
    acc = evaluate(model, fresh_tasks[spec.task], split="test")
    if spec.role == "teacher":
        assert acc >= zoo.TEACHER_TARGET, f"{name}: {acc:.3f}"
    else:
        assert zoo.STUDENT_RANGE[0] <= acc <= zoo.STUDENT_RANGE[1], f"{name}: {acc:.3f}"


@pytest.mark.parametrize("name", list(zoo.ZOO))
def test_card_accuracy_is_reproduced(name) -> None:
    """The card's accuracy, measured again on the card's own seed and prompts."""
    card = json.loads((zoo.ZOO_DIR / name / "card.json").read_text())
    spec = zoo.ZOO[name]
    task = zoo.build._eval_task(spec, seed=card["accuracy"]["task_seed"])
    acc = evaluate(load_model(f"zoo:{name}"), task, split="test")
    assert acc == pytest.approx(card["accuracy"]["first_token_accuracy"], abs=1e-9)
    # the card's recipe is the one `zoo train` runs (fields added since default as they were)
    defaults = dataclasses.asdict(zoo.ZooRecipe())
    want = dataclasses.asdict(spec.recipe)
    assert {k: card["recipe"].get(k, defaults[k]) for k in want} == want


@pytest.mark.parametrize("task", ["entity_tracking", "theory_of_mind"])
def test_teachers_beat_their_students(task, fresh_tasks) -> None:
    name = task.replace("_", "-")
    t = evaluate(load_model(f"zoo:{name}-teacher"), fresh_tasks[task], split="test")
    s = evaluate(load_model(f"zoo:{name}-student"), fresh_tasks[task], split="test")
    assert t > s


@pytest.mark.unit
def test_students_are_smaller_than_teachers() -> None:
    for task in ("entity-tracking", "theory-of-mind"):
        t, s = zoo.ZOO[f"{task}-teacher"].arch, zoo.ZOO[f"{task}-student"].arch
        assert s.n_layers < t.n_layers and s.n_heads < t.n_heads and s.d_model < t.d_model


def test_continue_a_shipped_model(tmp_path, monkeypatch) -> None:
    name = _tiny_spec(monkeypatch)
    monkeypatch.setattr(zoo.build, "ZOO_DIR", tmp_path)
    first = zoo.train(name, out_dir=tmp_path / name, work_dir=tmp_path / "w1", progress=False)
    before = _weights(tmp_path / name)
    more = zoo.train(
        name,
        out_dir=tmp_path / name,
        work_dir=tmp_path / "w2",
        steps=20,
        continue_shipped=True,
        progress=False,
    )
    assert first["steps_trained"] == 12 and more["steps_trained"] == 20
    assert [h["step"] for h in more["learning_curve"]] == [4, 8, 12, 16, 20]
    # training went on from the shipped weights (the shipped file keeps the best evaluation)
    trained = torch.load(tmp_path / "w2" / "checkpoint.pt", weights_only=False)["model"]
    assert any(not torch.equal(before[k], trained[k]) for k in before)


# task seeds never used in training (the card's 12345 and five more), through the public path
# (get_task in the format on the model's card): issue 11 asks the entity-tracking teacher to be
# clearly above the 0.95 line (>= 0.97 on every seed; the teacher shipped before scored 0.954
# on seed 4), and the theory-of-mind teacher to hold 0.95 (the students' range is checked on
# the fresh seed above)
UNSEEN_SEEDS = (12345, 1, 2, 3, 4, 777)


@pytest.mark.acceptance  # 3,000 prompts per teacher: the shipped models, not the code
@pytest.mark.parametrize(
    ("name", "low", "high"),
    [("entity-tracking-teacher", 0.97, 1.0), ("theory-of-mind-teacher", zoo.TEACHER_TARGET, 1.0)],
)
def test_zoo_teachers_hold_their_targets_on_every_unseen_seed(name, low, high) -> None:
    model = load_model(f"zoo:{name}")
    accs = {
        seed: evaluate(model, get_task(zoo.ZOO[name].task, model=model, seed=seed, n_test=500))
        for seed in UNSEEN_SEEDS
    }
    assert all(low <= a <= high for a in accs.values()), accs
