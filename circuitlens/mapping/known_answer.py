"""A known answer to check head maps against: a copy of a model whose query heads are relabelled
within each layer (inside their K/V group, W_O's columns with them: the same function), perturbed
slightly if asked (seeded weight noise), and the fraction of a map's student heads sent to their
own relabelled copy (:func:`recovery`).

Two readings go with it: the ``own`` baseline, the model mapped to itself
(:func:`identity_permutation`: every head is its own answer; what a method recovers there is
its ceiling, below 1 where the cost ties heads, e.g. heads of equal impact), and what the noise
does to behaviour (:func:`behaviour_change`: the copy's accuracy and the KL divergence of its
next-token distribution from the original's on the task's prompts), so that a noise level reads
as a change of behaviour rather than a number.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from circuitlens.core.types import Head, HeadMap, Model
from circuitlens.models.registry import model_facts
from circuitlens.tasks import Task, tokenize_prompts
from circuitlens.tasks.metrics import accuracy, logits_at, model_device

_ATTN = re.compile(
    r"layers\.(\d+)\.(?:self_attn|attn)\.(q_proj|k_proj|v_proj|o_proj)\.(weight|bias)$"
)


def _attention_params(hf: Any) -> dict[tuple[int, str, str], Tensor]:
    """``{(layer, "q_proj", "weight"): parameter, ...}`` of a Hugging Face model (the bridge's
    wrapped names read without their ``._original_component`` segments)."""
    out = {}
    for name, p in hf.named_parameters():
        m = _ATTN.search(name.replace("._original_component", ""))
        if m:
            out[int(m[1]), m[2], m[3]] = p
    return out


def _layer_order(
    n_heads: int, n_kv: int, groups: bool, g: torch.Generator
) -> tuple[list[int], list[int]]:
    """``(q_src, kv_src)``: the copy's query head ``i`` is the original's ``q_src[i]``, its K/V
    head ``j`` the original's ``kv_src[j]``; query heads stay inside their K/V group."""
    size = n_heads // n_kv
    kv_src = torch.randperm(n_kv, generator=g).tolist() if groups else list(range(n_kv))
    q_src = []
    for j in kv_src:
        q_src += [j * size + int(i) for i in torch.randperm(size, generator=g)]
    return q_src, kv_src


def _permute_rows(p: Tensor, src: list[int], dim: int) -> None:
    """Reorder the head blocks of ``p`` along ``dim`` (``len(src)`` equal blocks) in place."""
    blocks = p.data.unflatten(dim, (len(src), -1))
    p.data.copy_(blocks.index_select(dim, torch.tensor(src, device=p.device)).flatten(dim, dim + 1))


@torch.no_grad()
def permuted_copy(
    model: Model, seed: int = 0, noise: float = 0.0, groups: bool = True
) -> tuple[Any, dict[Head, Head]]:
    """A deep copy computing the same function with its query heads relabelled in each layer.

    Query heads are permuted inside their K/V group (the rows of ``q_proj`` of the group's
    heads, and the matching columns of ``o_proj``); with ``groups`` the K/V groups are
    permuted too, as wholes (``k_proj``/``v_proj`` rows with their query heads). Then, if
    ``noise > 0``, every parameter gets seeded Gaussian noise of ``noise`` times its own RMS.

    Args:
        model: a bridge over a Hugging Face model, or a Hugging Face model (Llama-like: split
            ``q_proj``/``k_proj``/``v_proj``/``o_proj``).
        seed: draws the permutation and the noise.
        noise: the noise's size relative to each parameter's RMS (0: an exact relabelling).
        groups: permute the K/V groups as wholes too.

    Returns:
        ``(copy, permutation)``: ``permutation[h]`` is the head of the copy that is ``h``.
    """
    if noise < 0:
        raise ValueError(f"noise is a relative size >= 0 (got {noise})")
    out = copy.deepcopy(model)
    hf = getattr(out, "original_model", out)
    cfg = hf.config
    n_heads = int(cfg.num_attention_heads)
    n_kv = int(getattr(cfg, "num_key_value_heads", None) or n_heads)
    params = _attention_params(hf)
    n_layers = 1 + max((k[0] for k in params), default=-1)
    if n_layers == 0:
        raise ValueError(
            f"no q_proj/k_proj/v_proj/o_proj found in {type(hf).__name__}: permuted_copy "
            "supports models with split attention projections (Llama, Qwen, Gemma, SmolLM2)"
        )
    g = torch.Generator().manual_seed(seed)
    permutation = {}
    for layer in range(n_layers):
        q_src, kv_src = _layer_order(n_heads, n_kv, groups, g)
        for (lay, proj, kind), p in params.items():
            if lay != layer:
                continue
            if proj == "q_proj":
                _permute_rows(p, q_src, 0)
            elif proj in ("k_proj", "v_proj"):
                _permute_rows(p, kv_src, 0)
            elif kind == "weight":  # o_proj: its input columns (its bias is the sum's)
                _permute_rows(p, q_src, 1)
        permutation.update({Head(layer, src): Head(layer, i) for i, src in enumerate(q_src)})
    if noise > 0:
        for p in hf.parameters():
            rms = p.data.double().square().mean().sqrt().float()
            eps = torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.device, p.dtype)
            p.data.add_(eps * (noise * rms).to(p.dtype))
    return out, permutation


