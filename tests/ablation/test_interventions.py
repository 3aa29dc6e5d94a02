"""The intervention engine against plain ``run_with_hooks`` (one hook per head, the whole
model), copies batched against one at a time, and a run from a layer against the whole model."""

from __future__ import annotations

import pytest
import torch

from circuitlens import get_task
from circuitlens.ablation.interventions import (
    Mean,
    Patch,
    Replacement,
    Scale,
    Zero,
    replaced,
    run_replaced,
    sweep,
)
from circuitlens.ablation.means import compute_means
from circuitlens.core.hooks import act_name, resid_pre_name
from circuitlens.core.types import Head


@pytest.fixture(scope="module")
def setup(tiny_bridge):
    """The tiny model (2 layers, 4 query heads, 2 K/V heads), prompts, and the values to put in."""
    batch = get_task("entity_tracking", n_boxes=3, seed=0, n_test=6).batch(tiny_bridge, "test")
    with torch.no_grad():
        _, corrupted = tiny_bridge.run_with_cache(batch.corrupted_tokens)
        _, clean = tiny_bridge.run_with_cache(batch.tokens)
    means = compute_means(tiny_bridge, batch.ablation_tokens)
    values = {
        "patch": Patch(corrupted),
        "mean": Mean(means),
        "zero": Zero(),
        "scale": Scale(-2.5),
    }
    return tiny_bridge, batch, values, clean


def _slow(value, site: str, layer: int, head: int | None, position=None):
    """The obvious hook for one head (or the whole activation) of one layer."""

    def hook(act, hook):
        act = act.clone()
        for b in range(act.shape[0]):
            p = int(position[b]) if isinstance(position, torch.Tensor) else position
            if site == "pattern":  # [batch, head_index, dest, src]
                key = (b, head) if p is None else (b, head, p)
            elif head is None:  # the whole activation
                key = (b,) if p is None else (b, p)
            else:  # [batch, pos, head_index, ...]
                key = (b, slice(None), head) if p is None else (b, p, head)
            if isinstance(value, Patch):
                new = value.cache[act_name(site, layer)][key]
            elif isinstance(value, Mean):
                new = value.means[layer, : act.shape[1]][key[1:]]  # [pos, ...]: no batch axis
            elif isinstance(value, Zero):
                new = torch.zeros_like(act[key])
            else:
                new = act[key] * value.factor
            act[key] = new
        return act

    return hook


def _full_logits(model, tokens, copies, **kwargs):
    (logits,) = run_replaced(model, tokens, copies, lambda x: x, **kwargs)
    return logits


KINDS = ["patch", "mean", "zero", "scale"]
CASES = [  # site, head (None: the whole layer), position
    ("z", 2, None),
    ("z", 1, 5),
    ("z", None, "per prompt"),
    ("q", 3, None),
    ("k", 1, None),  # a K/V head: the tiny model has 2 for its 4 query heads
    ("v", 0, "per prompt"),
    ("pattern", 2, None),
    ("pattern", 0, 4),
    ("mlp_out", None, None),
]


@pytest.mark.parametrize(
    ("kind", "site", "head", "position"),
    [(kind, *case) for kind in KINDS for case in CASES if kind != "mean" or case[0] == "z"],
)  # the means are of z
def test_each_replacement_equals_a_plain_hook(setup, kind, site, head, position) -> None:
    model, batch, values, _ = setup
    value = values[kind]
    if position == "per prompt":
        position = batch.positions["query_label"]
    layer = 1
    r = Replacement(
        value,
        [Head(layer, head)] if head is not None else [],
        layers=[layer] if head is None else [],
        site=site,
        position=position,
    )
    with torch.no_grad():
        ours = _full_logits(model, batch.tokens, [[r]])
        slow = model.run_with_hooks(
            batch.tokens,
            fwd_hooks=[(act_name(site, layer), _slow(value, site, layer, head, position))],
        )
        clean = model(batch.tokens)
    assert not torch.allclose(slow, clean, atol=1e-4), "the replacement changes nothing"
    torch.testing.assert_close(ours, slow, atol=0, rtol=0)


