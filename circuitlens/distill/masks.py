"""Per-head views: the parameter entries one attention head owns, as boolean masks.

A head's weights are its rows of W_Q, W_K, W_V (its d_head output features) and its columns of
W_O (its d_head input features), plus its slice of b_Q/b_K/b_V where the model has biases.
Where those live in the real parameters depends on the architecture (split q/k/v projections,
fused qkv, grouped K/V). We do not hand-code that: the bridge's ``W_Q[l, h]`` (and K, V, O)
are views computed from the real weights, so back-propagating ones through the views of the
chosen heads marks exactly the entries they are made of, for any architecture the bridge
supports.

Grouped-query attention (Llama-3, SmolLM2): a K/V head is shared by ``group_size`` query heads.
``kv="shared"`` trains the shared K/V head of each chosen head (its siblings' keys and values
move too); ``kv="frozen"`` trains only W_Q and W_O of the chosen heads. Without grouping each
head owns its K/V and both policies train them. :func:`trained_fraction` reports what moves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

from circuitlens.core.types import Head, Model, parse_heads
from circuitlens.models.registry import model_facts

KVPolicy = Literal["shared", "frozen"]
KV_POLICIES: tuple[str, ...] = get_args(KVPolicy)


def _view(model: Model, name: str) -> Tensor | None:
    try:
        return getattr(model, name)
    except (AttributeError, NotImplementedError):
        return None


def head_parameter_masks(
    model: Model, heads: Sequence[Head | str], kv: str = "shared", include_bias: bool = True
) -> dict[str, Tensor]:
    """Boolean masks, by parameter name, of the entries the given heads own.

    Args:
        heads: the heads to train (``"L3H5"`` strings or :class:`Head`).
        kv: ``"shared"`` or ``"frozen"``: what to do with K/V heads shared by a group.
        include_bias: include the heads' slices of b_Q/b_K/b_V where the model has them.

    Returns:
        ``{parameter name: bool tensor of the parameter's shape}`` for every parameter that
        holds at least one of the entries (other parameters stay wholly frozen).
    """
    if kv not in KV_POLICIES:
        raise ValueError(f"unknown kv policy {kv!r}; valid: {', '.join(KV_POLICIES)}")
    f = model_facts(model)
    heads = [h.check(f.n_layers, f.n_heads) for h in parse_heads(heads)]
    if not heads:
        raise ValueError("no heads given: name at least one head to train")
    train_kv = f.group_size == 1 or kv == "shared"
    names = ["W_Q", "W_O"] + (["W_K", "W_V"] if train_kv else [])
    if include_bias:
        names += ["b_Q"] + (["b_K", "b_V"] if train_kv else [])
    params = dict(model.named_parameters())
    flags = {n: p.requires_grad for n, p in params.items()}
    for p in params.values():  # a trainer may have frozen some: the derivation needs them all
        p.requires_grad_(True)
    try:
        return _masks_by_backprop(model, heads, names, params, f.group_size)
    finally:
        for n, p in params.items():
            p.requires_grad_(flags[n])


def _masks_by_backprop(
    model: Model, heads: list[Head], names: list[str], params: dict[str, Tensor], group_size: int
) -> dict[str, Tensor]:
    with torch.enable_grad():
        total = torch.zeros(())
        for name in names:
            view = _view(model, name)
            if view is None or not view.requires_grad:
                continue
            for h in heads:
                idx = h.head // group_size if name[-1] in "KV" else h.head
                total = total + view[h.layer, idx].sum()
        grads = torch.autograd.grad(total, list(params.values()), allow_unused=True)
    return {
        n: g != 0
        for n, g in zip(params, grads, strict=True)
        if g is not None and bool((g != 0).any())
    }


@dataclass(frozen=True)
class TrainedFraction:
    """What a set of masks trains.

    Attributes:
        heads: heads chosen for training.
        heads_touched: heads whose parameters change (with shared K/V: their group siblings).
        total_heads: every head of the model.
        params: parameter entries trained; total_params: all parameter entries.
    """

    heads: int
    heads_touched: int
    total_heads: int
    params: int
    total_params: int

    @property
    def head_fraction(self) -> float:
        return self.heads / self.total_heads

    @property
    def param_fraction(self) -> float:
        return self.params / self.total_params


def trained_fraction(
    model: Model, heads: Sequence[Head | str], masks: dict[str, Tensor], kv: str = "shared"
) -> TrainedFraction:
    """Fractions of heads and parameter entries that ``masks`` trains."""
    f = model_facts(model)
    heads = parse_heads(heads)
    touched = set(heads)
    if kv == "shared" and f.group_size > 1:
        for h in heads:
            g0 = (h.head // f.group_size) * f.group_size
            touched |= {Head(h.layer, g) for g in range(g0, g0 + f.group_size)}
    return TrainedFraction(
        heads=len(set(heads)),
        heads_touched=len(touched),
        total_heads=f.n_total_heads,
        params=int(sum(int(m.sum()) for m in masks.values())),
        total_params=sum(p.numel() for p in model.parameters()),
    )
