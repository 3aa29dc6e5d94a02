"""Hook names (TransformerLens' public contract) and hook context managers that always clean up.

``blocks.{l}.attn.hook_z`` is the head output before W_O, ``[batch, pos, head_index, d_head]``;
the same names hold on a TransformerBridge and on a legacy HookedTransformer.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from torch import Tensor

from circuitlens.core.types import Model
from circuitlens.tasks.metrics import logits_at

HookFn = Callable[..., Any]


_LAYER = re.compile(r"^blocks\.(\d+)\.")


def hook_layer(hook: Any) -> int:
    """The layer of a hook point or hook name (``blocks.{l}....``): the one place hook names
    are parsed."""
    name = hook if isinstance(hook, str) else hook.name
    m = _LAYER.match(name)
    if m is None:
        raise ValueError(f"{name!r} is not a per-layer hook name (blocks.<layer>....)")
    return int(m.group(1))


def act_name(site: str, layer: int) -> str:
    """The hook of activation ``site`` in block ``layer`` (TransformerLens' ``get_act_name``):
    ``z``, ``q``, ``k``, ``v``, ``pattern`` (``blocks.{l}.attn.hook_{site}``), ``mlp_out``,
    ``resid_pre`` (``blocks.{l}.hook_{site}``)...: the one place hook names are built."""
    # imported here: importing TransformerLens takes seconds, and a caller has loaded a model
    from transformer_lens.utilities import get_act_name

    return get_act_name(site, layer)


def z_name(layer: int) -> str:
    """The hook of layer ``layer``'s head outputs (the input of W_O)."""
    return act_name("z", layer)


def resid_pre_name(layer: int) -> str:
    return act_name("resid_pre", layer)


@contextmanager
def hooked(model: Model, fwd_hooks: Sequence[tuple[str, HookFn]]) -> Iterator[Any]:
    """Add forward hooks for the body of a ``with``; they are removed on exit, also on error."""
    with model.hooks(fwd_hooks=list(fwd_hooks)):
        yield model


@contextmanager
def _blocks_skipped(model: Model, below: int) -> Iterator[None]:
    """Blocks ``0..below-1`` pass their input through unchanged (their work is discarded
    anyway when the forward restarts at block ``below``); restored on exit."""
    saved = []
    try:
        for i in range(below):
            inner = getattr(model.blocks[i], "original_component", None)
            if inner is None:
                continue
            saved.append((inner, inner.__dict__.get("forward")))
            inner.forward = lambda hidden_states, *args, **kwargs: hidden_states
        yield
    finally:
        for inner, forward in saved:
            if forward is None:
                del inner.forward
            else:
                inner.forward = forward


def run_from_layer(
    model: Model, resid: Tensor, layer: int, positions: Tensor | None = None
) -> Tensor:
    """Logits of a forward pass that starts at block ``layer`` from the residual stream
    ``resid`` (``blocks.{layer}.hook_resid_pre`` of an earlier run), skipping the compute of
    the earlier blocks. Hooks on blocks ``>= layer`` fire as usual.

    Returns ``[batch, pos, d_vocab]``, or with ``positions`` (one per row) the logits there
    only, ``[batch, d_vocab]``, computed at those positions alone (see ``logits_at``)."""
    with _blocks_skipped(model, layer):
        if positions is None:
            return model(resid, start_at_layer=layer)
        return logits_at(model, resid, positions, start_at_layer=layer)
