"""A mean-ablation sweep's result (:class:`AblationResult`): each head's impact, its interval,
which heads were measured and which estimated, the per-prompt impacts, with the options the sweep
ran with; ``to_dict``/``from_dict`` write and read it (in the setups and results saved)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from circuitlens.ablation.config import AblationConfig
from circuitlens.core.types import Head


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
