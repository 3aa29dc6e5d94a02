"""Teacher and student tokenizers are compared before any work."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from circuitlens import distill_circuit, get_task, load_model
from circuitlens.cli import main
from circuitlens.tasks import TokenizerMismatchError, check_tokenizers
from circuitlens.zoo import ZooArch, build_model, build_tokenizer


def _other_tokenizer_dir(path: Path) -> Path:
    """A tiny Llama whose word-level tokenizer holds the zoo's words at other ids."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    zoo = build_tokenizer()
    spec = json.loads(zoo.backend_tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    words = sorted(vocab, key=vocab.get)
    specials, rest = words[:4], words[4:]
    spec["model"]["vocab"] = {w: i for i, w in enumerate(specials + rest[::-1])}
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    model = build_model(
        ZooArch(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_mlp=64), len(tok), 0
    )
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def other(tmp_path_factory) -> Any:
    return load_model(_other_tokenizer_dir(tmp_path_factory.mktemp("other")))


def test_same_and_different_tokenizers(make_llama_dir, other) -> None:
    a, b = load_model(make_llama_dir(seed=1)), load_model(make_llama_dir(seed=2))
    task = get_task("entity_tracking", n_boxes=3, n_test=8, n_val=8, n_train=8)
    assert check_tokenizers(a, b, task) is True
    assert check_tokenizers(a, a) is True
    assert check_tokenizers(a, other, task) is False


def test_distill_refuses_a_cross_tokenizer_pair_before_any_work(make_llama_dir, other) -> None:
    teacher = load_model(make_llama_dir(seed=1, n_layers=3))
    task = get_task("entity_tracking", n_boxes=3, n_val=16, n_test=32)
    t0 = time.time()
    with pytest.raises(TokenizerMismatchError, match="per-model batches.*share a tokenizer"):
        distill_circuit(teacher, other, task, steps=1, sweep_n=16, test_n=32, eval_every=0)
    assert time.time() - t0 < 30  # no sweep, no training
    # the advice: a student that shares the teacher's tokenizer
    student = load_model(make_llama_dir(seed=2))
    assert check_tokenizers(teacher, student, task)


def test_cli_distill_names_the_mismatch(make_llama_dir, tmp_path, capsys) -> None:
    other_dir = _other_tokenizer_dir(tmp_path / "other")
    code = main(
        [
            "distill",
            "--teacher",
            str(make_llama_dir(seed=1)),
            "--student",
            str(other_dir),
            "--task-option",
            "n_boxes=3",
            "--out",
            str(tmp_path / "out"),
            "--no-progress",
        ]
    )
    assert code == 2
    assert "do not tokenize the task alike" in capsys.readouterr().err


@pytest.mark.slow
def test_smollm2_teacher_with_a_zoo_student_is_refused_at_once(smollm2_bridge) -> None:
    """The reported case: it crashed with an IndexError after 342 s; now a named error."""
    teacher = smollm2_bridge
    student = load_model("zoo:entity-tracking-student")
    task = get_task("entity_tracking", tokenizers=[teacher, student], n_boxes=3)
    assert check_tokenizers(teacher, student, task) is False
    t0 = time.time()
    with pytest.raises(TokenizerMismatchError, match="vocabularies differ"):
        distill_circuit(teacher, student, task, steps=1, progress=False)
    assert time.time() - t0 < 10
