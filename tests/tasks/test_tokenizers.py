"""Teacher and student tokenizers are compared before any work."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from circuitlens import TrainRun, distill_circuit, get_task, load_model
from circuitlens.cli import main
from circuitlens.models.zoo import ZooArch, build_model, build_tokenizer
from circuitlens.tasks import (
    LabelTranslator,
    TokenizerMismatchError,
    check_tokenizers,
    require_compatible_tokenizers,
    tokenize_prompts,
)


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


def test_distill_refuses_what_cannot_cross_tokenizers_before_any_work(
    make_llama_dir, other
) -> None:
    teacher = load_model(make_llama_dir(seed=1, n_layers=3))
    task = get_task("entity_tracking", n_boxes=3, n_val=16, n_test=32)
    t0 = time.time()
    with pytest.raises(TokenizerMismatchError, match="kd condition.*drop it"):
        distill_circuit(
            teacher, other, task, steps=1, sweep_n=16, test_n=32, eval_every=0, condition="kd"
        )
    with pytest.raises(TokenizerMismatchError, match='positions="tokens"'):
        distill_circuit(
            teacher, other, task, steps=1, sweep_n=16, test_n=32, eval_every=0, positions="tokens"
        )
    assert time.time() - t0 < 30  # no sweep, no training


def test_a_cross_tokenizer_pair_distills(make_llama_dir, other) -> None:
    """The other tokenizer holds the same words at other ids: every step of the method runs,
    each model on its own tokens, and the teacher's labels cross by their text."""
    teacher = load_model(make_llama_dir(seed=1, n_layers=3))
    task = get_task("entity_tracking", n_boxes=3, n_val=16, n_test=32, tokenizers=[teacher, other])
    assert require_compatible_tokenizers(teacher, other, task, ["ce+align"]) is False
    result = distill_circuit(
        teacher, other, task, steps=2, sweep_n=16, test_n=32, eval_every=0, batch_size=8
    )
    assert result.head_map.pairs and len(result.history) == 2


def test_labels_cross_by_text(make_llama_dir, other) -> None:
    teacher = load_model(make_llama_dir(seed=1))
    translate = LabelTranslator(teacher, other)
    words = [" apple", " Box", " contains"]
    t_ids = torch.tensor([teacher.tokenizer.encode(w, add_special_tokens=False)[0] for w in words])
    s_ids = torch.tensor([other.tokenizer.encode(w, add_special_tokens=False)[0] for w in words])
    assert not torch.equal(t_ids, s_ids)  # other ids...
    assert torch.equal(translate(t_ids), s_ids)  # ...for the same text


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
            "--condition",
            "kd",
            "--out",
            str(tmp_path / "out"),
            "--no-progress",
        ]
    )
    assert code == 2
    assert "tokenize differently" in capsys.readouterr().err


@pytest.mark.acceptance
def test_smollm2_teacher_with_a_zoo_student(smollm2_bridge) -> None:
    """The reported case crashed with an IndexError after 342 s. Now the pair is a
    cross-tokenizer pair: positions land on the same words in both, labels cross by text,
    and what cannot cross (kd) is refused at once."""
    teacher = smollm2_bridge
    student = load_model("zoo:entity-tracking-student")
    task = get_task("entity_tracking", tokenizers=[teacher, student], n_boxes=3)
    assert check_tokenizers(teacher, student, task) is False
    prompts = task.split("test", 16)
    tb, sb = tokenize_prompts(teacher, prompts), tokenize_prompts(student, prompts)
    for name, pos in tb.positions.items():
        for i in range(len(prompts)):
            a = teacher.tokenizer.decode([int(tb.tokens[i, pos[i]])]).strip()
            b = student.tokenizer.decode([int(sb.tokens[i, sb.positions[name][i]])]).strip()
            assert a == b, (name, a, b)
    translate = LabelTranslator(teacher, student)
    assert torch.equal(translate(tb.answer_ids), sb.answer_ids)
    t0 = time.time()
    with pytest.raises(TokenizerMismatchError, match="vocabularies differ.*kd"):
        distill_circuit(
            teacher, student, task, steps=1, run=TrainRun(progress=False), condition="kd"
        )
    assert time.time() - t0 < 10
