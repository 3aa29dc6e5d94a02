"""Attribution patching (AtP): a first-order estimate of every head's activation-patching score
from two forward passes and one backward pass (Nanda 2023; Syed, Rager, Conmy 2023).

``score(h) = sum over examples, positions, d_head of (z_clean - z_corrupted) * d metric / d z``,
with the gradient taken on the corrupted run: the linear estimate of
``metric(corrupted with h's clean z patched in) - metric(corrupted)``. Use it to screen large
models; :func:`atp_rank_correlation` says how well it ranks heads against exact patching.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from circuitlens.hooks import hooked, z_name
from circuitlens.models import model_facts
from circuitlens.patching.activation import PatchingConfig, PatchingResult
from circuitlens.tasks.metrics import model_device


def attribution_patch(
    model: Any,
    clean: Int[Tensor, "batch pos"],
    corrupted: Int[Tensor, "batch pos"],
    metric: Callable[[Tensor], Tensor],
) -> PatchingResult:
    """AtP estimates of patching each head's ``z`` from clean into corrupted.

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
    with torch.no_grad():
        clean_logits, cache = model.run_with_cache(clean, names_filter=lambda x: x in names)
    deltas: dict[int, Tensor] = {}
    zs: dict[int, Tensor] = {}

    def open_z(z: Tensor, hook: Any) -> Tensor:
        # a zero added (not a leaf swapped in) so that d/d(delta) is the total derivative by z,
        # through the later heads too (a detached leaf at every layer would cut those paths)
        layer = int(hook.name.split(".")[1])
        zs[layer] = z.detach()
        deltas[layer] = torch.zeros_like(z, requires_grad=True)
        return z + deltas[layer]

    with torch.enable_grad(), hooked(model, [(n, open_z) for n in names]):
        corrupted_logits = model(corrupted)
        value = metric(corrupted_logits)
        grads = torch.autograd.grad(value, [deltas[layer] for layer in range(f.n_layers)])
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


def atp_rank_correlation(atp: PatchingResult, exact: PatchingResult) -> float:
    """Spearman rank correlation of AtP and exact activation-patching scores over heads."""
    from scipy.stats import spearmanr

    return float(spearmanr(atp.scores.flatten().numpy(), exact.scores.flatten().numpy())[0])
