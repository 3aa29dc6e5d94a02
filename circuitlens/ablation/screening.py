"""Screening heads for the mean-ablation sweep: attribution estimates, then exact verification.

**Estimates** (one forward and one backward pass on the clean prompts). Mean-ablating head ``h``
replaces its output ``z`` by the mean ``m``; attribution patching (AtP: Nanda 2023; Syed, Rager,
Conmy 2023; Kramár et al. 2024) estimates the change of a per-prompt score ``s_i`` to first order:
``ds_i(h) = sum over pos, d_head of (m - z_i)[pos, h] * d s_i / d z_i[pos, h]``. Prompts are
independent, so one backward pass of ``sum_i s_i`` gives every prompt's gradient; the gradient is
the total derivative (a zero tensor is added at each ``hook_z`` and differentiated, so paths
through later heads stay open).

- ``screen="atp"``: ``s`` is the metric itself (answer probability, logit difference) and the
  estimated P is ``P + mean_i ds_i``.
- ``screen="atp*"`` (default): after AtP*'s remedy for saturated nonlinearities (Kramár et al.
  2024: compute the saturating part exactly, linearise the rest), ``s`` is the score *before* the
  metric's last nonlinearity, which is then applied exactly: ``prob``: ``s`` is the answer's
  log-odds and ``p' = sigmoid(s + ds)`` (bounded, no vanishing softmax derivative);
  ``accuracy``: ``s`` is the margin (answer logit minus the largest other logit) and
  ``accuracy' = 1[s + ds > 0]``; ``logit_diff`` is linear in the logits (the two screens agree).
  Accuracy has no gradient, so both screens count margin flips for it.
- Not done: AtP*'s QK fix is for patches of queries and keys (it recomputes the patched head's
  own attention softmax); a mean-ablated head's output replaces its pattern's result wholesale,
  and recomputing every downstream pattern per ablated head costs a pass per head, the exact
  sweep. GradDrop (one backward pass per layer, against cancellation) costs about as much as
  a third of the exact sweep on a 30-layer model, beyond the screen's budget.

**Verification** (adaptive, not a fixed top-k): heads are mean-ablated exactly, in rounds, in
descending order of what their impact may reach by its estimate, until the heads the caller
needs are settled:

- top ``k`` with ``rank="signed"`` (default; the mapping takes the largest impacts): at least
  ``k + margin`` heads verified, and the k-th largest verified impact is at least the largest
  bound ``estimate + (safety - 1) * |estimate|`` of any unverified head;
- top ``k`` with ``rank="abs"``: the same on |impact|, with the bound ``safety * |estimate|``;
- ``threshold`` t: every unverified head has ``safety * |estimated impact| < t``.

Impacts here are a head's own effect ``P_own - P_ablated`` (a baseline from another model adds
the same offset to every head and plays no part in the order).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
from jaxtyping import Float
from torch import Tensor

from circuitlens.ablation.interventions import ZTaps
from circuitlens.core.hooks import hook_layer, hooked, resid_pre_name
from circuitlens.core.types import Model
from circuitlens.models.registry import model_facts
from circuitlens.tasks import PromptBatch
from circuitlens.tasks.metrics import METRICS, answer_logits, logits_at, model_device

#: the screen's estimators (see the module docstring)
ScreenKind = Literal["atp", "atp*"]
SCREENS: tuple[str, ...] = get_args(ScreenKind)


def _score(metric: str, screen: str, logits: Tensor, batch: PromptBatch) -> Tensor:
    """The per-prompt differentiable score ``[batch]`` that the screen linearises."""
    last = answer_logits(logits, batch)
    last = last.to(torch.promote_types(last.dtype, torch.float32))
    ans = batch.answer_ids.to(last.device)[:, None]
    if metric == "logit_diff":
        return METRICS["logit_diff"](last, batch, reduce=False)
    if metric == "accuracy":
        others = last.scatter(-1, ans, float("-inf"))
        return last.gather(-1, ans)[:, 0] - others.max(-1).values
    logp = last.log_softmax(-1).gather(-1, ans)[:, 0]
    if screen == "atp":
        return logp.exp()
    log1m = torch.log(-torch.expm1(logp).clamp(max=-1e-12))  # log(1 - p), finite at p -> 1
    return logp - log1m  # the answer's log-odds


def _apply(metric: str, screen: str, s: Tensor) -> Tensor:
    """Per-prompt metric from the score (the nonlinearity the screen applies exactly)."""
    if metric == "accuracy":
        return (s > 0).float()
    if metric == "prob" and screen == "atp*":
        return torch.sigmoid(s)
    return s


@dataclass
class Screen:
    """Attribution estimates of every head's mean ablation.

    Attributes:
        p_own: the model's unablated P (from the same forward pass).
        own_scores: ``[batch]`` the unablated metric of each prompt (``p_own`` is their mean),
            for the bootstrap intervals of the verified heads.
        p_estimated: ``[layer, head]`` estimated P with that head mean-ablated alone.
        resid: the clean ``hook_resid_pre`` of every layer, for exact verification.
    """

    p_own: float
    p_estimated: Float[Tensor, "layer head"]
    resid: dict[int, Tensor]
    own_scores: Float[Tensor, " batch"] | None = None


def screen_heads(
    model: Model, batch: PromptBatch, means: Tensor, metric: str, screen: str = "atp*"
) -> Screen:
    """Estimates of P with each head mean-ablated alone (see the module docstring) from one
    forward and one backward pass; the forward also keeps each layer's clean residual stream."""
    if screen not in SCREENS:
        raise ValueError(f"unknown screen {screen!r}; valid: {', '.join(SCREENS)}")
    f = model_facts(model)
    device = model_device(model)
    tokens = batch.tokens.to(device)
    n, width = tokens.shape
    last = batch.positions["last"].to(device)
    resid: dict[int, Tensor] = {}

    def keep_resid(x: Tensor, hook: Any) -> None:
        resid[hook_layer(hook)] = x.detach()

    taps = ZTaps(f.n_layers)
    hooks = taps.hooks + [(resid_pre_name(layer), keep_resid) for layer in range(f.n_layers)]
    with torch.enable_grad(), hooked(model, hooks):
        logits = logits_at(model, tokens, last)
        s = _score(metric, screen, logits, batch)
        grads = torch.autograd.grad(s.sum(), taps.deltas())
    zs = taps.z
    s = s.detach()
    wide = torch.promote_types(zs[0].dtype, torch.float32)  # half-precision models: in float32
    ds = torch.stack(
        [
            torch.einsum(
                "bphd,bphd->bh",
                means[layer, :width].to(device, wide) - zs[layer].to(wide),
                grads[layer].to(wide),
            )
            for layer in range(f.n_layers)
        ],
        1,
    )  # [batch, layer, head]
    own = METRICS[metric](logits.detach(), batch, reduce=False).float()
    p_own = float(own.mean())
    if screen == "atp" and metric != "accuracy":  # linear: the mean change
        p_est = p_own + ds.mean(0)
    else:
        p_est = _apply(metric, screen, s[:, None, None] + ds).mean(0)
    return Screen(p_own=p_own, p_estimated=p_est.cpu(), resid=resid, own_scores=own.cpu())


