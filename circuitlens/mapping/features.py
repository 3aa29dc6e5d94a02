"""What the correspondence methods read, measured once per pair.

:func:`gather_features` (below) measures the sweeps and the heads' last-token ``z``, and four
features beyond them, each held in ``CorrespondenceFeatures.more[need]`` as a
``(student, teacher)`` pair (:func:`gather_more`):

- ``"weights"`` (:class:`HeadWeights`, no forward pass): every query head's ``W_Q``, ``W_K``,
  ``W_V`` (grouped K/V heads repeated to their query heads, as Llama's ``repeat_kv`` does: query
  head ``h`` reads K/V head ``h // (n_heads / n_kv)``) and ``W_O``, read through the bridge's
  views, with the layer's input norm folded into ``W_Q/W_K/W_V`` (its per-dimension scale,
  measured by running the norm on a zero-mean probe, so RMSNorm, Gemma's ``1 + w`` and LayerNorm
  all give their own scale), plus the token embedding for the shared-basis check.
- ``"z_positions"`` (:class:`PositionZ`, one forward pass per model): each head's ``z`` at each
  of the task's named positions (``Task.position_names``), matched by name, so it works across
  tokenizers.
- ``"z_tokens"`` (:class:`TokenZ`, one forward pass per model): each head's ``z`` at every token
  of every prompt (at most ``max_rows`` tokens, drawn seeded, the same ones on both sides); only
  for models that tokenize the prompts identically.
- ``"pattern"`` (:class:`HeadPatterns`, one forward pass per model): each head's attention
  pattern at the named query positions over all keys; only for identical tokenizations.

The z and pattern features of one model come from one forward pass (:func:`head_activations`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
from einops import rearrange
from jaxtyping import Float, Int
from torch import Tensor

from circuitlens.ablation.config import AblationConfig
from circuitlens.ablation.sweep import ablation_sweep
from circuitlens.core.hooks import z_name
from circuitlens.core.types import Model
from circuitlens.mapping.methods import NEEDS, CorrespondenceFeatures
from circuitlens.models.registry import model_facts
from circuitlens.tasks import Task
from circuitlens.tasks.metrics import model_device, no_logits

#: whose unablated P the teacher's impacts are measured against
TeacherBaseline = Literal["student", "own"]
TEACHER_BASELINES: tuple[str, ...] = get_args(TeacherBaseline)
#: the needs measured here (the rest of :data:`circuitlens.mapping.methods.NEEDS` is measured by
#: ``gather_features`` itself)
MORE_NEEDS = ("weights", "z_positions", "z_tokens", "pattern")
#: rows of the ``z_tokens`` feature at most: CKA over more rows costs more, tells little more
MAX_ROWS = 2048


class TokenizationMismatchError(ValueError):
    """A feature that needs identical tokens met two models that tokenize differently."""


@dataclass(frozen=True)
class HeadWeights:
    """One model's attention weights per query head, its input norm folded in.

    Attributes:
        w_q, w_k, w_v: ``[layer, head, d_model, d_head]`` (K/V repeated per query head),
            each row scaled by the layer's input-norm scale when ``folded_norm``.
        w_o: ``[layer, head, d_head, d_model]``.
        w_e: ``[d_vocab, d_model]`` the token embedding (the residual basis' witness).
        folded_norm: whether the norm scale was folded in.
    """

    w_q: Float[Tensor, "layer head d_model d_head"]
    w_k: Float[Tensor, "layer head d_model d_head"]
    w_v: Float[Tensor, "layer head d_model d_head"]
    w_o: Float[Tensor, "layer head d_head d_model"]
    w_e: Float[Tensor, "d_vocab d_model"]
    folded_norm: bool = True

    @property
    def head_shape(self) -> tuple[int, int]:
        return int(self.w_q.shape[0]), int(self.w_q.shape[1])

    @property
    def d_model(self) -> int:
        return int(self.w_q.shape[2])


@dataclass(frozen=True)
class PositionZ:
    """Each head's ``z`` at the task's named positions: ``z[n, position, layer, head, d_head]``."""

    z: Float[Tensor, "n position layer head d_head"]
    positions: tuple[str, ...]

    @property
    def head_shape(self) -> tuple[int, int]:
        return int(self.z.shape[2]), int(self.z.shape[3])


@dataclass(frozen=True)
class TokenZ:
    """Each head's ``z`` at sampled tokens: ``z[row, layer, head, d_head]``; ``rows[i]`` is the
    (prompt, position) of row ``i``."""

    z: Float[Tensor, "row layer head d_head"]
    rows: Int[Tensor, "row 2"]

    @property
    def head_shape(self) -> tuple[int, int]:
        return int(self.z.shape[1]), int(self.z.shape[2])


@dataclass(frozen=True)
class HeadPatterns:
    """Each head's attention at the named query positions over every key (0 past the query and
    on padding): ``pattern[n, position, layer, head, key]``."""

    pattern: Float[Tensor, "n position layer head key"]
    positions: tuple[str, ...]

    @property
    def head_shape(self) -> tuple[int, int]:
        return int(self.pattern.shape[2]), int(self.pattern.shape[3])


# --- weights -------------------------------------------------------------------------------


@torch.no_grad()
def norm_scale(norm: Any, d_model: int) -> Float[Tensor, " d_model"]:
    """The per-dimension scale a pre-attention norm applies: ``(norm(x) - norm(-x)) / 2`` over
    ``x / rms(x)`` for zero-mean probes ``x = (1, -1, 1, ...)`` (and the same rolled by one, so
    an odd ``d_model``'s last coordinate is read too). A LayerNorm's bias cancels; RMSNorm's
    ``g`` and Gemma's ``1 + w`` come out as they are; the norm's epsilon is neglected."""
    x = torch.ones(d_model)
    x[1::2] = -1.0
    if d_model % 2:
        x[-1] = 0.0  # keep the mean 0
    p = next(norm.parameters(), None)
    scale = torch.zeros(d_model)
    for probe in (x, x.roll(1)):
        ref = probe.to(p.device, p.dtype) if p is not None else probe
        out = (norm(ref[None, None]) - norm(-ref[None, None]))[0, 0].float().cpu() / 2
        unit = probe / probe.square().mean().sqrt()
        seen = probe != 0
        scale[seen] = out[seen] / unit[seen]
    return scale


def _norm_of(block: Any) -> Any | None:
    for name in ("ln1", "input_layernorm", "ln_1"):
        if hasattr(block, name):
            return getattr(block, name)
    return None


@torch.no_grad()
def head_weights(model: Model, fold_norm: bool = True) -> HeadWeights:
    """Every query head's ``W_Q``, ``W_K``, ``W_V``, ``W_O`` (K/V repeated per query head) read
    through the bridge's views, with each layer's input-norm scale folded into ``W_Q/W_K/W_V``
    when ``fold_norm`` (the attention reads ``norm(x) = scale * x / rms(x)``, so two heads that
    read the residual alike have alike ``diag(scale) W``). Float32, on CPU."""
    w_q, w_k, w_v, w_o = (
        getattr(model, n).detach().float().cpu() for n in ("W_Q", "W_K", "W_V", "W_O")
    )
    n_heads = w_q.shape[1]
    for name, w in (("W_K", w_k), ("W_V", w_v)):
        if n_heads % w.shape[1]:
            raise ValueError(f"{n_heads} query heads do not split into {w.shape[1]} {name} heads")
    w_k = w_k.repeat_interleave(n_heads // w_k.shape[1], dim=1)
    w_v = w_v.repeat_interleave(n_heads // w_v.shape[1], dim=1)
    d_model = w_q.shape[2]
    folded = False
    if fold_norm and hasattr(model, "blocks"):
        norms = [_norm_of(b) for b in model.blocks]
        if all(n is not None for n in norms):
            scale = torch.stack([norm_scale(n, d_model) for n in norms])  # [layer, d_model]
            w_q, w_k, w_v = (w * scale[:, None, :, None] for w in (w_q, w_k, w_v))
            folded = True
    w_e = model.W_E.detach().float().cpu()
    return HeadWeights(w_q, w_k, w_v, w_o, w_e, folded)


# --- activations ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ActivationReads:
    """What :func:`head_activations` reads: ``want`` among ``"z_positions"``,
    ``"z_tokens"`` and ``"pattern"``; ``positions``, the named positions (None: the task's
    ``position_names``); ``rows``, the ``[row, 2]`` (prompt, position) of the tokens that
    ``"z_tokens"`` reads."""

    want: Sequence[str] = ("z_positions",)
    positions: Sequence[str] | None = None
    rows: Tensor | None = None


@torch.no_grad()
def head_activations(
    model: Model,
    task: Task,
    split: str = "train",
    n: int | None = 128,
    reads: ActivationReads = ActivationReads(),
    batch_size: int = 32,
) -> dict[str, Any]:
    """One forward pass over ``n`` prompts of ``split``: what ``reads.want`` asks for among
    ``"z_positions"`` (:class:`PositionZ`), ``"z_tokens"`` (:class:`TokenZ`, at
    ``reads.rows``: ``[row, 2]`` (prompt, position)) and ``"pattern"`` (:class:`HeadPatterns`),
    on CPU, at the named positions ``reads.positions`` (default: the task's
    ``position_names``) (:class:`ActivationReads`).
    """
    positions, want, rows = reads.positions, reads.want, reads.rows
    f = model_facts(model)
    batch = task.batch(model, split, n)
    names = tuple(positions) if positions is not None else tuple(task.position_names)
    missing = [p for p in names if p not in batch.positions]
    if missing:
        raise ValueError(f"the task names no position(s) {missing}; it has {list(batch.positions)}")
    if "z_tokens" in want and rows is None:
        raise ValueError("z_tokens needs rows: (prompt, position) of each token to read")
    hooks = {z_name(layer) for layer in range(f.n_layers)}
    if "pattern" in want:
        hooks |= {f"blocks.{layer}.attn.hook_pattern" for layer in range(f.n_layers)}
    device = model_device(model)
    zpos, ztok, pats = [], [], []
    width = batch.tokens.shape[1]
    for start in range(0, len(batch), batch_size):
        tokens = batch.tokens[start : start + batch_size].to(device)
        _, cache = model.run_with_cache(
            tokens, names_filter=lambda x: x in hooks, **no_logits(model)
        )
        z = torch.stack([cache[z_name(layer)] for layer in range(f.n_layers)])
        z = rearrange(z, "layer b pos head d -> b pos layer head d").float().cpu()
        at = torch.stack([batch.positions[p][start : start + batch_size] for p in names], 1)
        b_idx = torch.arange(z.shape[0])[:, None]
        zpos.append(z[b_idx, at])  # [b, position, layer, head, d]
        if rows is not None and "z_tokens" in want:
            mine = rows[(rows[:, 0] >= start) & (rows[:, 0] < start + z.shape[0])]
            ztok.append(z[mine[:, 0] - start, mine[:, 1]])
        if "pattern" in want:
            p = torch.stack(
                [cache[f"blocks.{layer}.attn.hook_pattern"] for layer in range(f.n_layers)]
            )
            p = rearrange(p, "layer b head q k -> b q layer head k").float().cpu()
            p = torch.nn.functional.pad(p[b_idx, at], (0, width - p.shape[-1]))
            pats.append(p)
        del cache
    out: dict[str, Any] = {}
    if "z_positions" in want:
        out["z_positions"] = PositionZ(torch.cat(zpos), names)
    if "z_tokens" in want:
        out["z_tokens"] = TokenZ(torch.cat(ztok), rows)
    if "pattern" in want:
        out["pattern"] = HeadPatterns(torch.cat(pats), names)
    return out


def token_rows(
    student: Model, teacher: Model, task: Task, split: str, n: int | None, max_rows: int, seed: int
) -> Int[Tensor, "row 2"]:
    """The (prompt, position) of at most ``max_rows`` real (non-pad) tokens, drawn seeded and
    sorted by prompt; refuses models whose tokens differ (rows would not be the same token)."""
    bs, bt = task.batch(student, split, n), task.batch(teacher, split, n)
    if bs.tokens.shape != bt.tokens.shape or not bool((bs.tokens == bt.tokens).all()):
        raise TokenizationMismatchError(
            "the student and the teacher tokenize the prompts differently (token ids "
            f"{list(bs.tokens.shape)} vs {list(bt.tokens.shape)}): token-level features "
            "(z_tokens, pattern) need one tokenizer; use z_positions (named positions)"
        )
    last = bs.positions["last"]
    valid = torch.arange(bs.tokens.shape[1])[None, :] <= last[:, None]  # right-padded
    rows = valid.nonzero()
    if rows.shape[0] > max_rows:
        g = torch.Generator().manual_seed(seed)
        keep = torch.randperm(rows.shape[0], generator=g)[:max_rows].sort().values
        rows = rows[keep]
    return rows


@dataclass(frozen=True)
class MoreSettings:
    """How :func:`gather_more` reads: the activations on ``n`` prompts of ``split``, the
    token-level ones (``z_tokens``, ``pattern``) at most ``max_rows`` tokens drawn by ``seed``
    (:func:`token_rows`), and the weights with the norm's scale folded in when ``fold_norm``
    (:func:`head_weights`)."""

    split: str = "train"
    n: int | None = 128
    max_rows: int = MAX_ROWS
    seed: int = 0
    fold_norm: bool = True


def gather_more(
    student: Model,
    teacher: Model,
    task: Task | None,
    needs: Sequence[str],
    settings: MoreSettings = MoreSettings(),
) -> dict[str, tuple[Any, Any]]:
    """``CorrespondenceFeatures.more``: each need of :data:`MORE_NEEDS` in ``needs`` as a
    ``(student, teacher)`` pair; the activations of each model in one forward pass (``task``
    may be None when only ``"weights"`` is asked for); read as ``settings`` says
    (:class:`MoreSettings`)."""
    split, n, fold_norm = settings.split, settings.n, settings.fold_norm
    max_rows, seed = settings.max_rows, settings.seed
    out: dict[str, tuple[Any, Any]] = {}
    if "weights" in needs:
        out["weights"] = (head_weights(student, fold_norm), head_weights(teacher, fold_norm))
    want = [x for x in ("z_positions", "z_tokens", "pattern") if x in needs]
    if not want:
        return out
    if task is None:
        raise ValueError(f"{want} are read on a task's prompts: pass the task")
    rows = None
    if "z_tokens" in want or "pattern" in want:
        rows = token_rows(student, teacher, task, split, n, max_rows, seed)
    reads = ActivationReads(want=want, rows=rows)
    s = head_activations(student, task, split, n, reads)
    t = head_activations(teacher, task, split, n, reads)
    for need in want:
        out[need] = (s[need], t[need])
    return out


# --- the sweeps and the last-token z -------------------------------------------------------


@torch.no_grad()
def head_z(
    model: Model, task: Task, split: str = "probe", n: int | None = 200, batch_size: int = 64
) -> Float[Tensor, "n layer head d_head"]:
    """Every head's ``z`` (the input of W_O) at each prompt's last position, on CPU (the
    ``probe`` prompts by default: the map reads it to choose partners)."""
    f = model_facts(model)
    batch = task.batch(model, split, n)
    names = {z_name(layer) for layer in range(f.n_layers)}
    device = model_device(model)
    out = []
    for start in range(0, len(batch), batch_size):
        tokens = batch.tokens[start : start + batch_size].to(device)
        last = batch.positions["last"][start : start + batch_size].to(device)
        _, cache = model.run_with_cache(
            tokens, names_filter=lambda x: x in names, **no_logits(model)
        )
        rows = torch.arange(tokens.shape[0], device=device)
        z = torch.stack([cache[z_name(layer)][rows, last] for layer in range(f.n_layers)])
        out.append(rearrange(z, "layer n head d -> n layer head d").float().cpu())
    return torch.cat(out)


def gather_features(
    student: Model,
    teacher: Model,
    task: Task,
    needs: Sequence[str] = NEEDS,
    sweep: AblationConfig | None = None,
    *,
    teacher_baseline: str = "student",
    progress: bool = False,
) -> CorrespondenceFeatures:
    """Measure what ``needs`` asks for (the student's sweep always): the sweeps (exact, on the
    same ``sweep.n`` prompts of ``sweep.split``, scored by ``sweep.metric`` with
    ``sweep.n_boot`` bootstrap resamples (None: the defaults); its other fields are not read;
    ``teacher_baseline="student"``: the teacher's impacts
    against the student's P, as :func:`circuitlens.distill.sweeps.sweeps` does, or ``"own"``) and
    the
    heads' ``z`` at the last position on the same prompts; weights, ``z`` at named positions or
    tokens, and attention patterns (:func:`~circuitlens.mapping.features.gather_more`)."""
    if teacher_baseline not in TEACHER_BASELINES:
        raise ValueError(f"teacher_baseline must be 'student' or 'own' (got {teacher_baseline!r})")
    bad = [x for x in needs if x not in NEEDS]
    if bad:
        raise ValueError(f"unknown needs {bad}; valid: {', '.join(NEEDS)}")
    given = sweep if sweep is not None else AblationConfig()
    metric, n, split, n_boot = given.metric, given.n, given.split, given.n_boot
    sweep = AblationConfig(metric=metric, n=n, split=split, n_boot=n_boot, method="exact")
    s_sweep = ablation_sweep(student, task, sweep, progress=progress).named("student")
    t_sweep = None
    if "teacher_sweep" in needs or "prompt_delta" in needs:
        base = student if teacher_baseline == "student" else None
        t_sweep = ablation_sweep(teacher, task, sweep, baseline_from=base, progress=progress).named(
            "teacher"
        )
    zs = zt = None
    if "z" in needs:
        zs, zt = head_z(student, task, split, n), head_z(teacher, task, split, n)
    more = gather_more(student, teacher, task, needs, MoreSettings(split=split, n=n))
    return CorrespondenceFeatures(s_sweep, t_sweep, zs, zt, more)


__all__ = [
    "MAX_ROWS",
    "MORE_NEEDS",
    "TEACHER_BASELINES",
    "ActivationReads",
    "HeadPatterns",
    "HeadWeights",
    "MoreSettings",
    "PositionZ",
    "TokenZ",
    "TeacherBaseline",
    "TokenizationMismatchError",
    "gather_features",
    "gather_more",
    "head_activations",
    "head_weights",
    "head_z",
    "norm_scale",
]
