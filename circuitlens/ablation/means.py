"""Mean ablation of attention heads: the reference means and the context manager.

Mean ablation replaces a head's output ``z`` (the input of W_O, hook ``blocks.{l}.attn.hook_z``)
by its mean over a reference set, separately at each token position. Prompts of unequal length
(right-padded) are allowed: the mean at a position is over the reference prompts long enough to
have it. The replacement is the intervention engine's
:class:`circuitlens.ablation.interventions.Mean`;
the sweep that measures every head's impact is :mod:`circuitlens.ablation.sweep`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from circuitlens.ablation.interventions import Mean, Replacement, replaced
from circuitlens.core.hooks import z_name
from circuitlens.core.types import Head, Model, parse_heads
from circuitlens.models.registry import model_facts
from circuitlens.tasks.metrics import model_device, no_logits


@torch.no_grad()
def compute_means(
    model: Model,
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
        _, cache = model.run_with_cache(
            chunk, names_filter=lambda name: name in names, **no_logits(model)
        )
        for layer in range(facts.n_layers):
            z = cache[z_name(layer)].to("cpu", torch.float64)
            total[layer] += torch.einsum("bphd,bp->phd", z, w.double())
    count = valid.sum(0).double()[None, :, None, None]
    return (total / count).float()


def check_means(model: Model, means: Tensor) -> None:
    """Refuse ``means`` that are not ``[layer, pos, head_index, d_head]`` for ``model`` (its
    layers, heads and head width), with a ``ValueError`` that says how to compute them."""
    f = model_facts(model)
    if means.ndim != 4 or means.shape[0] != f.n_layers or means.shape[2:] != (f.n_heads, f.d_head):
        raise ValueError(
            f"means must be [layer, pos, head_index, d_head] = [{f.n_layers}, pos, "
            f"{f.n_heads}, {f.d_head}] for this model, got {tuple(means.shape)}; "
            "compute them with compute_means(model, reference_tokens)"
        )


@contextmanager
def mean_ablated(
    model: Model,
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
    check_means(model, means)
    f = model_facts(model)
    chosen = [h.check(f.n_layers, f.n_heads) for h in parse_heads(heads)]
    with replaced(model, [[Replacement(Mean(means), chosen)]]):
        yield model
