"""The intervention engine: run a model with head activations replaced.

A :class:`Replacement` names heads (or whole layers) at one hook site, ``z`` by default (the head
outputs before W_O, ``blocks.{l}.attn.hook_z``, one per query head under grouped-query
attention), and the value they take: the activation of another run on the same prompts
(:class:`Patch`), a per-position mean over reference prompts (:class:`Mean`), zero
(:class:`Zero`) or the activation scaled (:class:`Scale`).

Several *copies* share one forward pass: the prompts are repeated once per copy, and copy ``k``
(a list of replacements, applied in order) acts on its own rows only. Activation patching, the
mean-ablation sweeps, ``mean_ablated`` and path patching are callers of:

- :func:`replaced`: the replacements as hooks, for the body of a ``with``;
- :func:`run_replaced`: one pass, from the tokens or from a layer's residual stream (blocks
  before that layer cannot see a replacement at it or later, so their compute is skipped), and
  the metric of each copy, from logits at the scored positions only;
- :func:`sweep`: every copy alone, each pass starting at its copies' layer, ``per_pass`` copies
  of one layer (e.g. each head of the layer ablated in its own copy) to a pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from circuitlens.core.hooks import HookFn, act_name, hook_layer, hooked, run_from_layer
from circuitlens.core.types import Head, Model, parse_heads
from circuitlens.tasks.metrics import logits_at, model_logits

# the head axis of each site with heads (pattern: [batch, head_index, dest, src])
HEAD_AXIS = {"z": 2, "q": 2, "k": 2, "v": 2, "pattern": 1}


@dataclass(frozen=True, eq=False)
class Patch:
    """The activation of another run on the same prompts: ``cache[hook name]``, ``[batch, ...]``
    (e.g. the cache of ``run_with_cache``)."""

    cache: Mapping[str, Tensor] | Any


@dataclass(frozen=True, eq=False)
class Mean:
    """The mean over reference prompts at each position: ``means[layer, pos, ...]`` (for ``z``,
    ``[layer, pos, head_index, d_head]`` from
    :func:`circuitlens.ablation.means.compute_means`)."""

    means: Tensor


@dataclass(frozen=True)
class Zero:
    """Zero."""


@dataclass(frozen=True)
class Scale:
    """The activation times ``factor``."""

    factor: float


Value = Patch | Mean | Zero | Scale


@dataclass(frozen=True, eq=False)
class Replacement:
    """Heads (or whole layers) of one hook site and the value they take.

    Attributes:
        value: :class:`Patch`, :class:`Mean`, :class:`Zero` or :class:`Scale`.
        heads: the heads replaced (``"L3H5"`` strings allowed); ``head`` indexes the site's head
            axis: a query head for ``z``, ``q``, ``pattern``, a K/V head for ``k``, ``v``.
        layers: layers whose whole activation at ``site`` is replaced (every head, or a site
            without heads such as ``mlp_out``).
        site: the activation, by TransformerLens' short name
            (:func:`circuitlens.core.hooks.act_name`).
        position: every position (None), one position (``pattern``: the destination), or one
            per prompt, ``[batch]``.
    """

    value: Value
    heads: Sequence[Head | str] = ()
    layers: Sequence[int] = ()
    site: str = "z"
    position: int | Int[Tensor, " batch"] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "heads", tuple(parse_heads(list(self.heads))))
        object.__setattr__(self, "layers", tuple(self.layers))
        if self.heads and self.site not in HEAD_AXIS:
            raise ValueError(
                f"site {self.site!r} has no head axis: replace whole layers there (layers=); "
                f"sites with heads: {', '.join(HEAD_AXIS)}"
            )
        if isinstance(self.value, Mean) and self.site == "pattern":
            raise ValueError("a mean is per position: it replaces z, q, k, v, ..., not a pattern")

    def at(self, layer: int) -> list[int | None]:
        """What this replaces at ``layer``: None for the whole activation, else head indices."""
        whole: list[int | None] = [None] if layer in self.layers else []
        return whole + [h.head for h in self.heads if h.layer == layer]

    @property
    def touched(self) -> set[int]:
        """The layers this replacement acts at."""
        return set(self.layers) | {h.layer for h in self.heads}


Copy = Sequence[Replacement]


def _index(r: Replacement, head: int | None, n: int, device: torch.device) -> tuple:
    """Index of the replaced entries in one copy's activation (``n`` rows)."""
    pos_axis = 2 if r.site == "pattern" else 1
    head_axis = HEAD_AXIS.get(r.site, 0)
    idx: list[Any] = [slice(None)] * (max(pos_axis, head_axis) + 1)
    if head is not None:
        idx[head_axis] = head
    if isinstance(r.position, Tensor):  # one position per prompt
        idx[0] = torch.arange(n, device=device)
        idx[pos_axis] = r.position.to(device)
    elif r.position is not None:
        idx[pos_axis] = r.position
    return tuple(idx)


def _write(act: Tensor, r: Replacement, layer: int, head: int | None, name: str) -> None:
    """Replace, in place, the entries of ``act`` (one copy's rows) that ``r`` names."""
    idx = _index(r, head, act.shape[0], act.device)
    v = r.value
    if isinstance(v, Patch):
        act[idx] = v.cache[name][idx]
    elif isinstance(v, Mean):
        width = act.shape[1]
        if width > v.means.shape[1]:
            raise ValueError(
                f"prompts of {width} tokens, but the means cover only {v.means.shape[1]} "
                "positions: compute them on prompts at least as long"
            )
        m = v.means[layer, :width].to(act.device, act.dtype)  # [pos, ...]: no batch axis
        act[idx] = m[idx[1:]]
    elif isinstance(v, Zero):
        act[idx] = 0
    else:
        act[idx] = act[idx] * v.factor


