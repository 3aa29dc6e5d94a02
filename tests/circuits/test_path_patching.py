from __future__ import annotations

import pytest
import torch

from circuitlens import get_task, load_model
from circuitlens.circuits.path import PathPatchingConfig, path_patch
from circuitlens.core.hooks import z_name
from circuitlens.core.types import Head
from circuitlens.core.validate import ConfigError
from circuitlens.tasks.metrics import answer_prob


@pytest.fixture(scope="module")
def setup(make_llama_dir):
    model = load_model(make_llama_dir(seed=5, n_layers=3))  # 3 layers x 4 heads, 2 K/V heads
    batch = get_task("entity_tracking", n_boxes=3, seed=1, n_test=6).batch(model, "test")
    return model, batch


def _slow_path_patch(model, batch, sender: Head, receivers: list[Head], via: str, position: str):
    """One sender, written out plainly: freeze, record, patch, score."""
    layers = range(model.cfg.n_layers)
    with torch.no_grad():
        clean_logits, clean = model.run_with_cache(batch.tokens)
        _, corr = model.run_with_cache(batch.corrupted_tokens)
        p_clean = answer_prob(clean_logits, batch, reduce=False)

        def freeze(z, hook):
            layer = int(hook.name.split(".")[1])  # hook.name may be the canonical name
            out = clean[z_name(layer)].clone()
            if layer == sender.layer:
                out[:, :, sender.head] = corr[z_name(layer)][:, :, sender.head]
            return out

        hooks = [(z_name(layer), freeze) for layer in layers]
        if via == "logits":
            hooks += [
                (
                    f"blocks.{layer}.hook_mlp_out",
                    lambda x, hook, layer=layer: clean[f"blocks.{layer}.hook_mlp_out"],
                )
                for layer in layers
            ]
            logits = model.run_with_hooks(batch.tokens, fwd_hooks=hooks)
        else:
            rec = {}
            for layer in {h.layer for h in receivers}:
                hooks.append(
                    (
                        f"blocks.{layer}.attn.hook_{via}",
                        lambda x, hook, layer=layer: rec.__setitem__(layer, x.clone()),
                    )
                )
            model.run_with_hooks(batch.tokens, fwd_hooks=hooks)
            pos = batch.positions[position]
            group = model.cfg.n_heads // model.cfg.n_key_value_heads

            def patch(x, hook, layer):
                x = x.clone()
                for h in receivers:
                    if h.layer == layer:
                        i = h.head // group if via in "kv" else h.head
                        for b in range(x.shape[0]):
                            x[b, pos[b], i] = rec[layer][b, pos[b], i]
                return x

            hooks = [
                (
                    f"blocks.{layer}.attn.hook_{via}",
                    lambda x, hook, layer=layer: patch(x, hook, layer),
                )
                for layer in {h.layer for h in receivers}
            ]
            logits = model.run_with_hooks(batch.tokens, fwd_hooks=hooks)
        p = answer_prob(logits, batch, reduce=False)
        right = clean_logits[torch.arange(len(batch)), batch.positions["last"]].argmax(-1) == (
            batch.answer_ids
        )
        keep = right if right.any() else torch.ones_like(right)
    return float(((p - p_clean) / p_clean)[keep].mean())


CASES = [
    ("logits", [], "last"),
    ("q", ["L2H0", "L2H3"], "last"),
    ("k", ["L2H1"], "query_label"),
    ("v", ["L1H2", "L2H2"], "prev_query_label"),
]


@pytest.mark.parametrize(("via", "receivers", "position"), CASES)
def test_fast_equals_slow_reference(setup, via, receivers, position) -> None:
    model, batch = setup
    senders = [Head(layer, h) for layer in range(2) for h in range(4)]
    fast = path_patch(
        model,
        batch,
        senders,
        receivers,
        via=via,
        position=position,
        senders_per_pass=3,
        progress=False,
    )
    recv = [Head.parse(r) for r in receivers]
    for s, score in zip(senders, fast.scores.tolist(), strict=True):
        assert score == pytest.approx(
            _slow_path_patch(model, batch, s, recv, via, position), abs=1e-5
        ), str(s)
    assert len(fast.top(3)) == 3 and fast.to_frame().shape == (8, 2)


def test_no_difference_no_effect(setup) -> None:
    model, batch = setup
    same = batch[:]
    same.corrupted_tokens = batch.tokens
    res = path_patch(model, same, ["L0H0", "L1H1"], ["L2H0"], via="q", progress=False)
    torch.testing.assert_close(res.scores, torch.zeros(2), atol=1e-6, rtol=0)


def test_bad_input(setup) -> None:
    model, batch = setup
    with pytest.raises(ValueError, match="no sender"):
        path_patch(model, batch, [], ["L2H0"])
    with pytest.raises(ValueError, match="no receiver"):
        path_patch(model, batch, ["L0H0"], [], via="q")
    with pytest.raises(ValueError, match="outside the model"):
        path_patch(model, batch, ["L0H9"], ["L2H0"])
    with pytest.raises(ValueError, match="not defined by this task"):
        path_patch(model, batch, ["L0H0"], ["L2H0"], position="query_character")
    with pytest.raises(ValueError, match="valid: q, k, v, logits"):
        path_patch(model, batch, ["L0H0"], ["L2H0"], via="o")


def test_options_by_name_equal_the_config(setup) -> None:
    """The config's fields passed by name (alone or over a config) give the config's scores,
    bit for bit; an unknown name, or an option where the config stands, is refused."""
    model, batch = setup
    senders, receivers = ["L0H0", "L0H3", "L1H1"], ["L2H1"]
    config = PathPatchingConfig(via="k", position="query_label", senders_per_pass=2)
    want = path_patch(model, batch, senders, receivers, config, progress=False)
    by_name = path_patch(
        model,
        batch,
        senders,
        receivers,
        via="k",
        position="query_label",
        senders_per_pass=2,
        progress=False,
    )
    over = path_patch(
        model,
        batch,
        senders,
        receivers,
        PathPatchingConfig(via="k", senders_per_pass=2),
        position="query_label",
        progress=False,
    )
    for got in (by_name, over):
        assert torch.equal(got.scores, want.scores)
        assert (got.via, got.position) == (want.via, want.position) == ("k", "query_label")
    valid = "valid: via, position, senders_per_pass"
    with pytest.raises(TypeError, match=rf"unknown PathPatchingConfig option\(s\) layer; {valid}"):
        path_patch(model, batch, senders, receivers, layer=2)
    with pytest.raises(TypeError, match="PathPatchingConfig"):  # ours, or the type checker's
        path_patch(model, batch, senders, receivers, "k")  # via where the config now stands
    with pytest.raises(ConfigError, match="senders_per_pass must be >= 1"):
        PathPatchingConfig(senders_per_pass=0)
