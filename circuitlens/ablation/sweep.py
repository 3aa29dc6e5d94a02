"""Mean ablation of attention heads, and the all-heads sweep that measures each head's impact.

Mean ablation replaces a head's output ``z`` (the input of W_O, hook ``blocks.{l}.attn.hook_z``)
by its mean over a reference set, separately at each token position. The impact of a head is
``dP = P - P_ablated``: positive when ablating the head hurts. With ``baseline_from=student``
a teacher's impact is measured against the student's unablated performance,
``dP_t(h) = P_student - P_teacher_ablated(h)``, as the circuit-distillation paper appears to do.

Positions are counted from the start of the prompt. Prompts of unequal length (right-padded)
are allowed: the mean at a position is over the reference prompts long enough to have it.

The sweep runs on the intervention engine (:func:`circuitlens.ablation.interventions.sweep`): each
forward
pass starts at the ablated head's layer from the cached clean residual stream (earlier blocks
cannot see the ablation, so their compute is skipped), and several heads of one layer can share
a pass (``heads_per_pass``: the batch is repeated once per head, each copy ablating its own
head). Batching pays on a GPU, not on a CPU (benchmarks/).

A sweep takes its options as an :class:`~circuitlens.ablation.config.AblationConfig` and
returns an :class:`~circuitlens.ablation.result.AblationResult`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from einops import rearrange
from jaxtyping import Float
from torch import Tensor

import circuitlens.ablation.screening as screening
from circuitlens.ablation.config import AblationConfig
from circuitlens.ablation.interventions import Mean, Replacement, sweep
from circuitlens.ablation.means import check_means, compute_means
from circuitlens.ablation.result import AblationResult
from circuitlens.ablation.screening import (
    default_margin,
    screen_heads,
    settled,
    top_count,
    verification_order,
)
from circuitlens.core.devices import warn_slow_precision
from circuitlens.core.hooks import resid_pre_name
from circuitlens.core.types import Head, Model, parse_heads
from circuitlens.models.registry import model_facts
from circuitlens.tasks import PromptBatch, Task, prompt_scores
from circuitlens.tasks.metrics import METRICS, model_device, no_logits

log = logging.getLogger(__name__)


def _per_example(metric: str, logits: Tensor, batch: PromptBatch) -> Tensor:
    return METRICS[metric](logits, batch, reduce=False)


@torch.no_grad()
def ablated_scores(
    model: Model,
    batch: PromptBatch,
    heads: Sequence[Head],
    means: Tensor,
    config: AblationConfig,
    progress: bool = True,
    reduce: bool = True,
) -> Float[Tensor, " n_heads"] | Float[Tensor, "n_heads n"]:
    """Mean ``config.metric`` with each head of ``heads`` ablated alone (``reduce=False``: the
    metric of each prompt, ``[n_heads, n]``, for bootstrap intervals); the batch and the means
    are the caller's, so only ``config.metric`` and ``config.heads_per_pass`` are read.

    Each forward pass starts at the ablated head's layer from the clean residual stream (the
    earlier blocks are skipped: they cannot see the ablation), and ``heads_per_pass`` heads of
    one layer share a pass, each in its own copy of the batch. Batching pays on a GPU; on a
    CPU it does not (see benchmarks/), so the default is 1 there and 8 on a GPU.
    """
    check_means(model, means)
    device = model_device(model)
    layers = sorted({h.layer for h in heads})
    names = {resid_pre_name(layer) for layer in layers}
    _, cache = model.run_with_cache(
        batch.tokens.to(device), names_filter=lambda x: x in names, **no_logits(model)
    )
    resid = {layer: cache[resid_pre_name(layer)] for layer in layers}
    return _scores_from_resid(
        model,
        batch,
        heads,
        means,
        config.metric,
        resid,
        config.heads_per_pass,
        progress,
        reduce=reduce,
    )


@torch.no_grad()
def _scores_from_resid(
    model: Model,
    batch: PromptBatch,
    heads: Sequence[Head],
    means: Tensor,
    metric: str,
    resid: dict[int, Float[Tensor, "batch pos d_model"]],
    heads_per_pass: int | None = None,
    progress: bool = True,
    reduce: bool = True,
) -> Float[Tensor, " n_heads"] | Float[Tensor, "n_heads n"]:
    """:func:`ablated_scores` from the clean residual stream entering each head's layer
    (``resid[layer]``, from a run the caller made), so that several calls share one run."""
    device = model_device(model)
    if heads_per_pass is None:
        heads_per_pass = 8 if device.type == "cuda" else 1

    def scores(logits: Tensor) -> Tensor:
        return _per_example(metric, logits, batch).float().cpu()

    copies = [[Replacement(Mean(means), [h])] for h in heads]
    last = batch.positions["last"].to(device)
    out = sweep(
        model, resid, copies, scores, heads_per_pass, last, "ablation sweep" if progress else None
    )
    per_prompt = torch.stack(out) if out else torch.empty(0, len(batch))
    return per_prompt.mean(1) if reduce else per_prompt


def bootstrap_delta(
    base: Float[Tensor, " n"],
    ablated: Float[Tensor, "n_heads n"],
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> Float[Tensor, "2 n_heads"]:
    """Percentile-bootstrap interval of ``dP = mean(base) - mean(ablated[h])`` over prompts.

    Prompts are resampled with replacement, the same resample for the baseline and every head
    (paired: both are scored on the same prompts). Returns ``[2, n_heads]``: lower, upper.
    A head's interval depends on its own scores and the seed only, not on which other heads
    are passed (a screened sweep's measured heads get the exact sweep's intervals).
    """
    n = base.shape[0]
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, n, (n_boot, n), generator=g)
    counts = torch.zeros(n_boot, n, dtype=torch.float64).scatter_add_(
        1, idx, torch.ones(n_boot, n, dtype=torch.float64)
    )  # [boot, n]: how often each prompt is drawn
    d = base.double()[None, :] - ablated.double()  # [head, n]
    boots = d @ counts.T / n  # [head, boot]
    a = (1 - level) / 2
    return torch.stack([boots.quantile(a, dim=1), boots.quantile(1 - a, dim=1)]).float()


def ablation_sweep(
    model: Model,
    task: Task,
    config: AblationConfig | None = None,
    *,
    baseline_from: Model | None = None,
    means: Tensor | None = None,
    progress: bool = True,
) -> AblationResult:
    """Mean-ablate every head alone and measure the drop in task performance.

    Args:
        config: the sweep's options (:class:`AblationConfig`: metric, prompts, intervals,
            method and a screened sweep's options), e.g.
            ``AblationConfig(metric="prob", n=32)``; default: ``AblationConfig()``.
        baseline_from: another model (the student) whose unablated P is the baseline, or None.
        means: precomputed means; by default from the task's ``ablation`` reference prompts.

    Returns:
        :class:`AblationResult` with ``delta[layer, head] = P_baseline - P_ablated`` and
        ``delta_ci``; after a screened sweep ``exact`` marks the measured heads, the others
        hold estimates (and no interval). ``model_name`` is the model's own name
        (:meth:`AblationResult.named` relabels it, e.g. ``"teacher"``).
    """
    if config is not None and not isinstance(config, AblationConfig):
        raise TypeError(
            f"config must be an AblationConfig (got {type(config).__name__}); pass options as "
            'AblationConfig(metric="prob", n=32)'
        )
    config = config or AblationConfig()
    f = model_facts(model)
    method = config.method
    if method == "auto":
        method = screening.auto_method(f.n_total_heads)
    config = replace(
        config,
        baseline="own" if baseline_from is None else "other",
        method=method,
        verify=config.verify if method == "screened" else (),  # exact: every head measured
    )
    batch = task.batch(model, config.split, config.n)
    means = sweep_means(model, task, batch, means)
    heads = [Head(layer, h) for layer in range(f.n_layers) for h in range(f.n_heads)]
    with _precision(model, config.dtype):
        own, scores, exact, estimated, per_prompt = _measure(
            model, task, batch, heads, means, config, progress
        )
        base = own
        if baseline_from is not None:
            base = prompt_scores(baseline_from, task, config.split, config.n, config.metric)
    own, base, scores, per_prompt = own.float(), base.float(), scores.float(), per_prompt.float()
    return _result(model, f.n_heads, config, own, base, scores, exact, estimated, per_prompt)


def _precision(model: Model, dtype: str) -> Any:
    """The forwards' precision: bf16 autocast on the model's device (warning where that CPU
    has no native bf16), or nothing in float32."""
    if dtype == "float32":
        return contextlib.nullcontext()
    device = model_device(model)
    warn_slow_precision(device, dtype)
    return torch.autocast(device.type, torch.bfloat16)


def sweep_means(model: Model, task: Task, batch: PromptBatch, means: Tensor | None) -> Tensor:
    """The means a sweep of ``model`` on ``batch`` ablates to: ``means`` checked against the
    model, or when None the mean ``z`` over the task's ablation reference prompts
    (:func:`~circuitlens.ablation.means.compute_means`), ``[layer, pos, head_index,
    d_head]``."""
    if means is None:
        if batch.ablation_tokens is None:
            raise ValueError(
                f"task {task.name!r} has no ablation reference prompts: pass means="
                "compute_means(model, reference_tokens)"
            )
        means = compute_means(model, batch.ablation_tokens)
    check_means(model, means)
    return means


def _measure(
    model: Model,
    task: Task,
    batch: PromptBatch,
    heads: list[Head],
    means: Tensor,
    config: AblationConfig,
    progress: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor]:
    """The model's own per-prompt scores, each head's ablated score, which heads were
    measured, a screen's estimates (or None) and the measured heads' per-prompt scores."""
    if config.method == "exact":
        own = prompt_scores(model, task, config.split, config.n, config.metric)
        per_prompt = ablated_scores(model, batch, heads, means, config, progress, reduce=False)
        return own, per_prompt.mean(1), torch.ones(len(heads), dtype=torch.bool), None, per_prompt
    f = model_facts(model)
    verify = [h.check(f.n_layers, f.n_heads) for h in parse_heads(list(config.verify))]
    own, scores, exact, estimated, per_prompt = _screened(
        model, batch, heads, means, config, verify
    )
    return (
        own,
        scores,
        exact,
        rearrange(estimated, "(layer head) -> layer head", head=f.n_heads),
        per_prompt,
    )


def _result(
    model: Model,
    n_heads: int,
    config: AblationConfig,
    own: Tensor,
    base: Tensor,
    scores: Tensor,
    exact: Tensor,
    estimated: Tensor | None,
    per_prompt: Tensor,
) -> AblationResult:
    """The sweep's :class:`AblationResult` from its measurements (``[layer * head]`` flat)."""
    p_own, p_base = float(own.double().mean()), float(base.double().mean())
    p_abl = rearrange(scores, "(layer head) -> layer head", head=n_heads)
    delta = p_base - p_abl
    ci = None
    if config.n_boot:
        # measured heads only: an estimate has no per-prompt scores (NaN: no interval)
        ci = torch.full((2, len(scores)), float("nan"))
        ci[:, exact] = bootstrap_delta(base, per_prompt, config.n_boot, config.ci_level)
        ci = rearrange(ci, "bound (layer head) -> bound layer head", head=n_heads)
    if float(delta.max() - delta.min()) == 0.0:
        log.warning(
            "every head has the same impact (%.3f): the model's %s does not depend on "
            "any single head, so a mapping by impact is uninformative",
            float(delta[0, 0]),
            config.metric,
        )
    name = getattr(getattr(model, "cfg", None), "model_name", None) or "model"
    # each measured head's impact on each prompt against the model's own score there (NaN at
    # a screened sweep's estimates)
    prompt_delta = torch.full((len(scores), len(own)), float("nan"))
    prompt_delta[exact] = own.float()[None, :] - per_prompt.float()
    return AblationResult(
        p_own=p_own,
        p_baseline=p_base,
        p_ablated=p_abl,
        delta=delta,
        model_name=str(name),
        config=config,
        delta_ci=ci,
        exact=rearrange(exact, "(layer head) -> layer head", head=n_heads),
        estimated=estimated,
        prompt_delta=rearrange(prompt_delta, "(layer head) n -> layer head n", head=n_heads),
    )