def _hook(copies: Sequence[Copy], site: str, layer: int) -> HookFn:
    name = act_name(site, layer)

    def hook(act: Tensor, hook: Any) -> Tensor:
        if act.shape[0] % len(copies):
            raise ValueError(
                f"a batch of {act.shape[0]} rows cannot hold {len(copies)} equal copies"
            )
        n = act.shape[0] // len(copies)
        act = act.clone()
        for k, copy in enumerate(copies):
            rows = act[k * n : (k + 1) * n]  # a view: writes land in act
            for r in copy:
                if r.site == site:
                    for head in r.at(layer):
                        _write(rows, r, layer, head, name)
        return act

    return hook


@contextmanager
def replaced(model: Model, copies: Sequence[Copy]) -> Iterator[Any]:
    """Inside the ``with``, the model applies each copy's replacements to its rows: the batch
    is ``len(copies)`` copies of the prompts, copy ``k`` in rows ``k * n`` to ``(k + 1) * n``
    (one copy: the whole batch). The hooks are removed on exit, also on error."""
    sites = sorted({(r.site, layer) for copy in copies for r in copy for layer in r.touched})
    with hooked(model, [(act_name(s, layer), _hook(copies, s, layer)) for s, layer in sites]):
        yield model


@torch.no_grad()
def run_replaced(
    model: Model,
    input: Int[Tensor, "batch pos"] | Float[Tensor, "batch pos d_model"],
    copies: Sequence[Copy],
    metric: Callable[[Tensor], Tensor],
    positions: Int[Tensor, " batch"] | None = None,
    layer: int | None = None,
) -> list[Tensor]:
    """One forward pass of ``input`` repeated once per copy, each copy with its replacements.

    Args:
        input: tokens, or with ``layer`` the residual stream entering that block
            (``blocks.{layer}.hook_resid_pre`` of a run without the replacements): the earlier
            blocks are skipped, so no replacement may sit there.
        metric: one copy's logits -> its score: ``[batch, d_vocab]`` at ``positions``, computed
            there only, or ``[batch, pos, d_vocab]`` without ``positions``.
        positions: the one scored position of each prompt, or None.

    Returns:
        The metric of each copy, in order.
    """
    if layer is not None:
        below = [r for copy in copies for r in copy if min(r.touched, default=layer) < layer]
        if below:
            raise ValueError(
                f"a run from layer {layer} skips the earlier blocks, but a replacement sits at "
                f"layer {min(below[0].touched)}"
            )
    k, n = len(copies), input.shape[0]
    x = input.repeat(k, *[1] * (input.ndim - 1))  # copy i: rows i*n..(i+1)*n
    pos = None if positions is None else positions.repeat(k)
    with replaced(model, copies):
        if layer is not None:
            logits = run_from_layer(model, x, layer, pos)
        elif pos is None:
            logits = model_logits(model, x)
        else:
            logits = logits_at(model, x, pos)
    return [metric(logits[i * n : (i + 1) * n]) for i in range(k)]


def sweep(
    model: Model,
    resid: Mapping[int, Float[Tensor, "batch pos d_model"]],
    copies: Sequence[Copy],
    metric: Callable[[Tensor], Tensor],
    per_pass: int = 1,
    positions: Int[Tensor, " batch"] | None = None,
    progress: str | None = "sweep",
) -> list[Tensor]:
    """The metric of each copy run alone, from the residual stream entering the first layer it
    touches (``resid[layer]``); up to ``per_pass`` copies of one layer share a pass
    (:func:`run_replaced`). Returns the metric of each copy, in order. ``progress``: the
    progress bar's label, or None for no bar."""
    start: list[int] = []
    by_layer: dict[int, list[int]] = {}
    for i, copy in enumerate(copies):
        layers = {layer for r in copy for layer in r.touched}
        if not layers:
            raise ValueError(f"copy {i} replaces nothing: each copy runs from its first layer")
        start.append(min(layers))
        by_layer.setdefault(start[-1], []).append(i)
    chunks = [
        ids[j : j + per_pass]
        for layer in sorted(by_layer)
        for ids in [by_layer[layer]]
        for j in range(0, len(ids), per_pass)
    ]
    out: list[Tensor] = [torch.empty(0)] * len(copies)
    for chunk in tqdm(chunks, desc=progress or "", disable=progress is None):
        layer = start[chunk[0]]
        scores = run_replaced(
            model, resid[layer], [copies[i] for i in chunk], metric, positions, layer
        )
        for i, score in zip(chunk, scores, strict=True):
            out[i] = score
    return out


class ZTaps:
    """Every layer's ``z`` opened for its gradient (attribution patching, screening): hooks that
    add a zero to ``z`` (not a leaf swapped in), so that the gradient by the zero is the total
    derivative by ``z``, through the later heads too (a detached leaf would cut those paths).
    After a forward with :attr:`hooks` and a backward, ``z[layer]`` holds the layer's head
    outputs and :meth:`deltas` the tensors to differentiate by."""

    def __init__(self, n_layers: int) -> None:
        self.n_layers = n_layers
        self.z: dict[int, Tensor] = {}
        self.delta: dict[int, Tensor] = {}
        self.hooks: list[tuple[str, HookFn]] = [
            (act_name("z", layer), self._open) for layer in range(n_layers)
        ]

    def _open(self, z: Tensor, hook: Any) -> Tensor:
        layer = hook_layer(hook)
        self.z[layer] = z.detach()
        self.delta[layer] = torch.zeros_like(z, requires_grad=True)
        return z + self.delta[layer]

    def deltas(self) -> list[Tensor]:
        """The added zeros, layer by layer: ``torch.autograd.grad(value, taps.deltas())``."""
        return [self.delta[layer] for layer in range(self.n_layers)]