def recovery(head_map: HeadMap, permutation: dict[Head, Head]) -> float:
    """The fraction of the map's student heads paired with their own relabelled copy."""
    if not len(head_map):
        raise ValueError("the map has no pairs")
    hits = sum(permutation.get(s) == t for s, t in head_map.pairs)
    return hits / len(head_map)


def identity_permutation(model: Model) -> dict[Head, Head]:
    """Every head of ``model`` to itself: the answer when a model is mapped to itself (the
    ``own`` baseline of the known-answer benchmark)."""
    f = model_facts(model)
    return {Head(layer, h): Head(layer, h) for layer in range(f.n_layers) for h in range(f.n_heads)}


@dataclass(frozen=True)
class BehaviourChange:
    """How a copy's behaviour differs from the original's on a task's prompts.

    Attributes:
        accuracy: the copy's accuracy.
        original_accuracy: the original's, on the same prompts.
        kl: mean over prompts of ``KL(P_original || P_copy)`` (nats) of the next-token
            distributions at each prompt's last position (the answer's).
        n: prompts scored.
    """

    accuracy: float
    original_accuracy: float
    kl: float
    n: int

    def to_dict(self) -> dict[str, float | int]:
        return {
            "accuracy": self.accuracy,
            "original_accuracy": self.original_accuracy,
            "kl": self.kl,
            "n": self.n,
        }


@torch.no_grad()
def behaviour_change(
    original: Any,
    copy: Any,
    task: Task,
    split: str = "test",
    n: int | None = 64,
    batch_size: int = 64,
) -> BehaviourChange:
    """The copy's accuracy and its KL divergence from the original on ``task``'s prompts.

    Both models must read the same tokens (a copy made by :func:`permuted_copy` does); the
    prompts are the first ``n`` of ``split``, tokenized by the original.

    Returns:
        :class:`BehaviourChange` (``kl`` 0 for an exact relabelling, up to float rounding).
    """
    prompts = task.split(split, n)
    if not prompts:
        raise ValueError(f"the task's {split!r} split has no prompts to compare the models on")
    kl, acc_copy, acc_orig = [], [], []
    for start in range(0, len(prompts), batch_size):
        batch = tokenize_prompts(original, prompts[start : start + batch_size])
        last = batch.positions["last"]
        lo = logits_at(original, batch.tokens.to(model_device(original)), last).float().cpu()
        lc = logits_at(copy, batch.tokens.to(model_device(copy)), last).float().cpu()
        p, q = lo.double().log_softmax(-1), lc.double().log_softmax(-1)
        kl.append((p.exp() * (p - q)).sum(-1))  # [batch]
        acc_orig.append(accuracy(lo, batch, reduce=False).float())
        acc_copy.append(accuracy(lc, batch, reduce=False).float())
    return BehaviourChange(
        accuracy=float(torch.cat(acc_copy).mean()),
        original_accuracy=float(torch.cat(acc_orig).mean()),
        kl=float(torch.cat(kl).mean().clamp(min=0.0)),
        n=len(prompts),
    )


__all__ = [
    "BehaviourChange",
    "behaviour_change",
    "identity_permutation",
    "permuted_copy",
    "recovery",
]
