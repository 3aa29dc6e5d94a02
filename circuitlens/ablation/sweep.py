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
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal, get_args

import torch
from einops import rearrange
from jaxtyping import Bool, Float
from torch import Tensor

import circuitlens.ablation.screening as screening
from circuitlens.ablation.interventions import Mean, Replacement, sweep
from circuitlens.ablation.means import check_means, compute_means
from circuitlens.ablation.screening import (
    SCREEN_TOP,
    SCREENS,
    ScreenKind,
    default_margin,
    screen_heads,
    settled,
    top_count,
    verification_order,
)
from circuitlens.core.devices import warn_slow_precision
from circuitlens.core.hooks import resid_pre_name
from circuitlens.core.types import Head, Model, parse_heads
from circuitlens.core.validate import check_fields
from circuitlens.models.registry import model_facts
from circuitlens.tasks import PromptBatch, Task, prompt_scores
from circuitlens.tasks.base import Split
from circuitlens.tasks.metrics import METRICS, model_device, no_logits

log = logging.getLogger(__name__)

Metric = Literal["accuracy", "prob", "logit_diff"]
SweepMethod = Literal["auto", "exact", "screened"]
METHODS: tuple[str, ...] = get_args(SweepMethod)
#: a sweep's forward precision (:attr:`AblationConfig.dtype`)
Precision = Literal["float32", "bfloat16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
Rank = Literal["signed", "abs"]
RANKS: tuple[str, ...] = get_args(Rank)


@dataclass(frozen=True)
class AblationConfig:
    """Options of :func:`ablation_sweep` (carried by its result).

    Attributes:
        metric: ``"prob"`` (the answer's probability, the default: a continuous P separates
            heads that accuracy ties), ``"accuracy"`` or ``"logit_diff"``, read at the last
            position.
        split, n: the prompts scored (the task's ``ablation`` prompts give the means);
            ``"probe"`` by default: a sweep chooses heads, and what chooses never reads the
            ``test`` prompts that results are reported on.
        heads_per_pass: heads ablated in one forward pass (each in its own copy of the batch);
            None: 1 on a CPU, 8 on a GPU.
        baseline: ``"own"``, or the name of the model whose unablated P is the baseline.
        n_boot: bootstrap resamples of the prompts for each dP's confidence interval (0: none);
            a screened sweep has intervals for its measured heads only.
        ci_level: the interval's coverage (percentile bootstrap).
        method: ``"exact"`` (every head ablated), ``"screened"`` (estimates for every head, the
            candidates verified exactly: :mod:`circuitlens.ablation.screening`), or ``"auto"``
            (:func:`circuitlens.ablation.screening.auto_method`: exact, until a screened sweep's map
            agrees with the exact map).
        top: screened: the heads whose top values must be exact, a fraction of all heads or a
            count (default :data:`~circuitlens.ablation.screening.SCREEN_TOP`).
        threshold: screened: also verify every head whose |impact| may reach this (or None).
        safety: screened: an unverified head may be this many times its estimated |impact|.
        screen: the estimator, ``"atp*"`` or ``"atp"`` (see :mod:`circuitlens.ablation.screening`).
        rank: screened: settle the top heads by impact (``"signed"``, what the mapping takes)
            or by |impact| (``"abs"``).
        verify: screened: heads measured exactly in any case (e.g. a circuit's heads, the
            map's candidates); an exact sweep measures every head and keeps none.
        dtype: the precision of the sweep's forwards: ``"float32"``, or ``"bfloat16"``
            (autocast: matrix products in bf16, the scores and impacts in float32). bf16 pays
            only where the hardware has it: on a CPU without native bf16 it runs emulated,
            slower, with a :class:`~circuitlens.core.devices.SlowPrecisionWarning` (measured
            in ``docs/benchmarks.md``, "bf16 against float32").
    """

    metric: Metric = "prob"
    split: Split = "probe"
    n: int | None = 200
    heads_per_pass: int | None = None
    baseline: str = "own"
    n_boot: int = 1000
    ci_level: float = 0.95
    method: SweepMethod = "auto"
    top: float | int | None = SCREEN_TOP
    threshold: float | None = None
    safety: float = 1.5
    screen: ScreenKind = "atp*"
    rank: Rank = "signed"
    verify: tuple[str, ...] = ()
    dtype: Precision = "float32"

    def __post_init__(self) -> None:
        check_fields(self, {"n": (1, None)})
        if self.dtype not in PRECISIONS:
            raise ValueError(f"unknown dtype {self.dtype!r}; valid: {', '.join(PRECISIONS)}")
        if self.metric not in METRICS:
            raise ValueError(f"unknown metric {self.metric!r}; valid: {', '.join(METRICS)}")
        if self.n_boot < 0:
            raise ValueError(f"n_boot must be >= 0 (0: no confidence intervals), got {self.n_boot}")
        if not 0 < self.ci_level < 1:
            raise ValueError(f"ci_level must lie in (0, 1), e.g. 0.95 (got {self.ci_level})")
        if self.heads_per_pass is not None and self.heads_per_pass < 1:
            raise ValueError(f"heads_per_pass must be >= 1 (got {self.heads_per_pass})")
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; valid: {', '.join(METHODS)}")
        if self.screen not in SCREENS:
            raise ValueError(f"unknown screen {self.screen!r}; valid: {', '.join(SCREENS)}")
        if self.rank not in RANKS:
            raise ValueError(f"rank must be 'signed' or 'abs' (got {self.rank!r})")
        if self.safety < 1:
            raise ValueError(f"safety must be >= 1 (got {self.safety})")
        if self.method == "screened" and self.top is None and self.threshold is None:
            raise ValueError("a screened sweep needs top= (a count or fraction) or threshold=")
        # heads as "L3H5" strings: a config that serialises as it reads
        object.__setattr__(self, "verify", tuple(str(h) for h in parse_heads(list(self.verify))))

    def with_overrides(self, **overrides: Any) -> AblationConfig:
        """A copy with ``overrides`` replacing fields (an unknown name is an error)."""
        unknown = sorted(set(overrides) - {f.name for f in fields(self)})
        if unknown:
            raise TypeError(
                f"unknown sweep option(s) {', '.join(unknown)}; valid: "
                f"{', '.join(f.name for f in fields(self))}"
            )
        return replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        """The options as saved with a result (``verify`` only where a screened sweep kept
        heads to measure: the files of exact sweeps read as before)."""
        d = asdict(self)
        if not d["verify"]:
            del d["verify"]
        else:
            d["verify"] = list(d["verify"])
        return d


@dataclass
class AblationResult:
    """Per-head mean-ablation impact.

    Attributes:
        p_own: the model's unablated P.
        p_baseline: the P that impacts are measured against (``p_own`` unless ``baseline_from``).
        p_ablated: ``[layer, head]`` P with that one head mean-ablated.
        delta: ``[layer, head]`` impact ``p_baseline - p_ablated``.
        model_name: a label for plots.
        config: the sweep's options (``config.method`` is the method that ran).
        delta_ci: ``[2, layer, head]`` percentile-bootstrap interval of ``delta`` over prompts
            (lower, upper), or None (``n_boot=0``, or a result saved before intervals); NaN at
            the heads a screened sweep only estimated (no per-prompt scores, no interval).
        exact: ``[layer, head]`` True where ``p_ablated`` was measured, False where it is a
            screen's estimate (a screened sweep); None means all exact.
        estimated: ``[layer, head]`` the screen's estimates of ``p_ablated`` for every head
            (screened sweeps), else None.
        prompt_delta: ``[layer, head, n]`` each head's impact on each scored prompt against the
            model's *own* unablated score on that prompt (``own_i - ablated_i``, whatever the
            baseline: with ``baseline="own"`` its mean over prompts is ``delta``), NaN at the
            heads a screened sweep only estimated; None for results saved before it was kept.
            :mod:`circuitlens.mapping.methods` matches heads by these profiles.
    """

    p_own: float
    p_baseline: float
    p_ablated: Float[Tensor, "layer head"]
    delta: Float[Tensor, "layer head"]
    model_name: str = "model"
    config: AblationConfig = field(default_factory=AblationConfig)
    axis_names: tuple[str, str] = ("layer", "head")
    delta_ci: Float[Tensor, "2 layer head"] | None = None
    exact: Bool[Tensor, "layer head"] | None = None
    estimated: Float[Tensor, "layer head"] | None = None
    prompt_delta: Float[Tensor, "layer head n"] | None = None

    def __post_init__(self) -> None:
        if self.exact is None:
            self.exact = torch.ones(self.delta.shape, dtype=torch.bool)

    def excludes_zero(self, head: Head) -> bool | None:
        """Whether ``head``'s impact interval excludes 0 (None: no interval, e.g. a head that
        a screened sweep only estimated)."""
        if self.delta_ci is None or not bool(self.exact[head.layer, head.head]):
            return None
        lo, hi = (
            float(self.delta_ci[0, head.layer, head.head]),
            float(self.delta_ci[1, head.layer, head.head]),
        )
        if lo != lo or hi != hi:  # NaN: not measured
            return None
        return lo > 0 or hi < 0

    def __repr__(self) -> str:
        n_layers, n_heads = self.delta.shape
        top = self.delta.flatten().topk(min(3, self.delta.numel())).indices.tolist()
        largest = ", ".join(
            f"L{i // n_heads}H{i % n_heads} {float(self.delta.flatten()[i]):+.3f}" for i in top
        )
        base = "" if self.p_baseline == self.p_own else f", baseline {self.p_baseline:.3f}"
        return (
            f"AblationResult({self.model_name}: {self.config.metric} on {self.config.n} "
            f"{self.config.split} prompts, P = {self.p_own:.3f}{base}; {n_layers}x{n_heads} "
            f"heads; largest dP {largest})"
        )

    @property
    def heads(self) -> list[Head]:
        n_layers, n_heads = self.delta.shape
        return [Head(layer, h) for layer in range(n_layers) for h in range(n_heads)]

    @property
    def exact_heads(self) -> list[Head]:
        """The heads whose values were measured (all of them unless the sweep was screened)."""
        return [h for h in self.heads if bool(self.exact[h.layer, h.head])]

    def to_frame(self) -> Any:
        import pandas as pd

        cols = {
            "head": [str(h) for h in self.heads],
            "layer": [h.layer for h in self.heads],
            "head_index": [h.head for h in self.heads],
            "p_ablated": self.p_ablated.flatten().tolist(),
            "delta": self.delta.flatten().tolist(),
        }
        if self.delta_ci is not None:  # NaN where a screened sweep only estimated
            cols["delta_lo"] = self.delta_ci[0].flatten().tolist()
            cols["delta_hi"] = self.delta_ci[1].flatten().tolist()
        cols["exact"] = self.exact.flatten().tolist()  # False: p_ablated, delta are estimates
        return pd.DataFrame(cols)

    def named(self, name: str) -> AblationResult:
        """The same result labelled ``name`` (e.g. ``"teacher"``: plots and tables show it)."""
        return replace(self, model_name=name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "p_own": self.p_own,
            "p_baseline": self.p_baseline,
            "p_ablated": self.p_ablated.tolist(),
            "delta": self.delta.tolist(),
            "model_name": self.model_name,
            "config": self.config.to_dict(),
            "delta_ci": None if self.delta_ci is None else self.delta_ci.tolist(),
            "exact": self.exact.tolist(),
            "estimated": None if self.estimated is None else self.estimated.tolist(),
            "prompt_delta": None if self.prompt_delta is None else self.prompt_delta.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AblationResult:
        def floats(x: Any) -> Tensor | None:
            # strict JSON (the experiment runner's files) stores NaN, e.g. the interval of a
            # head that a screened sweep only estimated, as null
            return None if x is None else torch.tensor(_nan_for_none(x))

        return cls(
            p_own=d["p_own"],
            p_baseline=d["p_baseline"],
            p_ablated=floats(d["p_ablated"]),
            delta=floats(d["delta"]),
            model_name=d.get("model_name", "model"),
            # results saved before screening existed were exact sweeps; screened sweeps saved
            # before rank= settled the top heads by |impact|; before the probe split, sweeps
            # read the test prompts
            config=AblationConfig(
                **{"method": "exact", "rank": "abs", "split": "test", **d.get("config", {})}
            ),
            delta_ci=floats(d.get("delta_ci")),
            exact=None if d.get("exact") is None else torch.tensor(d["exact"], dtype=torch.bool),
            estimated=floats(d.get("estimated")),
            prompt_delta=floats(d.get("prompt_delta")),
        )


def _nan_for_none(x: Any) -> Any:
    if x is None:
        return float("nan")
    if isinstance(x, list | tuple):
        return [_nan_for_none(v) for v in x]
    return x


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


def _precision(model: Any, dtype: str) -> Any:
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
