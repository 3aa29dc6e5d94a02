from __future__ import annotations

import tempfile

import pytest
import torch

from circuitlens import load_model
from circuitlens.core.types import Head
from circuitlens.distill.masks import head_parameter_masks, trained_fraction


def _find(masks: dict, suffix: str) -> torch.Tensor:
    hits = [m for n, m in masks.items() if n.endswith(suffix)]
    assert len(hits) == 1, (suffix, list(masks))
    return hits[0]


def _param(model, suffix: str) -> torch.Tensor:
    hits = [p for n, p in model.named_parameters() if n.endswith(suffix)]
    assert len(hits) == 1, suffix
    return hits[0]


def test_llama_masks_equal_hand_written_slices(make_llama_dir) -> None:
    # 2 layers, 4 query heads, 2 K/V heads (groups of 2), d_head 8, d_model 32
    model = load_model(make_llama_dir())
    masks = head_parameter_masks(model, ["L1H3"], kv="shared")
    q = torch.zeros(32, 32, dtype=torch.bool)
    q[24:32] = True  # q_proj.weight is [n_heads * d_head, d_model]: head 3's rows
    kv = torch.zeros(16, 32, dtype=torch.bool)
    kv[8:16] = True  # K/V head 1 (= 3 // 2)
    o = torch.zeros(32, 32, dtype=torch.bool)
    o[:, 24:32] = True  # o_proj.weight is [d_model, n_heads * d_head]: head 3's columns
    layer = "layers.1._original_component.self_attn._original_component"
    assert torch.equal(_find(masks, f"{layer}.q_proj._original_component.weight"), q)
    assert torch.equal(_find(masks, f"{layer}.k_proj._original_component.weight"), kv)
    assert torch.equal(_find(masks, f"{layer}.v_proj._original_component.weight"), kv)
    assert torch.equal(_find(masks, f"{layer}.o_proj._original_component.weight"), o)
    assert len(masks) == 4  # nothing else: no layer 0, no MLP, no norms, no embeddings
    frozen = head_parameter_masks(model, ["L1H3"], kv="frozen")
    assert len(frozen) == 2 and not any("k_proj" in n or "v_proj" in n for n in frozen)
    fr = trained_fraction(model, ["L1H3"], masks, kv="shared")
    assert (fr.heads, fr.heads_touched, fr.total_heads) == (1, 2, 8)
    assert fr.params == 8 * 32 * 4
    assert 0 < fr.param_fraction < 0.1


def test_masks_of_two_heads_are_the_union(make_llama_dir) -> None:
    model = load_model(make_llama_dir())
    a = head_parameter_masks(model, ["L0H0"])
    b = head_parameter_masks(model, [Head(1, 2)])
    both = head_parameter_masks(model, ["L0H0", "L1H2"])
    assert set(both) == set(a) | set(b)
    for n in both:
        want = a.get(n, torch.zeros_like(both[n])) | b.get(n, torch.zeros_like(both[n]))
        assert torch.equal(both[n], want)


def test_gpt2_masks_follow_the_views(zoo_tokenizer) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=len(zoo_tokenizer),
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=128,
        bos_token_id=2,
        eos_token_id=3,
    )
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as d:
        GPT2LMHeadModel(cfg).save_pretrained(d)
        zoo_tokenizer.save_pretrained(d)
        model = load_model(d)
    masks = head_parameter_masks(model, ["L0H1"])
    q_w = _param(model, "h.0._original_component.attn.q._original_component.weight")
    # hand-written: head 1's 8 features of the 32 query features, in the layout W_Q exposes
    cols = torch.zeros(32, 32, dtype=torch.bool)
    if torch.equal(model.W_Q[0, 1], q_w[:, 8:16]):
        cols[:, 8:16] = True
    else:
        assert torch.equal(model.W_Q[0, 1], q_w[8:16].T)
        cols[8:16] = True
    assert torch.equal(
        _find(masks, "h.0._original_component.attn.q._original_component.weight"), cols
    )
    bias = _find(masks, "h.0._original_component.attn.q._original_component.bias")
    assert bias.nonzero().flatten().tolist() == list(range(8, 16))
    assert not any(".h.1." in n for n in masks)


def test_bad_input(make_llama_dir) -> None:
    model = load_model(make_llama_dir())
    with pytest.raises(ValueError, match="outside the model"):
        head_parameter_masks(model, ["L9H0"])
    with pytest.raises(ValueError, match="valid: shared, frozen"):
        head_parameter_masks(model, ["L0H0"], kv="tied")
    with pytest.raises(ValueError, match="no heads"):
        head_parameter_masks(model, [])
