"""Logits computed at the scored positions only equal the full computation's."""

from __future__ import annotations

import pytest
import torch

from circuitlens import get_task
from circuitlens.circuits.activation import activation_patch
from circuitlens.core.hooks import resid_pre_name, run_from_layer
from circuitlens.tasks import evaluate, make_metric
from circuitlens.tasks.metrics import METRICS, accepts_logits_to_keep, logits_at, tokenize_prompts


@pytest.fixture(scope="module")
def task():
    return get_task("entity_tracking", n_boxes=3, seed=0, n_test=24)


def test_the_bridge_keeps_logits_at_chosen_positions(tiny_bridge) -> None:
    assert accepts_logits_to_keep(tiny_bridge)


def test_logits_at_equals_the_full_logits(tiny_bridge) -> None:
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(3, 40, (6, 9), generator=gen)
    positions = torch.tensor([8, 3, 8, 0, 5, 3])  # repeated and unsorted
    with torch.no_grad():
        full = tiny_bridge(tokens)
        part = logits_at(tiny_bridge, tokens, positions)
    assert part.shape == (6, full.shape[-1])
    torch.testing.assert_close(part, full[torch.arange(6), positions], atol=1e-5, rtol=1e-5)


def test_run_from_layer_at_positions_equals_the_full_logits(tiny_bridge, task) -> None:
    batch = task.batch(tiny_bridge, "test")
    last = batch.positions["last"]
    with torch.no_grad():
        _, cache = tiny_bridge.run_with_cache(batch.tokens)
        resid = cache[resid_pre_name(1)]
        full = run_from_layer(tiny_bridge, resid, 1)
        part = run_from_layer(tiny_bridge, resid, 1, last)
    torch.testing.assert_close(part, full[torch.arange(len(batch)), last], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("metric", sorted(METRICS))
def test_evaluate_equals_the_full_computation(tiny_bridge, metric) -> None:
    task = get_task("entity_tracking", n_boxes=3, seed=1, n_test=16)
    batch = tokenize_prompts(tiny_bridge, task.split("test"))
    with torch.no_grad():
        want = float(METRICS[metric](tiny_bridge(batch.tokens), batch))
    assert evaluate(tiny_bridge, task, "test", metric=metric) == pytest.approx(want, abs=1e-5)


def test_activation_patch_at_positions_equals_full_logits(tiny_bridge, task) -> None:
    batch = task.batch(tiny_bridge, "test")
    metric = make_metric("logit_diff", batch)
    full = activation_patch(
        tiny_bridge, batch.tokens, batch.corrupted_tokens, metric, progress=False
    )
    part = activation_patch(
        tiny_bridge,
        batch.tokens,
        batch.corrupted_tokens,
        metric,
        progress=False,
        positions=batch.positions["last"],
    )
    torch.testing.assert_close(part.scores, full.scores, atol=1e-5, rtol=1e-5)
    assert part.clean_score == pytest.approx(full.clean_score, abs=1e-5)
    assert part.corrupted_score == pytest.approx(full.corrupted_score, abs=1e-5)