def test_heads_of_several_layers_in_order(setup) -> None:
    """One copy, several replacements: applied in order, at every layer they name."""
    model, batch, values, _ = setup
    copy = [
        Replacement(values["patch"], layers=[0, 1]),  # every head of both layers
        Replacement(values["zero"], ["L0H1", "L1H3"]),  # then these two zeroed
        Replacement(values["scale"], ["L1H3", "L1H0"]),  # zero scaled stays zero
    ]
    hooks = [
        (act_name("z", 0), _slow(values["patch"], "z", 0, None)),
        (act_name("z", 1), _slow(values["patch"], "z", 1, None)),
        (act_name("z", 0), _slow(values["zero"], "z", 0, 1)),
        (act_name("z", 1), _slow(values["zero"], "z", 1, 3)),
        (act_name("z", 1), _slow(values["scale"], "z", 1, 3)),
        (act_name("z", 1), _slow(values["scale"], "z", 1, 0)),
    ]
    with torch.no_grad():
        ours = _full_logits(model, batch.tokens, [copy])
        slow = model.run_with_hooks(batch.tokens, fwd_hooks=hooks)
    torch.testing.assert_close(ours, slow, atol=0, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_copies_in_one_pass_equal_one_at_a_time(setup, kind) -> None:
    """All heads of a layer, each in its own copy: batched equals one copy per pass."""
    model, batch, values, clean = setup
    resid = {layer: clean[resid_pre_name(layer)] for layer in range(2)}
    copies = [[Replacement(values[kind], [Head(layer, h)])] for layer in range(2) for h in range(4)]
    last = batch.positions["last"]

    def metric(logits):
        return logits.log_softmax(-1)

    one = sweep(model, resid, copies, metric, per_pass=1, positions=last, progress=None)
    batched = sweep(model, resid, copies, metric, per_pass=4, positions=last, progress=None)
    torch.testing.assert_close(torch.stack(batched), torch.stack(one), atol=1e-6, rtol=0)
    differ = [not torch.allclose(one[0], x, atol=1e-4) for x in one[1:]]
    assert all(differ), "copies must differ from each other: each ablates its own head"
    # a pass of several copies is several passes of one
    several = run_replaced(model, batch.tokens, copies[4:7], metric, last)
    for copy, got in zip(copies[4:7], several, strict=True):
        (alone,) = run_replaced(model, batch.tokens, [copy], metric, last)
        torch.testing.assert_close(got, alone, atol=1e-6, rtol=0)


def test_from_a_layer_equals_the_whole_model(setup) -> None:
    model, batch, values, clean = setup
    copies = [
        [Replacement(values["mean"], ["L1H2"])],
        [Replacement(values["patch"], ["L1H0", "L1H1"]), Replacement(values["scale"], ["L1H0"])],
    ]
    last = batch.positions["last"]

    def metric(logits):
        return logits

    whole = run_replaced(model, batch.tokens, copies, metric, last)
    start = run_replaced(model, clean[resid_pre_name(1)], copies, metric, last, layer=1)
    for a, b in zip(start, whole, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    full = run_replaced(model, batch.tokens, copies, metric)  # no positions: every position
    for a, b in zip(whole, full, strict=True):
        torch.testing.assert_close(a, b[torch.arange(len(batch)), last], atol=1e-5, rtol=1e-5)


def test_errors_and_cleanup(setup) -> None:
    model, batch, values, clean = setup
    with pytest.raises(ValueError, match="no head axis"):
        Replacement(Zero(), ["L0H0"], site="mlp_out")
    with pytest.raises(ValueError, match="per position"):
        Replacement(values["mean"], ["L0H0"], site="pattern")
    with pytest.raises(ValueError, match="skips the earlier blocks"):
        run_replaced(
            model, clean[resid_pre_name(1)], [[Replacement(Zero(), ["L0H0"])]], len, layer=1
        )
    with pytest.raises(ValueError, match="replaces nothing"):
        sweep(model, {}, [[]], len, progress=None)
    with pytest.raises(ValueError, match="cannot hold 2 equal copies"):
        with replaced(model, [[Replacement(Zero(), ["L0H0"])]] * 2):
            model(batch.tokens[:5])
    before = model(batch.tokens)
    with pytest.raises(RuntimeError, match="boom"):
        with replaced(model, [[Replacement(Zero(), ["L0H0"])]]):
            raise RuntimeError("boom")
    torch.testing.assert_close(model(batch.tokens), before, atol=0, rtol=0)
