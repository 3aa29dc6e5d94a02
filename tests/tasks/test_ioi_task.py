"""The shipped indirect-object example task (``data/tasks/ioi.jsonl`` and its plan)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from circuitlens import get_task

ROOT = Path(__file__).resolve().parents[2]
IOI = ROOT / "data" / "tasks" / "ioi.jsonl"


def _script():
    script = ROOT / "scripts" / "make_ioi_task.py"
    spec = importlib.util.spec_from_file_location("make_ioi_task", script)
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_ioi_task"] = module
    spec.loader.exec_module(module)
    return module


def test_the_file_is_what_its_script_writes() -> None:
    lines = _script().make(120, 0)
    assert IOI.read_text() == "".join(json.dumps(x) + "\n" for x in lines)


def test_the_task_reads_with_its_plan() -> None:
    task = get_task("jsonl", path=IOI)
    assert task.position_names == ("last", "IO", "S1", "S2", "S1+1")
    assert [(s.group, s.into, s.via, s.position) for s in task.circuit_plan] == [
        ("name_movers", None, "logits", "last"),
        ("s_inhibition", "name_movers", "q", "last"),
        ("induction", "s_inhibition", "v", "S2"),
        ("previous_token", "induction", "k", "S1+1"),
    ]
    for p in task.split("test"):
        io, s = p.answer[1:], p.wrong_answers[0][1:]
        assert [p.text[a:b] for a, b in (p.spans[k] for k in ("IO", "S1", "S2"))] == [io, s, s]
        assert p.corrupted_answer == p.wrong_answers[0]
        assert p.corrupted[slice(*p.corrupted_spans["S2"])] == io


@pytest.mark.acceptance
def test_every_name_is_one_smollm2_token_where_the_spans_say() -> None:
    """For the SmolLM2 tokenizer every name is one token, and each named position is the
    token of its word (clean and corrupted); clean and corrupted are the same length."""
    from circuitlens.models.real import load_base_hf

    _, tok = load_base_hf("smollm2-135m")
    task = get_task("jsonl", path=IOI, val_fraction=0, test_fraction=1)
    batch = task.batch(tok, "test")
    assert batch.tokens.shape == batch.corrupted_tokens.shape == batch.ablation_tokens.shape
    for r, p in enumerate(batch.prompts):
        for tokens, positions, text, spans in (
            (batch.tokens, batch.positions, p.text, p.spans),
            (batch.corrupted_tokens, batch.corrupted_positions, p.corrupted, p.corrupted_spans),
        ):
            for name, (a, b) in spans.items():
                word = tok.decode([int(tokens[r, int(positions[name][r])])])
                assert word == " " + text[a:b], (name, text)
