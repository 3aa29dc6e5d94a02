from __future__ import annotations

import pytest
import torch
import transformer_lens.patching as tlp

from circuitlens import get_task, load_model, make_metric
from circuitlens.circuits import PatchingConfig, activation_patch
from circuitlens.core.types import Head


@pytest.fixture(scope="module")
def setup(make_llama_dir):
    model = load_model(make_llama_dir(seed=4, n_kv_heads=4))  # no K/V grouping: TL indexes
    batch = get_task("entity_tracking", n_boxes=2, seed=0, n_test=6).batch(model, "test")
    return model, batch  # K/V heads by query head


REFERENCE = {
    ("z", False): tlp.get_act_patch_attn_head_out_all_pos,
    ("q", False): tlp.get_act_patch_attn_head_q_all_pos,
    ("k", False): tlp.get_act_patch_attn_head_k_all_pos,
    ("v", False): tlp.get_act_patch_attn_head_v_all_pos,
    ("pattern", False): tlp.get_act_patch_attn_head_pattern_all_pos,
    ("z", True): tlp.get_act_patch_attn_head_out_by_pos,
    ("pattern", True): tlp.get_act_patch_attn_head_pattern_by_pos,
}


@pytest.mark.parametrize(("component", "per_position"), list(REFERENCE))
def test_equals_transformer_lens(setup, component, per_position) -> None:
    model, batch = setup
    metric = make_metric("logit_diff", batch)
    ours = activation_patch(
        model,
        batch.tokens,
        batch.corrupted_tokens,
        metric,
        component=component,
        per_position=per_position,
        patches_per_pass=5,
        progress=False,
    )
    _, cache = model.run_with_cache(batch.tokens)
    ref = REFERENCE[(component, per_position)](model, batch.corrupted_tokens, cache, metric)
    if per_position and component == "z":
        ref = ref.permute(0, 2, 1)  # TL: [layer, pos, head]; ours: [layer, head, pos]
    torch.testing.assert_close(ours.scores, ref.float().cpu(), atol=1e-5, rtol=1e-5)


def test_invariants_and_errors(setup, unchecked) -> None:
    model, batch = setup
    metric = make_metric("prob", batch)
    same = activation_patch(model, batch.tokens, batch.tokens, metric, progress=False)
    # patching clean into clean changes nothing
    torch.testing.assert_close(same.scores, torch.full_like(same.scores, same.clean_score))
    assert same.to_frame().shape == (8, 4)
    with unchecked(), pytest.raises(ValueError, match="same shape"):
        activation_patch(model, batch.tokens, batch.tokens[:, :-1], metric)
    with pytest.raises(ValueError, match="valid: z, q, k, v, pattern"):
        activation_patch(model, batch.tokens, batch.tokens, metric, component="mlp")
    before = model(batch.tokens)

    def broken(logits):
        raise RuntimeError("metric failed")

    with pytest.raises(RuntimeError, match="metric failed"):
        activation_patch(model, batch.tokens, batch.corrupted_tokens, broken, progress=False)
    torch.testing.assert_close(model(batch.tokens), before)  # no hook outlived the failure


def test_attribution_patching_is_the_first_order_estimate(setup) -> None:
    from circuitlens.circuits import atp_rank_correlation, attribution_patch

    model, batch = setup
    metric = make_metric("logit_diff", batch)
    atp = attribution_patch(model, batch.tokens, batch.corrupted_tokens, metric)
    exact = activation_patch(model, batch.tokens, batch.corrupted_tokens, metric, progress=False)
    assert atp.scores.shape == exact.scores.shape
    assert atp.corrupted_score == pytest.approx(exact.corrupted_score, abs=1e-5)
    # a hand check of one head: the estimate is grad . (clean z - corrupted z)
    _, clean_cache = model.run_with_cache(batch.tokens)
    z_corr = model.run_with_cache(batch.corrupted_tokens)[1]["blocks.1.attn.hook_z"]
    leaf = z_corr.clone().requires_grad_(True)
    with model.hooks(fwd_hooks=[("blocks.1.attn.hook_z", lambda z, hook: leaf)]):
        value = metric(model(batch.corrupted_tokens))
    (grad,) = torch.autograd.grad(value, [leaf])
    want = float(value) + float(
        ((clean_cache["blocks.1.attn.hook_z"] - z_corr) * grad)[:, :, 2].sum()
    )
    assert float(atp.scores[1, 2]) == pytest.approx(want, abs=1e-4)
    assert -1 <= atp_rank_correlation(atp, exact) <= 1


def test_options_by_name_equal_the_config(setup) -> None:
    """The config's fields passed by name (alone or over a config) give the config's result,
    bit for bit; an unknown name, or an option where the config stands, is refused."""
    model, batch = setup
    args = (model, batch.tokens, batch.corrupted_tokens, make_metric("logit_diff", batch))
    config = PatchingConfig(
        component="q", per_position=True, patches_per_pass=3, heads=["L0H1", "L1H2"]
    )
    want = activation_patch(*args, config, progress=False)
    by_name = activation_patch(
        *args,
        component="q",
        per_position=True,
        patches_per_pass=3,
        heads=[Head(0, 1), "L1H2"],
        progress=False,
    )
    over = activation_patch(
        *args,
        PatchingConfig(component="q", patches_per_pass=5),
        patches_per_pass=3,
        per_position=True,
        heads=("L0H1", "L1H2"),
        progress=False,
    )
    for got in (by_name, over):
        torch.testing.assert_close(got.scores, want.scores, rtol=0, atol=0, equal_nan=True)
        assert torch.equal(got.exact, want.exact) and got.config == want.config
    assert want.config == config and int(want.exact.sum()) == 2
    valid = "valid: component, per_position, patches_per_pass, heads"
    with pytest.raises(TypeError, match=rf"unknown PatchingConfig option\(s\) per_pass; {valid}"):
        activation_patch(*args, per_pass=3)
    with pytest.raises(TypeError, match="PatchingConfig"):  # ours, or the type checker's
        activation_patch(*args, "q")  # the component where the config now stands