def upper_bound(estimated_impact: Tensor, safety: float, rank: str) -> Tensor:
    """What an unverified head's impact may reach, by its estimate: ``rank="abs"``:
    ``safety * |estimate|``; ``rank="signed"``: ``estimate + (safety - 1) * |estimate|`` (the
    estimate off by at most ``safety - 1`` of itself)."""
    if rank == "abs":
        return safety * estimated_impact.abs()
    return estimated_impact + (safety - 1) * estimated_impact.abs()


def verification_order(estimated_impact: Tensor, safety: float, rank: str) -> list[int]:
    """Head indices in the order a screened sweep measures them: highest bound first."""
    bound = upper_bound(estimated_impact, safety, rank).tolist()
    return sorted(range(len(bound)), key=lambda i: (-bound[i], i))


def settled(
    exact_impact: dict[int, float],
    estimated_impact: Tensor,
    k: int | None,
    threshold: float | None,
    safety: float,
    margin: int,
    rank: str = "signed",
) -> bool:
    """Whether the verified heads settle what the caller needs (see the module docstring).

    Args:
        exact_impact: head index -> exact impact of the verified heads.
        estimated_impact: ``[n_heads]`` estimated impact of every head.
        rank: ``"signed"``: the top k by impact (what the mapping takes: the largest dP);
            ``"abs"``: the top k by |impact|.
    """
    n = estimated_impact.numel()
    unverified = [i for i in range(n) if i not in exact_impact]
    if not unverified:
        return True
    if len(exact_impact) < min(n, margin + (k or 0)):
        return False
    if k is not None:
        values = exact_impact.values()
        kth = sorted((abs(v) if rank == "abs" else v for v in values), reverse=True)[k - 1]
        if kth < float(upper_bound(estimated_impact[unverified], safety, rank).max()):
            return False
    worst = safety * float(estimated_impact[unverified].abs().max())
    return threshold is None or worst < threshold


#: heads above which ``method="auto"`` screens (None: never). The screened sweep changed the
#: whole map on the real same-family entity-tracking pair (0 of 26 pairs shared with the exact
#: map at 16 and at 32 prompts: it never verified either model's most important head), so until
#: a map built from screened sweeps agrees with the exact map on >= 95% of its pairs, ``"auto"``
#: is exact at every size for anything that feeds a map or a circuit; ``"screened"`` is opt-in.
AUTO_SCREEN_ABOVE: int | None = None

#: a screened sweep's default ``top``: the fraction of heads whose top values it settles
#: exactly (0.15 covers the mapping's default budget of 0.13); the one place it is written
SCREEN_TOP = 0.15


def auto_method(n_heads: int) -> str:
    """What ``method="auto"`` means for a model of ``n_heads`` heads: ``"exact"`` or
    ``"screened"`` (above :data:`AUTO_SCREEN_ABOVE` heads; never while it is None)."""
    screen = AUTO_SCREEN_ABOVE is not None and n_heads > AUTO_SCREEN_ABOVE
    return "screened" if screen else "exact"


def top_count(top: float | int, n_heads: int) -> int:
    """Heads ``top`` asks for: an int is a count, a float in (0, 1] a fraction (rounded, >= 1)
    (the same rule as the mapping's budget)."""
    if isinstance(top, bool) or not isinstance(top, (int, float)):
        raise ValueError(f"top must be a fraction in (0, 1] or a count of heads (got {top!r})")
    if isinstance(top, float):
        if not 0 < top <= 1:
            raise ValueError(f"a fractional top must lie in (0, 1] (got {top})")
        return max(1, round(top * n_heads))
    if not 1 <= top <= n_heads:
        raise ValueError(f"top={top} heads is outside 1..{n_heads}")
    return top


def default_margin(k: int | None, n_heads: int) -> int:
    """Heads verified beyond the ``k`` asked for, at the least: a quarter of k, at least 4."""
    return min(n_heads, max(4, math.ceil(0.25 * (k or 0))))
