"""Attribution patching (AtP): a first-order estimate of every head's activation-patching score
from two forward passes and one backward pass (Nanda 2023; Syed, Rager, Conmy 2023).

``score(h) = sum over examples, positions, d_head of (z_clean - z_corrupted) * d metric / d z``,
with the gradient taken on the corrupted run: the linear estimate of
``metric(corrupted with h's clean z patched in) - metric(corrupted)``. Use it to screen large
models; :func:`atp_rank_correlation` says how well it ranks heads against exact patching.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from einops import rearrange
from jaxtyping import Int
from torch import Tensor

from circuitlens.ablation.interventions import ZTaps
from circuitlens.ablation.screening import default_margin, settled, verification_order
from circuitlens.circuits.activation import (
    PatchingConfig,
    PatchingResult,
    activation_patch,
)
from circuitlens.core.hooks import hooked, z_name
from circuitlens.core.types import Head, Model
from circuitlens.models.registry import model_facts
from circuitlens.tasks.metrics import keep_positions, model_device, model_logits


def attribution_patch(
    model: Model,
    clean: Int[Tensor, "batch pos"],
    corrupted: Int[Tensor, "batch pos"],
    metric: Callable[[Tensor], Tensor],
    positions: Int[Tensor, " batch"] | None = None,
) -> PatchingResult:
    """AtP estimates of patching each head's ``z`` from clean into corrupted.

    ``positions``: the one position per prompt the metric reads; logits are then computed
    there only and ``metric`` gets ``[batch, d_vocab]`` (as in :func:`activation_patch`).

    Returns:
        :class:`PatchingResult` whose ``scores[layer, head]`` estimate the patched metric
        (``corrupted_score`` plus the first-order change), comparable with
        :func:`activation_patch` on ``component="z"``.
    """
    if clean.shape != corrupted.shape:
        raise ValueError(
            f"clean and corrupted batches must have the same shape: "
            f"{tuple(clean.shape)} vs {tuple(corrupted.shape)}"
        )
    f = model_facts(model)
    device = model_device(model)
    clean, corrupted = clean.to(device), corrupted.to(device)
    names = {z_name(layer) for layer in range(f.n_layers)}
    keep: dict[str, Any] = {}
    gather: Callable[[Tensor], Tensor] = lambda x: x  # noqa: E731
    if positions is not None:
        keep, gather = keep_positions(model, positions.to(device))
    with torch.no_grad():
        clean_logits, cache = model.run_with_cache(clean, names_filter=lambda x: x in names, **keep)
        clean_logits = gather(clean_logits)
    taps = ZTaps(f.n_layers)
    with torch.enable_grad(), hooked(model, taps.hooks):
        value = metric(gather(model_logits(model, corrupted, **keep)))
        grads = torch.autograd.grad(value, taps.deltas())
    zs = taps.z
    scores = torch.stack(
        [
            ((cache[z_name(layer)] - zs[layer]) * grads[layer]).sum((0, 1, 3))
            for layer in range(f.n_layers)
        ]
    )  # [layer, head]
    return PatchingResult(
        scores=(float(value.detach()) + scores).detach().cpu(),
        clean_score=float(metric(clean_logits)),
        corrupted_score=float(value.detach()),
        axis_names=("layer", "head"),
        config=PatchingConfig("z", False, 0),
    )


@dataclass(frozen=True)
class ScreenedPatch:
    """What :func:`screened_activation_patch` settles and how it patches: the ``top`` heads
    and/or every head whose |effect| may reach ``min_recovered`` times the clean-corrupted gap
    (one of them is needed), an unpatched head may be ``safety`` times its estimate, and
    ``patches_per_pass`` heads share a forward pass (:func:`activation_patch`)."""

    top: int | None = None
    min_recovered: float | None = None
    safety: float = 1.5
    patches_per_pass: int | None = None


def screened_activation_patch(
    model: Model,
    clean: Int[Tensor, "batch pos"],
    corrupted: Int[Tensor, "batch pos"],
    metric: Callable[[Tensor], Tensor],
    screen: ScreenedPatch,
    positions: Int[Tensor, " batch"] | None = None,
    progress: bool = True,
) -> PatchingResult:
    """Activation patching of ``z``, screened: AtP estimates for every head, then exact
    patching in descending estimated |effect| (``score - corrupted_score``) until the ``top``
    heads, and every head whose |effect| may reach ``min_recovered`` times the clean-corrupted
    gap, are settled (the rule of :mod:`circuitlens.ablation.screening`: an unpatched head may be
    ``safety`` times its estimate).

    Returns:
        :class:`PatchingResult` with exact scores where ``exact`` is True, AtP estimates
        elsewhere.
    """
    top, min_recovered, safety = screen.top, screen.min_recovered, screen.safety
    patches_per_pass = screen.patches_per_pass
    if top is None and min_recovered is None:
        raise ValueError("a screened patch needs top= (a count of heads) or min_recovered=")
    f = model_facts(model)
    atp = attribution_patch(model, clean, corrupted, metric, positions=positions)
    gap = abs(atp.clean_score - atp.corrupted_score)
    threshold = None if min_recovered is None else min_recovered * gap
    est = (atp.scores - atp.corrupted_score).flatten()
    heads = [Head(layer, h) for layer in range(f.n_layers) for h in range(f.n_heads)]
    margin = default_margin(top, len(heads))
    order = verification_order(est, safety, "abs")
    first = min(len(heads), (top or 0) + margin)
    scores = atp.scores.clone().flatten()
    exact = torch.zeros(len(heads), dtype=torch.bool)
    measured: dict[int, float] = {}
    for chosen in [order[:first]] + [
        order[i : i + margin] for i in range(first, len(order), margin)
    ]:
        if measured and settled(measured, est, top, threshold, safety, margin, "abs"):
            break
        res = activation_patch(
            model,
            clean,
            corrupted,
            metric,
            PatchingConfig(patches_per_pass=patches_per_pass, heads=[heads[i] for i in chosen]),
            positions=positions,
            progress=progress,
        )
        for i in chosen:
            scores[i] = res.scores.flatten()[i]
            exact[i] = True
            measured[i] = float(scores[i]) - res.corrupted_score
    return PatchingResult(
        scores=rearrange(scores, "(layer head) -> layer head", head=f.n_heads),
        clean_score=atp.clean_score,
        corrupted_score=atp.corrupted_score,
        axis_names=("layer", "head"),
        config=PatchingConfig("z", False, patches_per_pass),
        exact=rearrange(exact, "(layer head) -> layer head", head=f.n_heads),
    )


def atp_rank_correlation(atp: PatchingResult, exact: PatchingResult) -> float:
    """Spearman rank correlation of AtP and exact activation-patching scores over heads."""
    from scipy.stats import spearmanr

    return float(spearmanr(atp.scores.flatten().numpy(), exact.scores.flatten().numpy())[0])
