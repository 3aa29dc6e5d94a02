"""Mean ablation of attention heads, and the all-heads sweep that measures each head's impact.

Mean ablation replaces a head's output ``z`` (the input of W_O, hook ``blocks.{l}.attn.hook_z``)
by its mean over a reference set, separately at each token position. The impact of a head is
``dP = P - P_ablated``: positive when ablating the head hurts. With ``baseline_from=student``
a teacher's impact is measured against the student's unablated performance,
``dP_t(h) = P_student - P_teacher_ablated(h)``, as the circuit-distillation paper appears to do.

Positions are counted from the start of the prompt. Prompts of unequal length (right-padded)
are allowed: the mean at a position is over the reference prompts long enough to have it.

The sweep starts each forward pass at the ablated head's layer from the cached clean residual
stream (earlier blocks cannot see the ablation, so their compute is skipped), and can put
several heads of one layer in one pass (``heads_per_pass``: the batch is repeated once per head,
each copy ablating its own head). Batching pays on a GPU, not on a CPU (benchmarks/).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from circuitlens.hooks import hooked, resid_pre_name, run_from_layer, z_name
from circuitlens.models import model_facts
from circuitlens.tasks import PromptBatch, Task, prompt_scores
from circuitlens.tasks.metrics import METRICS, model_device
from circuitlens.types import Head, parse_heads
from circuitlens.validate import check_fields

log = logging.getLogger(__name__)


@torch.no_grad()
def compute_means(
    model: Any,
    tokens: Int[Tensor, "batch pos"],
    lengths: Int[Tensor, " batch"] | None = None,
    batch_size: int = 64,
) -> Float[Tensor, "layer pos head_index d_head"]:
    """Mean head output per layer, position and head over reference prompts.

    Args:
        tokens: reference prompts, right-padded if of unequal length.
        lengths: each prompt's length in tokens; required when the prompts are padded, so
            that padding never enters a mean. Position ``p``'s mean is over prompts longer
            than ``p``.
    """
    facts = model_facts(model)
    n, width = tokens.shape
    if lengths is None:
        lengths = torch.full((n,), width)
    elif int(lengths.max()) != width or int(lengths.min()) < 1:
        raise ValueError(
            f"lengths must lie in 1..{width} with the longest prompt filling the "
            f"batch (got {lengths.min()}..{lengths.max()})"
        )
    valid = (torch.arange(width)[None, :] < lengths[:, None]).float()  # [batch, pos]
    total = torch.zeros(facts.n_layers, width, facts.n_heads, facts.d_head, dtype=torch.float64)
    names = {z_name(layer) for layer in range(facts.n_layers)}
    device = model_device(model)
    for start in range(0, n, batch_size):
        chunk = tokens[start : start + batch_size].to(device)
        w = valid[start : start + batch_size]
        _, cache = model.run_with_cache(chunk, names_filter=lambda name: name in names)
        for layer in range(facts.n_layers):
            z = cache[z_name(layer)].to("cpu", torch.float64)
            total[layer] += torch.einsum("bphd,bp->phd", z, w.double())
    count = valid.sum(0).double()[None, :, None, None]
    return (total / count).float()


def _check_means(model: Any, means: Tensor) -> None:
    f = model_facts(model)
    if means.ndim != 4 or means.shape[0] != f.n_layers or means.shape[2:] != (f.n_heads, f.d_head):
        raise ValueError(
            f"means must be [layer, pos, head_index, d_head] = [{f.n_layers}, pos, "
            f"{f.n_heads}, {f.d_head}] for this model, got {tuple(means.shape)}; "
            "compute them with compute_means(model, reference_tokens)"
        )


def _z_hook(heads: dict[int, list[int]], means: Tensor, rows: slice | None = None) -> Any:
    def hook(z: Tensor, hook: Any) -> Tensor:
        layer = int(hook.name.split(".")[1])
        if z.shape[1] > means.shape[1]:
            raise ValueError(
                f"prompts of {z.shape[1]} tokens, but the means cover only {means.shape[1]} "
                "positions: compute them on prompts at least as long"
            )
        m = means[layer, : z.shape[1]].to(z.device, z.dtype)  # [pos, head_index, d_head]
        z = z.clone()
        for h in heads.get(layer, []):
            if rows is None:
                z[:, :, h] = m[:, h]
            else:
                z[rows, :, h] = m[:, h]
        return z

    return hook


@contextmanager
def mean_ablated(
    model: Any,
    heads: Sequence[Head | str] | Head | str,
    means: Float[Tensor, "layer pos head_index d_head"],
) -> Iterator[Any]:
    """Inside the ``with``, the given heads output their mean ``z`` (per position).

    >>> import torch
    >>> from circuitlens import load_model, get_task
    >>> model = load_model("zoo:entity-tracking-student")
    >>> batch = get_task("entity_tracking", n_test=8).batch(model, "test")
    >>> means = compute_means(model, batch.ablation_tokens)
    >>> with mean_ablated(model, ["L0H1"], means):
    ...     ablated = model(batch.tokens)
    >>> bool(torch.allclose(ablated, model(batch.tokens)))  # the hook is gone after the with
    False
    """
    _check_means(model, means)
    f = model_facts(model)
    by_layer: dict[int, list[int]] = {}
    for h in parse_heads(heads):
        h.check(f.n_layers, f.n_heads)
        by_layer.setdefault(h.layer, []).append(h.head)
    hook = _z_hook(by_layer, means)
    with hooked(model, [(z_name(layer), hook) for layer in by_layer]):
        yield model


@dataclass(frozen=True)
class AblationConfig:
    """Options of :func:`ablation_sweep` (carried by its result).

    Attributes:
        metric: ``"accuracy"`` or ``"prob"`` (or ``"logit_diff"``), read at the last position.
        split, n: the prompts scored (the task's ``ablation`` prompts give the means).
        heads_per_pass: heads ablated in one forward pass (each in its own copy of the batch);
            None: 1 on a CPU, 8 on a GPU.
        baseline: ``"own"``, or the name of the model whose unablated P is the baseline.
        n_boot: bootstrap resamples of the prompts for each dP's confidence interval (0: none).
        ci_level: the interval's coverage (percentile bootstrap).
    """

    metric: str = "accuracy"
    split: str = "test"
    n: int | None = 200
    heads_per_pass: int | None = None
    baseline: str = "own"
    n_boot: int = 1000
    ci_level: float = 0.95

    def __post_init__(self) -> None:
        check_fields(self, {"n": (1, None)})
        if self.metric not in METRICS:
            raise ValueError(f"unknown metric {self.metric!r}; valid: {', '.join(METRICS)}")
        if self.n_boot < 0:
            raise ValueError(f"n_boot must be >= 0 (0: no confidence intervals), got {self.n_boot}")
        if not 0 < self.ci_level < 1:
            raise ValueError(f"ci_level must lie in (0, 1), e.g. 0.95 (got {self.ci_level})")
        if self.heads_per_pass is not None and self.heads_per_pass < 1:
            raise ValueError(f"heads_per_pass must be >= 1 (got {self.heads_per_pass})")


@dataclass
class AblationResult:
    """Per-head mean-ablation impact.

    Attributes:
        p_own: the model's unablated P.
        p_baseline: the P that impacts are measured against (``p_own`` unless ``baseline_from``).
        p_ablated: ``[layer, head]`` P with that one head mean-ablated.
        delta: ``[layer, head]`` impact ``p_baseline - p_ablated``.
        model_name: a label for plots.
        config: the sweep's options.
        delta_ci: ``[2, layer, head]`` percentile-bootstrap interval of ``delta`` over prompts
            (lower, upper), or None (``n_boot=0``, or a result saved before intervals).
    """

    p_own: float
    p_baseline: float
    p_ablated: Float[Tensor, "layer head"]
    delta: Float[Tensor, "layer head"]
    model_name: str = "model"
    config: AblationConfig = field(default_factory=AblationConfig)
    axis_names: tuple[str, str] = ("layer", "head")
    delta_ci: Float[Tensor, "2 layer head"] | None = None

    def excludes_zero(self, head: Head) -> bool | None:
        """Whether ``head``'s impact interval excludes 0 (None: no interval)."""
        if self.delta_ci is None:
            return None
        lo, hi = (
            float(self.delta_ci[0, head.layer, head.head]),
            float(self.delta_ci[1, head.layer, head.head]),
        )
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

    def to_frame(self) -> Any:
        import pandas as pd

        cols = {
            "head": [str(h) for h in self.heads],
            "layer": [h.layer for h in self.heads],
            "head_index": [h.head for h in self.heads],
            "p_ablated": self.p_ablated.flatten().tolist(),
            "delta": self.delta.flatten().tolist(),
        }
        if self.delta_ci is not None:
            cols["delta_lo"] = self.delta_ci[0].flatten().tolist()
            cols["delta_hi"] = self.delta_ci[1].flatten().tolist()
        return pd.DataFrame(cols)

    def to_dict(self) -> dict[str, Any]:
        return {
            "p_own": self.p_own,
            "p_baseline": self.p_baseline,
            "p_ablated": self.p_ablated.tolist(),
            "delta": self.delta.tolist(),
            "model_name": self.model_name,
            "config": asdict(self.config),
            "delta_ci": None if self.delta_ci is None else self.delta_ci.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AblationResult:
        return cls(
            p_own=d["p_own"],
            p_baseline=d["p_baseline"],
            p_ablated=torch.tensor(d["p_ablated"]),
            delta=torch.tensor(d["delta"]),
            model_name=d.get("model_name", "model"),
            config=AblationConfig(**d.get("config", {})),
            delta_ci=None if d.get("delta_ci") is None else torch.tensor(d["delta_ci"]),
        )


def _per_example(metric: str, logits: Tensor, batch: PromptBatch) -> Tensor:
    return METRICS[metric](logits, batch, reduce=False)


@torch.no_grad()
def ablated_scores(
    model: Any,
    batch: PromptBatch,
    heads: Sequence[Head],
    means: Tensor,
    metric: str,
    heads_per_pass: int | None = None,
    progress: bool = True,
    reduce: bool = True,
) -> Float[Tensor, " n_heads"] | Float[Tensor, "n_heads n"]:
    """Mean metric with each head of ``heads`` ablated alone (``reduce=False``: the metric of
    each prompt, ``[n_heads, n]``, for bootstrap intervals).

    Each forward pass starts at the ablated head's layer from the clean residual stream (the
    earlier blocks are skipped: they cannot see the ablation), and ``heads_per_pass`` heads of
    one layer share a pass, each in its own copy of the batch. Batching pays on a GPU; on a
    CPU it does not (see benchmarks/), so the default is 1 there and 8 on a GPU.
    """
    _check_means(model, means)
    n = len(batch)
    device = model_device(model)
    if heads_per_pass is None:
        heads_per_pass = 8 if device.type == "cuda" else 1
    tokens = batch.tokens.to(device)
    layers = sorted({h.layer for h in heads})
    names = {resid_pre_name(layer) for layer in layers}
    _, cache = model.run_with_cache(tokens, names_filter=lambda x: x in names)
    out = torch.empty(len(heads), n)
    index = {h: i for i, h in enumerate(heads)}
    chunks = [
        [h for h in heads if h.layer == layer][i : i + heads_per_pass]
        for layer in layers
        for i in range(0, sum(h.layer == layer for h in heads), heads_per_pass)
    ]
    for chunk in tqdm(chunks, desc="ablation sweep", disable=not progress):
        layer = chunk[0].layer
        m = means[layer, : tokens.shape[1]]

        def hook(z: Tensor, hook: Any, chunk: list = chunk, m: Tensor = m) -> Tensor:
            z = z.clone()
            for k, h in enumerate(chunk):
                z[k * n : (k + 1) * n, :, h.head] = m[:, h.head].to(z.device, z.dtype)
            return z

        resid = cache[resid_pre_name(layer)].repeat(len(chunk), 1, 1)  # copy k ablates chunk[k]
        with hooked(model, [(z_name(layer), hook)]):
            logits = run_from_layer(model, resid, layer)
        scores = _per_example(metric, logits, batch.repeat(len(chunk))).view(len(chunk), n).float()
        for k, h in enumerate(chunk):
            out[index[h]] = scores[k].cpu()
    return out.mean(1) if reduce else out


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
    model: Any,
    task: Task,
    metric: str = "accuracy",
    baseline_from: Any = None,
    split: str = "test",
    n: int | None = 200,
    heads_per_pass: int | None = None,
    means: Tensor | None = None,
    model_name: str | None = None,
    progress: bool = True,
    n_boot: int = 1000,
    ci_level: float = 0.95,
) -> AblationResult:
    """Mean-ablate every head alone and measure the drop in task performance.

    Args:
        metric: ``"accuracy"`` or ``"prob"`` (answer probability).
        baseline_from: another model (the student) whose unablated P is the baseline, or None.
        means: precomputed means; by default from the task's ``ablation`` reference prompts.
        n_boot, ci_level: each dP's bootstrap interval over prompts (``n_boot=0``: none).

    Returns:
        :class:`AblationResult` with ``delta[layer, head] = P_baseline - P_ablated`` and
        ``delta_ci``.
    """
    config = AblationConfig(
        metric=metric,
        split=split,
        n=n,
        heads_per_pass=heads_per_pass,
        baseline="own" if baseline_from is None else "other",
        n_boot=n_boot,
        ci_level=ci_level,
    )
    batch = task.batch(model, split, n)
    if means is None:
        if batch.ablation_tokens is None:
            raise ValueError(
                f"task {task.name!r} has no ablation reference prompts: pass means="
                "compute_means(model, reference_tokens)"
            )
        means = compute_means(model, batch.ablation_tokens)
    own = prompt_scores(model, task, split, n, metric)
    base = own if baseline_from is None else prompt_scores(baseline_from, task, split, n, metric)
    p_own, p_base = float(own.double().mean()), float(base.double().mean())
    f = model_facts(model)
    heads = [Head(layer, h) for layer in range(f.n_layers) for h in range(f.n_heads)]
    per_prompt = ablated_scores(
        model, batch, heads, means, metric, heads_per_pass, progress, reduce=False
    )
    p_abl = per_prompt.mean(1).view(f.n_layers, f.n_heads)
    delta = p_base - p_abl
    ci = None
    if n_boot:
        ci = bootstrap_delta(base, per_prompt, n_boot, ci_level).view(2, f.n_layers, f.n_heads)
    if float(delta.max() - delta.min()) == 0.0:
        log.warning(
            "every head has the same impact (%.3f): the model's %s does not depend on "
            "any single head, so a mapping by impact is uninformative",
            float(delta[0, 0]),
            metric,
        )
    name = model_name or getattr(getattr(model, "cfg", None), "model_name", None) or "model"
    return AblationResult(
        p_own=p_own,
        p_baseline=p_base,
        p_ablated=p_abl,
        delta=delta,
        model_name=str(name),
        config=config,
        delta_ci=ci,
    )
