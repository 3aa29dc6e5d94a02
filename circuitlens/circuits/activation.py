"""Activation patching at head level.

Convention (TransformerLens' ``patching`` module): run the **corrupted** prompts and patch in
one head's activation from the **clean** run; the score is ``metric(patched logits)``. With a
metric that is high on clean behaviour, a head scores high when restoring it alone restores
the behaviour. ``component`` picks the activation: ``z`` (head output), ``q``, ``k``, ``v``
(``k``/``v`` index K/V heads under grouped-query attention) or ``pattern``. With
``per_position=True`` each (head, position) is patched alone (the pattern: each destination).

Speed (the intervention engine, :func:`circuitlens.ablation.interventions.sweep`): each forward pass
starts at the patched layer from the corrupted residual stream (the earlier blocks cannot see
the patch, so their compute is skipped); on a GPU several patches of one layer also share a pass
(the corrupted batch repeated once per patch, the metric applied to each copy's logits). On a
CPU, batching does not pay (benchmarks/), so it defaults to 1 there. The scores equal
TransformerLens' one-forward-per-head functions (``get_act_patch_attn_head_out_all_pos`` and
friends), which the tests use as the reference.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from circuitlens.ablation.interventions import Patch, Replacement, sweep
from circuitlens.core.hooks import act_name, resid_pre_name
from circuitlens.core.types import Head, Model, parse_heads
from circuitlens.core.validate import config_with_overrides
from circuitlens.models.registry import model_facts
from circuitlens.tasks.metrics import keep_positions, model_device

COMPONENTS = ("z", "q", "k", "v", "pattern")


@dataclass(frozen=True)
class PatchingConfig:
    """Options of :func:`activation_patch` (carried by its result).

    Attributes:
        component: the activation patched: ``"z"``, ``"q"``, ``"k"``, ``"v"`` or ``"pattern"``.
        per_position: patch each (head, position) alone.
        patches_per_pass: patches sharing one forward pass (each in its own copy of the
            corrupted batch); None: 1 on a CPU, 8 on a GPU (a result records the number used).
        heads: patch only these heads (``k``/``v``: K/V heads; kept as ``"L3H5"`` strings);
            the others score NaN. None: every head.
    """

    component: str = "z"
    per_position: bool = False
    patches_per_pass: int | None = None
    heads: Sequence[Head | str] | None = None

    def __post_init__(self) -> None:
        # patches_per_pass is checked by activation_patch: attribution patching's results
        # record 0 (no patching pass)
        if self.component not in COMPONENTS:
            raise ValueError(
                f"unknown component {self.component!r}; valid: {', '.join(COMPONENTS)}"
            )
        if self.heads is not None:  # "L3H5" strings: a config that serialises as it reads
            heads = tuple(str(h) for h in parse_heads(list(self.heads)))
            object.__setattr__(self, "heads", heads)


@dataclass
class PatchingResult:
    """Scores of every patch: ``[layer, head]`` or ``[layer, head, pos]``.

    Attributes:
        scores: the metric with that activation patched from clean into corrupted.
        clean_score, corrupted_score: the metric of the unpatched runs.
        axis_names: names of the score axes.
        config: the options of the run.
        exact: ``[layer, head]`` True where the score was measured; False where it is an
            attribution estimate (a screened run) or was not asked for; None: all measured.
    """

    scores: Float[Tensor, "..."]
    clean_score: float
    corrupted_score: float
    axis_names: tuple[str, ...]
    config: PatchingConfig = field(default_factory=PatchingConfig)
    exact: Tensor | None = None

    def to_frame(self) -> Any:
        import pandas as pd

        idx = torch.cartesian_prod(*[torch.arange(n) for n in self.scores.shape])
        idx = idx.reshape(-1, self.scores.ndim)
        frame = pd.DataFrame(idx.numpy(), columns=list(self.axis_names))
        frame.insert(0, "name", [f"L{r[0]}H{r[1]}" for r in idx.tolist()])
        frame["score"] = self.scores.flatten().tolist()
        return frame

    def to_dict(self) -> dict[str, Any]:
        return {
            "scores": self.scores.tolist(),
            "clean_score": self.clean_score,
            "corrupted_score": self.corrupted_score,
            "axis_names": list(self.axis_names),
            "config": asdict(self.config),
        }


def _check_patch_inputs(clean: Tensor, corrupted: Tensor, patches_per_pass: int | None) -> None:
    if clean.shape != corrupted.shape:
        raise ValueError(
            f"clean and corrupted batches must have the same shape: "
            f"{tuple(clean.shape)} vs {tuple(corrupted.shape)}"
        )
    if patches_per_pass is not None and patches_per_pass < 1:
        raise ValueError(f"patches_per_pass must be >= 1 (got {patches_per_pass})")


def _scores(
    patches: list[tuple[Head, int | None]], values: Sequence[Any], shape: tuple[int, ...]
) -> Tensor:
    """Each patch's value at its ``[layer, head(, pos)]``; NaN where nothing was patched."""
    n_heads, n_pos = shape[1], shape[2] if len(shape) == 3 else 1
    scores = torch.full((shape[0] * n_heads * n_pos,), float("nan"))
    for (h, p), value in zip(patches, values, strict=True):
        scores[(h.layer * n_heads + h.head) * n_pos + (p or 0)] = float(value)
    return scores.view(shape)