def _screened(
    model: Model,
    batch: PromptBatch,
    heads: list[Head],
    means: Tensor,
    cfg: AblationConfig,
    verify: list[Head],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Estimates for every head, then exact ablation in descending order of what each head's
    impact may reach by its estimate (signed or |impact|, ``cfg.rank``) until the top
    ``cfg.top`` heads (and any above ``cfg.threshold``) are settled; ``verify`` heads
    are measured first. Returns the unablated model's per-prompt scores ``[n]``, P_ablated
    (exact where measured), the exact mask, the estimates and the measured heads' per-prompt
    scores ``[n_measured, n]`` (in head order, the rows of ``exact``)."""
    scr = screen_heads(model, batch, means, cfg.metric, cfg.screen)
    est = scr.p_estimated.flatten()
    impact_est = scr.p_own - est  # [head]: estimated own impact
    k = None if cfg.top is None else top_count(cfg.top, len(heads))
    margin = default_margin(k, len(heads))
    index = {h: i for i, h in enumerate(heads)}
    order = [index[h] for h in verify] + verification_order(impact_est, cfg.safety, cfg.rank)
    order = list(dict.fromkeys(order))
    measured: dict[int, Tensor] = {}  # head index -> per-prompt scores [n]
    first = max(len(verify), min(len(heads), (k or 0) + margin))
    rounds = [order[:first]] + [order[i : i + margin] for i in range(first, len(order), margin)]
    for chosen in rounds:
        if measured and settled(
            {i: scr.p_own - float(v.mean()) for i, v in measured.items()},
            impact_est,
            k,
            cfg.threshold,
            cfg.safety,
            margin,
            cfg.rank,
        ):
            break
        got = _scores_from_resid(
            model,
            batch,
            [heads[i] for i in chosen],
            means,
            cfg.metric,
            scr.resid,
            cfg.heads_per_pass,
            progress=False,
            reduce=False,
        )
        measured.update(zip(chosen, got, strict=True))
    log.info("screened sweep: %d of %d heads measured exactly", len(measured), len(heads))
    scores = est.clone()
    exact = torch.zeros(len(heads), dtype=torch.bool)
    for i, v in measured.items():
        scores[i] = v.mean()
        exact[i] = True
    per_prompt = torch.stack([measured[i] for i in sorted(measured)])
    return scr.own_scores, scores, exact, est, per_prompt
