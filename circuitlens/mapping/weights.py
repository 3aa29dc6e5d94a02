"""Weight-space correspondence: heads alike in their OV and QK circuits (no forward pass).

For a pair whose residual streams share a basis (the same tokenizer and embedding lineage, as a
depth-pruned or fine-tuned copy of one base has), a head is the two bilinear maps of Elhage et
al. (2021), "A Mathematical Framework for Transformer Circuits": the OV circuit
``W_V W_O`` (``d_model x d_model``: what it writes for what it reads) and the QK circuit
``W_Q W_K^T`` (``d_model x d_model``: where it looks). Two heads are alike when these matrices
are: the cosine of the flattened matrices, ``<A, B>_F / (|A|_F |B|_F)``.

Conventions:

- ``W_Q/W_K/W_V/W_O`` are the bridge's views
  (:func:`~circuitlens.mapping.features.head_weights`: grouped K/V heads repeated to
  their query heads; each layer's input-norm scale folded into ``W_Q/W_K/W_V``, since the
  attention reads ``scale * x / rms(x)``: without it two heads that read the same directions of
  the residual through differently scaled norms would differ).
- The QK circuit ignores rotary embeddings (it is the content-content form at relative
  position 0); both models rotate alike, so this is the same simplification on both sides.
- The Frobenius inner product of two rank-``d_head`` products is computed without forming a
  ``d_model x d_model`` matrix: ``<A_s B_s, A_t B_t>_F = tr(B_s^T A_s^T A_t B_t)
  = sum_ij (A_s^T A_t)_ij (B_s B_t^T)_ij`` (``A = W_V, B = W_O`` for OV; ``A = W_Q, B = W_K^T``
  for QK), chunked over student heads.
- Pairs whose bases differ are refused by name (:class:`BasisMismatchError`): another
  ``d_model``, or another vocabulary (embedding rows). That is the simple option: a learned or
  Procrustes map between two residual bases (e.g. fitted on paired activations) would let the
  method compare across families, and is not done here. Same shapes do not prove a shared basis:
  the embeddings' cosine is recorded and a warning given when it is low.

Methods (cost ``1 - cosine``, in [0, 2]): ``weights-ov``, ``weights-qk`` and ``weights-ov-qk``
(the mean of the two cosines).
"""

from __future__ import annotations

from typing import Any

import torch
from einops import rearrange
from jaxtyping import Float
from torch import Tensor

from circuitlens.core.types import Head
from circuitlens.mapping.features import HeadWeights
from circuitlens.mapping.methods import CostInputs, generic_warnings, register_method

#: embeddings less alike than this (cosine of the flattened ``W_E``) warn of different bases
BASIS_COSINE = 0.5


class BasisMismatchError(ValueError):
    """Two models whose residual streams do not share a basis (weights cannot be compared)."""


def require_shared_basis(student: HeadWeights, teacher: HeadWeights) -> float:
    """Refuse two models whose residual bases differ; return their embeddings' cosine.

    Raises:
        BasisMismatchError: ``d_model`` or the vocabulary size differ.
    """
    if student.d_model != teacher.d_model:
        raise BasisMismatchError(
            f"weight-space maps compare heads in one residual basis, but the student's d_model "
            f"is {student.d_model} and the teacher's {teacher.d_model}: use a functional "
            "method (cka-positions, cka, profile) for pairs of different families"
        )
    if student.w_e.shape != teacher.w_e.shape:
        raise BasisMismatchError(
            f"weight-space maps need one tokenizer and embedding lineage, but the vocabularies "
            f"differ ({student.w_e.shape[0]} vs {teacher.w_e.shape[0]} tokens): use a "
            "functional method (cka-positions, cka, profile) for pairs of different families"
        )
    a, b = student.w_e.double().flatten(), teacher.w_e.double().flatten()
    return float(a @ b / (a.norm() * b.norm()).clamp(min=1e-300))


def _stack(w: Tensor, heads: list[Head]) -> Tensor:
    return torch.stack([w[h.layer, h.head] for h in heads])


def lowrank_inner(
    a_s: Float[Tensor, "s d_model r"],
    b_s: Float[Tensor, "s r d_model"],
    a_t: Float[Tensor, "t d_model r"],
    b_t: Float[Tensor, "t r d_model"],
    chunk: int = 16,
) -> Float[Tensor, "s t"]:
    """``<A_s B_s, A_t B_t>_F`` for every pair, as ``sum_ij (A_s^T A_t)_ij (B_s B_t^T)_ij``
    (no ``d_model x d_model`` matrix formed), in the inputs' dtype."""
    t, r = a_t.shape[0], a_t.shape[2]
    # one matmul per chunk over the d_model axis (einsum's batched form is several times slower)
    at = rearrange(a_t, "t d j -> d (t j)")
    bt = rearrange(b_t, "t j d -> d (t j)")
    out = []
    for i in range(0, a_s.shape[0], chunk):
        aa = rearrange(a_s[i : i + chunk], "s d i -> (s i) d") @ at  # [(s i), (t j)]
        bb = rearrange(b_s[i : i + chunk], "s i d -> (s i) d") @ bt
        prod = rearrange(aa * bb, "(s i) (t j) -> s t (i j)", i=r, t=t, j=r)
        out.append(prod.sum(-1))
    return torch.cat(out)


def lowrank_norm(a: Float[Tensor, "h d_model r"], b: Float[Tensor, "h r d_model"]) -> Tensor:
    """``|A B|_F`` of each head (``[h]``) from ``(A^T A) . (B B^T)``."""
    gram = torch.einsum("hdi,hdj->hij", a, a) * torch.einsum("hid,hjd->hij", b, b)
    return gram.sum((-1, -2)).clamp(min=0).sqrt()