def activation_patch(
    model: Model,
    clean: Int[Tensor, "batch pos"],
    corrupted: Int[Tensor, "batch pos"],
    metric: Callable[[Tensor], Tensor],
    config: PatchingConfig | None = None,
    *,
    positions: Int[Tensor, " batch"] | None = None,
    progress: bool = True,
    **overrides: Any,
) -> PatchingResult:
    """Patch each head's ``component`` from the clean run into the corrupted run.

    Args:
        clean, corrupted: token batches of the same shape.
        metric: ``logits [batch, pos, d_vocab] -> scalar`` (TransformerLens' signature).
        config: a :class:`PatchingConfig`; ``**overrides`` replace its fields by name
            (``component="q"``, ``per_position=True``, ``patches_per_pass=8``,
            ``heads=["L1H2"]``); an unknown name is a :class:`ConfigError`.
        positions: the one position per prompt the metric reads (e.g. the task's ``last``):
            logits are then computed there only and ``metric`` gets ``[batch, d_vocab]``
            (the metrics of :func:`circuitlens.tasks.make_metric` accept both).

    Returns:
        :class:`PatchingResult` with ``scores[layer, head]`` (or ``[layer, head, pos]``);
        with ``heads`` set, ``exact`` marks the patched heads.
    """
    cfg = config_with_overrides(PatchingConfig, config, overrides)
    component, per_position = cfg.component, cfg.per_position
    patches_per_pass = cfg.patches_per_pass
    _check_patch_inputs(clean, corrupted, patches_per_pass)
    f = model_facts(model)
    n_heads = f.n_kv_heads if component in ("k", "v") else f.n_heads
    device = model_device(model)
    clean, corrupted = clean.to(device), corrupted.to(device)
    width = corrupted.shape[1]
    if patches_per_pass is None:
        patches_per_pass = 8 if device.type == "cuda" else 1
    names = {act_name(component, layer) for layer in range(f.n_layers)}
    resid_names = {resid_pre_name(layer) for layer in range(f.n_layers)}
    keep: dict[str, Any] = {}
    if positions is not None:  # the unpatched runs compute their logits at positions only
        positions = positions.to(device)
        keep, gather = keep_positions(model, positions)
    with torch.no_grad():
        clean_logits, cache = model.run_with_cache(clean, names_filter=lambda x: x in names, **keep)
        corrupted_logits, corr = model.run_with_cache(
            corrupted, names_filter=lambda x: x in resid_names, **keep
        )
    if positions is not None:
        clean_logits, corrupted_logits = gather(clean_logits), gather(corrupted_logits)
    # every patch: (head, position or None), each in its own copy of the corrupted batch, run
    # from its layer (earlier blocks are unaffected)
    wanted = None if cfg.heads is None else {(h.layer, h.head) for h in parse_heads(cfg.heads)}
    patches = [
        (Head(layer, h), p)
        for layer in range(f.n_layers)
        for h in range(n_heads)
        if wanted is None or (layer, h) in wanted
        for p in (range(width) if per_position else [None])
    ]
    copies = [[Replacement(Patch(cache), [h], site=component, position=p)] for h, p in patches]
    resid = {layer: corr[resid_pre_name(layer)] for layer in range(f.n_layers)}
    bar = f"patch {component}" if progress else None
    values = sweep(model, resid, copies, metric, patches_per_pass, positions, bar)
    shape = (f.n_layers, n_heads, width) if per_position else (f.n_layers, n_heads)
    axes = ("layer", "head", "pos") if per_position else ("layer", "head")
    return PatchingResult(
        scores=_scores(patches, values, shape),
        clean_score=float(metric(clean_logits)),
        corrupted_score=float(metric(corrupted_logits)),
        axis_names=axes,
        config=replace(cfg, patches_per_pass=patches_per_pass),
        exact=None
        if wanted is None
        else torch.tensor(
            [[(layer, h) in wanted for h in range(n_heads)] for layer in range(f.n_layers)]
        ),
    )
