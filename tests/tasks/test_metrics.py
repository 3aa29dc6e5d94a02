from __future__ import annotations

import math

import pytest
import torch

from circuitlens import Prompt, evaluate, get_task, make_metric
from circuitlens.tasks import PromptBatch
from circuitlens.tasks.metrics import accuracy, answer_prob, logit_diff


def _batch() -> PromptBatch:
    # two prompts of length 3 and 2 (right-padded), vocabulary of 4
    return PromptBatch(
        tokens=torch.zeros(2, 3, dtype=torch.long),
        answer_ids=torch.tensor([1, 2]),
        wrong_ids=torch.tensor([[0, 3], [3, -1]]),
        positions={"last": torch.tensor([2, 1])},
        prompts=[Prompt("a", " b"), Prompt("c", " d")],
    )


def _logits() -> torch.Tensor:
    logits = torch.full((2, 3, 4), -100.0)
    logits[0, 2] = torch.tensor([0.0, 2.0, 1.0, -1.0])  # answer 1 is the argmax
    logits[1, 1] = torch.tensor([0.0, 3.0, 1.0, 1.0])  # answer 2 is not
    logits[1, 2] = torch.tensor([0.0, 0.0, 9.0, 0.0])  # padding: must be ignored
    return logits


def test_metrics_hand_computed() -> None:
    b, logits = _batch(), _logits()
    assert accuracy(logits, b, reduce=False).tolist() == [1.0, 0.0]
    assert accuracy(logits, b).item() == 0.5
    p0 = math.exp(2) / (1 + math.exp(2) + math.exp(1) + math.exp(-1))
    p1 = math.exp(1) / (1 + math.exp(3) + 2 * math.exp(1))
    torch.testing.assert_close(answer_prob(logits, b, reduce=False), torch.tensor([p0, p1]))
    # prompt 0: 2 - mean(0, -1) = 2.5; prompt 1: 1 - mean(1) = 0 (the -1 pad is ignored)
    torch.testing.assert_close(logit_diff(logits, b, reduce=False), torch.tensor([2.5, 0.0]))
    assert make_metric("logit_diff", b)(logits).item() == pytest.approx(1.25)
    # logits already at the last position ([batch, d_vocab]) give the same answers
    last = logits[torch.arange(2), b.positions["last"]]
    assert make_metric("accuracy", b)(last).item() == 0.5


def test_unknown_metric_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match="valid metrics: accuracy, prob, logit_diff"):
        make_metric("f1", _batch())


def test_evaluate_matches_metric_on_one_batch(tiny_bridge) -> None:
    task = get_task("entity_tracking", n_boxes=3, n_test=70)
    batch = task.batch(tiny_bridge, "test")
    with torch.no_grad():
        logits = tiny_bridge(batch.tokens)
    for metric in ("accuracy", "prob", "logit_diff"):
        want = make_metric(metric, batch)(logits).item()
        # batch_size 32 splits the 70 prompts unevenly: the mean must still be per prompt
        got = evaluate(tiny_bridge, task, split="test", metric=metric, batch_size=32)
        assert got == pytest.approx(want, abs=1e-5)