def circuit_cosines(
    student: HeadWeights,
    teacher: HeadWeights,
    students: list[Head],
    candidates: list[Head],
    dtype: torch.dtype = torch.float32,
) -> dict[str, Float[Tensor, "s t"]]:
    """``{"ov": cos, "qk": cos}``: the cosine of each student head's OV (``W_V W_O``) and QK
    (``W_Q W_K^T``) circuit with each candidate's (rows: ``students``, columns: ``candidates``).
    A head with a zero circuit has cosine 0 with every head."""
    require_shared_basis(student, teacher)
    out = {}
    for name, (a, b) in {
        "ov": (lambda w: w.w_v, lambda w: w.w_o),
        "qk": (lambda w: w.w_q, lambda w: w.w_k.transpose(-1, -2)),
    }.items():
        a_s, b_s = _stack(a(student), students).to(dtype), _stack(b(student), students).to(dtype)
        a_t = _stack(a(teacher), candidates).to(dtype)
        b_t = _stack(b(teacher), candidates).to(dtype)
        inner = lowrank_inner(a_s, b_s, a_t, b_t)
        den = lowrank_norm(a_s, b_s)[:, None] * lowrank_norm(a_t, b_t)[None, :]
        out[name] = torch.where(den > 0, inner / den.clamp(min=1e-300), torch.zeros_like(inner))
    return out


def _weights(inputs: CostInputs) -> tuple[HeadWeights, HeadWeights]:
    pair = inputs.features.more.get("weights")
    if pair is None:
        raise ValueError("this method reads the heads' weights: gather them (needs weights)")
    return pair


def _cosines(inputs: CostInputs) -> dict[str, Tensor]:
    if "weight_cos" not in inputs.extras:
        s, t = _weights(inputs)
        inputs.extras["embedding_cosine"] = require_shared_basis(s, t)
        cos = circuit_cosines(s, t, inputs.students, inputs.candidates)
        inputs.extras["weight_cos"] = {k: v.float() for k, v in cos.items()}
    return inputs.extras["weight_cos"]


def ov_cost(inputs: CostInputs) -> Float[Tensor, "student teacher"]:
    """``1 - cos(W_V W_O)``."""
    return 1 - _cosines(inputs)["ov"]


def qk_cost(inputs: CostInputs) -> Float[Tensor, "student teacher"]:
    """``1 - cos(W_Q W_K^T)``."""
    return 1 - _cosines(inputs)["qk"]


def ov_qk_cost(inputs: CostInputs) -> Float[Tensor, "student teacher"]:
    """``1 - (cos_OV + cos_QK) / 2``."""
    cos = _cosines(inputs)
    return 1 - (cos["ov"] + cos["qk"]) / 2


def weight_warnings(inputs: CostInputs, cost: Tensor, chosen: list[int]) -> list[str]:
    """The generic warnings, embeddings unlike enough to doubt a shared basis, and pairs whose
    cosine does not stand out from the row's spread (the best within 2 sd of the row's mean)."""
    out = generic_warnings(inputs, cost, chosen)
    e = float(inputs.extras.get("embedding_cosine", 1.0))
    if e < BASIS_COSINE:
        out.append(
            f"the embeddings' cosine is {e:.3f}: the models may not share a residual basis "
            "(another lineage), so weight cosines may mean nothing"
        )
    for i, (s, j) in enumerate(zip(inputs.students, chosen, strict=True)):
        row = cost[i].double()
        if row.numel() > 2 and float(row.mean() - row[j]) < 2 * float(row.std()):
            out.append(
                f"{s} -> {inputs.candidates[j]}: its weight similarity does not stand out "
                f"(cost {float(row[j]):.3f}, row mean {float(row.mean()):.3f} +- "
                f"{float(row.std()):.3f})"
            )
    return out


def explicit_cosines(
    student: HeadWeights, teacher: HeadWeights, students: list[Head], candidates: list[Head]
) -> dict[str, Tensor]:
    """The slow reference of :func:`circuit_cosines`: the ``d_model x d_model`` matrices formed
    and flattened (float64). For tests and small models."""
    out: dict[str, Any] = {}
    for name in ("ov", "qk"):

        def mat(w: HeadWeights, h: Head, name: str = name) -> Tensor:
            if name == "ov":
                return (w.w_v[h.layer, h.head].double() @ w.w_o[h.layer, h.head].double()).flatten()
            return (w.w_q[h.layer, h.head].double() @ w.w_k[h.layer, h.head].double().T).flatten()

        xs = torch.stack([mat(student, h) for h in students])
        ys = torch.stack([mat(teacher, h) for h in candidates])
        out[name] = (xs @ ys.T) / (xs.norm(dim=1)[:, None] * ys.norm(dim=1)[None, :])
    return out


COST_NOTE = "weights only, no forward pass; same residual basis (refuses another d_model/vocab)"

register_method(
    "weights-ov-qk",
    ov_qk_cost,
    ("weights",),
    f"1 - mean cosine of the OV and QK circuits ({COST_NOTE})",
    weight_warnings,
)
register_method(
    "weights-ov", ov_cost, ("weights",), f"1 - cosine of W_V W_O ({COST_NOTE})", weight_warnings
)
register_method(
    "weights-qk", qk_cost, ("weights",), f"1 - cosine of W_Q W_K^T ({COST_NOTE})", weight_warnings
)

__all__ = [
    "BASIS_COSINE",
    "BasisMismatchError",
    "circuit_cosines",
    "explicit_cosines",
    "lowrank_inner",
    "lowrank_norm",
    "ov_cost",
    "ov_qk_cost",
    "qk_cost",
    "require_shared_basis",
]
