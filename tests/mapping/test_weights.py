"""Weight-space correspondence (circuitlens.mapping.weights) on tiny random Llamas: the
identity on a model against itself, a known permutation on a relabelled copy, the low-rank
shortcut against the explicit d_model x d_model matrices, the norm fold, the refusal."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import circuitlens as cl
from circuitlens.ablation.config import AblationConfig
from circuitlens.ablation.result import AblationResult
from circuitlens.core.types import Head
from circuitlens.mapping.features import gather_more, head_weights, norm_scale
from circuitlens.mapping.known_answer import permuted_copy, recovery
from circuitlens.mapping.map import correspond_features
from circuitlens.mapping.methods import CorrespondenceFeatures
from circuitlens.mapping.weights import (
    BasisMismatchError,
    circuit_cosines,
    explicit_cosines,
    lowrank_inner,
)

METHODS = ("weights-ov-qk", "weights-ov", "weights-qk")


def _sweep(n_layers: int, n_heads: int) -> AblationResult:
    """A student sweep whose impacts order the heads (layer, head) first to last."""
    d = torch.linspace(1.0, 0.0, n_layers * n_heads).reshape(n_layers, n_heads)
    return AblationResult(1.0, 1.0, 1.0 - d, d, "m", AblationConfig())


def _features(student: Any, teacher: Any) -> CorrespondenceFeatures:
    f = cl.model_facts(student)
    more = gather_more(student, teacher, None, ("weights",))
    return CorrespondenceFeatures(_sweep(f.n_layers, f.n_heads), more=more)


def _heads(model: Any) -> list[Head]:
    f = cl.model_facts(model)
    return [Head(layer, h) for layer in range(f.n_layers) for h in range(f.n_heads)]


@pytest.mark.parametrize("one_to_one", [False, True])
def test_a_model_against_itself_maps_every_head_to_itself(
    tiny_bridge: Any, one_to_one: bool
) -> None:
    features = _features(tiny_bridge, tiny_bridge)
    identity = {h: h for h in _heads(tiny_bridge)}
    for method in METHODS:
        hm = correspond_features(features, method=method, budget=1.0, one_to_one=one_to_one)
        assert hm.config["method"] == method and len(hm) == len(identity)
        assert recovery(hm, identity) == 1.0, method
        assert max(hm.distances) < 1e-5  # cosine 1


@pytest.mark.parametrize("groups", [False, True])
def test_a_permuted_copy_is_mapped_by_its_permutation(tiny_bridge: Any, groups: bool) -> None:
    copy, perm = permuted_copy(tiny_bridge, seed=1, groups=groups)
    assert any(h != perm[h] for h in perm)
    features = _features(tiny_bridge, copy)
    for method in METHODS:
        for one_to_one in (False, True):
            hm = correspond_features(features, method=method, budget=1.0, one_to_one=one_to_one)
            assert recovery(hm, perm) == 1.0, (method, one_to_one)


def test_the_trace_shortcut_equals_the_explicit_matrices(
    make_llama_dir: Callable[..., Path],
) -> None:
    a = cl.load_model(make_llama_dir(seed=0), dtype=torch.float64)
    b = cl.load_model(make_llama_dir(seed=1), dtype=torch.float64)
    wa, wb = head_weights(a), head_weights(b)
    heads = _heads(a)
    fast = circuit_cosines(wa, wb, heads, heads, dtype=torch.float64)
    slow = explicit_cosines(wa, wb, heads, heads)
    for name in ("ov", "qk"):
        torch.testing.assert_close(fast[name], slow[name], atol=1e-10, rtol=0)
        assert float(fast[name].abs().max()) > 0.05  # not trivially zero
    # the inner products themselves, not only their cosines
    va, oa = wa.w_v[0].double(), wa.w_o[0].double()
    vb, ob = wb.w_v[1].double(), wb.w_o[1].double()
    want = torch.stack([torch.stack([((va[i] @ oa[i]) * (vb[j] @ ob[j])).sum() for j in range(4)])
                        for i in range(4)])  # fmt: skip
    torch.testing.assert_close(lowrank_inner(va, oa, vb, ob, chunk=3), want, atol=1e-10, rtol=0)


def test_the_input_norm_is_folded_into_q_k_v(tiny_bridge: Any) -> None:
    hf = tiny_bridge.original_model
    with torch.no_grad():
        norm = hf.model.layers[1].input_layernorm
        norm.weight.copy_(torch.linspace(0.5, 2.0, norm.weight.numel()))
    try:
        scale = norm_scale(tiny_bridge.blocks[1].ln1, tiny_bridge.cfg.d_model)
        torch.testing.assert_close(scale, norm.weight.detach().float(), atol=1e-4, rtol=1e-4)
        folded, raw = head_weights(tiny_bridge), head_weights(tiny_bridge, fold_norm=False)
        assert folded.folded_norm and not raw.folded_norm
        torch.testing.assert_close(folded.w_q[1], raw.w_q[1] * scale[None, :, None])
        torch.testing.assert_close(folded.w_o, raw.w_o)  # W_O writes, it reads no norm
        # grouped K/V: each query head carries its group's K/V head
        size = raw.w_q.shape[1] // tiny_bridge.W_K.shape[1]
        torch.testing.assert_close(raw.w_k[0, size], tiny_bridge.W_K[0, 1].detach().float())
    finally:
        with torch.no_grad():
            norm.weight.fill_(1.0)


def test_models_of_another_d_model_are_refused_by_name(
    tiny_bridge: Any, make_llama_dir: Callable[..., Path]
) -> None:
    wide = cl.load_model(make_llama_dir(d_model=48, n_heads=4, n_kv_heads=2))
    features = _features(tiny_bridge, wide)
    for method in METHODS:
        with pytest.raises(BasisMismatchError, match="d_model is 32 and the teacher's 48"):
            correspond_features(features, method=method, budget=1.0)


@pytest.mark.integration
def test_correspond_gathers_the_weights_itself() -> None:
    """End to end: ``correspond`` measures what the method needs (the student's sweep to choose
    heads, the weights) and maps the zoo teacher onto its relabelled copy."""
    teacher = cl.load_model("zoo:entity-tracking-teacher")
    task = cl.get_task("entity_tracking", model=teacher)
    copy, perm = permuted_copy(teacher, seed=2)
    hm = cl.correspond(teacher, copy, task, method="weights-ov-qk", budget=0.25, n=8, n_boot=10)
    assert len(hm) == 8 and hm.config["method"] == "weights-ov-qk"
    assert recovery(hm, perm) == 1.0
