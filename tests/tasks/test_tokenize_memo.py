"""Tokenization is remembered per tokenizer: the same batch as a plain, per-prompt reading of
the tokenizer's output, and a repeated prompt is not tokenized again."""

from __future__ import annotations

import torch

from circuitlens import get_task
from circuitlens.models.zoo import build_tokenizer
from circuitlens.tasks import tokenize_prompts


class _Counting:
    """A tokenizer that counts its calls on text and delegates everything else."""

    def __init__(self, tok) -> None:
        self.tok, self.calls = tok, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.tok(*args, **kwargs)

    def __len__(self) -> int:
        return len(self.tok)

    def __getattr__(self, name):
        return getattr(self.tok, name)


def _by_hand(tok, prompts) -> tuple[torch.Tensor, dict[str, list[int]]]:
    """Reference: each prompt read alone, the first token whose offsets hold a span's start."""
    rows, positions = [], {}
    for p in prompts:
        enc = tok(p.text, add_special_tokens=True, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
        rows.append(ids)
        positions.setdefault("last", []).append(len(ids) - 1)
        for name, (start, _) in p.spans.items():
            i = next(i for i, (a, b) in enumerate(offsets) if a <= start < b)
            positions.setdefault(name, []).append(i)
    width = max(map(len, rows))
    pad = tok.pad_token_id
    return torch.tensor([r + [pad] * (width - len(r)) for r in rows]), positions


def test_batches_equal_a_per_prompt_reading_and_repeats_are_not_retokenized() -> None:
    tok = _Counting(build_tokenizer())
    task = get_task("entity_tracking", n_val=12, n_test=12)
    prompts = task.split("val")
    first = tokenize_prompts(tok, prompts)
    tokens, positions = _by_hand(tok.tok, prompts)
    assert torch.equal(first.tokens, tokens)
    assert {k: v.tolist() for k, v in first.positions.items()} == positions
    calls = tok.calls
    assert calls > 0
    again = tokenize_prompts(tok, prompts)
    assert tok.calls == calls  # every text remembered
    assert torch.equal(again.tokens, first.tokens)
    assert torch.equal(again.corrupted_tokens, first.corrupted_tokens)
    tokenize_prompts(tok, task.split("test"))  # new prompts: read
    assert tok.calls > calls
