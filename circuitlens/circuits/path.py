"""Path patching at head level (Wang et al. 2022; Prakash et al. 2024).

How much does sender head ``s`` matter *through* the receivers' inputs alone? Three runs on
the clean prompts:

1. the clean run and the corrupted run, caching every head's output ``z``;
2. the clean prompts with the sender's ``z`` taken from the corrupted run and every other head
   frozen to its clean ``z``; the receivers' inputs (``q``, ``k`` or ``v`` of the receiver heads,
   at the receiver positions) are recorded;
3. the clean prompts again, with only the receivers' inputs replaced by the values of run 2.

With ``via="logits"`` the receiver is the unembedding: run 2 also freezes every MLP output to
its clean value, so only the sender's direct contribution to the final residual changes, and
the metric is read from run 2.

Score per sender: the mean over prompts of ``(p_patched(y) - p_clean(y)) / p_clean(y)`` with
``y`` the clean answer's first token (most negative = most important), as in Prakash et al.,
over the prompts the model answers correctly (where ``p_clean`` is near 0 the ratio explodes;
all prompts are used when the model gets none right).

Choices of ours: in runs 2 and 3 MLPs recompute (except for ``via="logits"``); senders are
patched at every position, receivers only at ``positions`` (one index per prompt); under
grouped-query attention a ``k``/``v`` receiver is the K/V head the receiver query head reads,
so patching it reaches its group siblings too. Runs 2 and 3 are replacements of the
intervention engine (:mod:`circuitlens.ablation.interventions`), several senders to a pass
(:class:`PathPatchingConfig`'s ``senders_per_pass``), each in its own copy of the prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from einops import rearrange
from torch import Tensor
from tqdm.auto import tqdm

from circuitlens.ablation.interventions import Patch, Replacement, replaced, run_replaced
from circuitlens.core.hooks import act_name
from circuitlens.core.types import Head, Model, parse_heads
from circuitlens.core.validate import check_fields, config_with_overrides
from circuitlens.models.registry import model_facts
from circuitlens.tasks import PromptBatch
from circuitlens.tasks.metrics import (
    accuracy,
    answer_prob,
    keep_positions,
    make_metric,
    model_device,
    no_logits,
)

VIA = ("q", "k", "v", "logits")


@dataclass(frozen=True)
class PathPatchingConfig:
    """Options of :func:`path_patch`.

    Attributes:
        via: the receivers' input the senders reach: ``"q"``, ``"k"``, ``"v"``, or
            ``"logits"`` (the direct effect; receivers ignored).
        position: the named task position where the receivers are patched.
        senders_per_pass: senders patched in one forward pass (each in its own copy of the
            prompts).
    """

    via: str = "q"
    position: str = "last"
    senders_per_pass: int = 8

    def __post_init__(self) -> None:
        check_fields(self, {"senders_per_pass": (1, None)})
        if self.via not in VIA:
            raise ValueError(f"unknown via {self.via!r}; valid: {', '.join(VIA)}")


@dataclass
class PathPatchingResult:
    """Per-sender scores.

    Attributes:
        senders: the heads patched; scores: ``[n_senders]`` mean relative probability change.
        receivers, via, position: the receiving end of the paths.
    """

    senders: list[Head]
    scores: Tensor
    receivers: list[Head]
    via: str
    position: str

    def to_frame(self) -> Any:
        import pandas as pd

        return pd.DataFrame(
            {"sender": [str(h) for h in self.senders], "score": self.scores.tolist()}
        )

    def top(self, k: int) -> list[Head]:
        """The ``k`` senders with the most negative scores."""
        order = torch.argsort(self.scores, stable=True)[:k]
        return [self.senders[i] for i in order.tolist()]


def _receiver_index(h: Head, via: str, group: int) -> int:
    return h.head // group if via in ("k", "v") else h.head


def _check(
    model: Model, batch: PromptBatch, senders: list[Head], receivers: list[Head], via: str
) -> None:
    f = model_facts(model)
    if not senders:
        raise ValueError("no sender heads: name at least one")
    if via != "logits" and not receivers:
        raise ValueError(
            f"no receiver heads for via={via!r}: name at least one (or use via='logits')"
        )
    for h in senders + receivers:
        h.check(f.n_layers, f.n_heads)
    if batch.corrupted_tokens is None:
        raise ValueError("the batch has no corrupted prompts: path patching needs them")
    if batch.corrupted_tokens.shape != batch.tokens.shape:
        raise ValueError(
            f"clean and corrupted batches must have the same shape: "
            f"{tuple(batch.tokens.shape)} vs {tuple(batch.corrupted_tokens.shape)}"
        )


def _received_prob(
    model: Model,
    batch: PromptBatch,
    copies: list[list[Replacement]],
    receivers: list[Head],
    via: str,
    pos: Tensor,
) -> Tensor:
    """Run 2 (the copies: every head frozen clean, one sender corrupted) keeps the receivers'
    ``via`` inputs; run 3 patches them into a clean run at ``pos``: the answer probability,
    ``[copy, prompt]``."""
    f = model_facts(model)
    device = model_device(model)
    tokens = batch.tokens.to(device)
    last = batch.positions["last"].to(device)
    m = len(copies)
    inputs = {act_name(via, h.layer) for h in receivers}
    with torch.no_grad(), replaced(model, copies):
        _, sent = model.run_with_cache(
            tokens.repeat(m, 1), names_filter=lambda x: x in inputs, **no_logits(model)
        )
    received = Replacement(
        Patch(sent),
        [Head(h.layer, _receiver_index(h, via, f.group_size)) for h in receivers],
        site=via,
        position=pos.repeat(m),
    )
    (p,) = run_replaced(
        model,
        tokens.repeat(m, 1),
        [[received]],
        make_metric("prob", batch.repeat(m), reduce=False),
        last.repeat(m),
    )
    return rearrange(p, "(copy prompt) -> copy prompt", copy=m)


def path_patch(
    model: Model,
    batch: PromptBatch,
    senders: Sequence[Head | str],
    receivers: Sequence[Head | str] = (),
    config: PathPatchingConfig | None = None,
    *,
    progress: bool = True,
    **overrides: Any,
) -> PathPatchingResult:
    """Path-patching score of each sender through the receivers' ``via`` input.

    Args:
        batch: clean prompts with their ``corrupted_tokens`` (see :class:`PromptBatch`).
        senders: heads whose corrupted output is sent; receivers: heads whose input receives
            it (ignored for ``via="logits"``).
        config: a :class:`PathPatchingConfig`; ``**overrides`` replace its fields by name
            (``via="logits"``, ``position="last"``, ``senders_per_pass=4``); an unknown name is
            a :class:`ConfigError`.

    Returns:
        :class:`PathPatchingResult` with one score per sender.
    """
    cfg = config_with_overrides(PathPatchingConfig, config, overrides)
    via, position, senders_per_pass = cfg.via, cfg.position, cfg.senders_per_pass
    senders, receivers = parse_heads(list(senders)), parse_heads(list(receivers))
    _check(model, batch, senders, receivers, via)
    if position not in batch.positions:
        raise ValueError(
            f"position {position!r} is not defined by this task; valid: {sorted(batch.positions)}"
        )
    f = model_facts(model)
    device = model_device(model)
    tokens = batch.tokens.to(device)
    pos = batch.positions[position].to(device)
    layers = range(f.n_layers)
    z_names = {act_name("z", layer) for layer in layers}
    mlp_names = {act_name("mlp_out", layer) for layer in layers}
    last = batch.positions["last"].to(device)
    keep, gather = keep_positions(model, last)  # the metric reads the last position only
    with torch.no_grad():
        clean_logits, clean = model.run_with_cache(
            tokens, names_filter=lambda x: x in z_names or x in mlp_names, **keep
        )
        clean_logits = gather(clean_logits)
        _, corr = model.run_with_cache(
            batch.corrupted_tokens.to(device),
            names_filter=lambda x: x in z_names,
            **no_logits(model),
        )
    p_clean = answer_prob(clean_logits, batch, reduce=False)
    # the relative change is unstable where p_clean is near 0: score the prompts the model gets
    # right (all prompts if it gets none right)
    right = accuracy(clean_logits, batch, reduce=False).bool()
    keep = right if bool(right.any()) else torch.ones_like(right)
    # run 2 freezes every head to its clean z, the sender to its corrupted z (and, via the
    # logits, every MLP to its clean output); run 3 patches the receivers' inputs from run 2
    frozen = [Replacement(Patch(clean), layers=layers)]
    if via == "logits":
        frozen.append(Replacement(Patch(clean), layers=layers, site="mlp_out"))
    scores = torch.empty(len(senders))
    chunks = [senders[i : i + senders_per_pass] for i in range(0, len(senders), senders_per_pass)]
    for c, chunk in enumerate(tqdm(chunks, desc=f"path patch via {via}", disable=not progress)):
        copies = [[*frozen, Replacement(Patch(corr), [s])] for s in chunk]
        if via == "logits":
            prob = make_metric("prob", batch, reduce=False)
            p = torch.stack(run_replaced(model, tokens, copies, prob, last))
        else:
            p = _received_prob(model, batch, copies, receivers, via, pos)
        rel = ((p - p_clean[None]) / p_clean[None].clamp(min=1e-12))[:, keep].mean(1)
        scores[c * senders_per_pass : c * senders_per_pass + len(chunk)] = rel.cpu()
    return PathPatchingResult(
        senders=senders, scores=scores, receivers=receivers, via=via, position=position
    )
