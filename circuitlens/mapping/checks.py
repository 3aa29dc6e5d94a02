"""What in a head map is decided by noise, by ties or by nothing at all (the map's warnings).

:func:`map_warnings` looks at each head: a chosen head's impact not distinguishable from 0, a
tie deciding which student heads are chosen, a tie deciding one student head's partner.

:func:`degenerate_warnings` looks at the assignment as a whole. A map is *degenerate* when the
cost cannot tell the pairings apart:

- one-to-one: every one-to-one pairing of the chosen student heads with the chosen teacher
  heads has the same total cost, so the solver's tie-breaking (not the cost) decided who meets
  whom. For the ``k x k`` cost ``C`` restricted to the chosen rows and columns (``k >= 2``)
  this holds iff ``C`` is *additively separable*, ``C[i, j] = a_i + b_j``, i.e. iff the
  residual ``R[i, j] = C[i, j] - C[i, 0] - C[0, j] + C[0, 0]`` is 0 everywhere.

  Proof. (If) a pairing ``sigma`` costs ``sum_i a_i + sum_j b_j`` whatever ``sigma`` is.
  (Only if) take rows ``i != 0`` and columns ``j != 0``; some pairing ``sigma`` has
  ``sigma(i) = j`` and ``sigma(0) = 0`` (``k >= 2``). Swapping the two partners gives the
  pairing ``sigma'`` with ``sigma'(i) = 0``, ``sigma'(0) = j``, the rest unchanged; equal totals
  give ``C[i, j] + C[0, 0] = C[i, 0] + C[0, j]``, i.e. ``R[i, j] = 0``. ``R`` is 0 on row 0 and
  column 0 by construction. Then ``C[i, j] = C[i, 0] + (C[0, j] - C[0, 0])``: ``a_i = C[i, 0]``,
  ``b_j = C[0, j] - C[0, 0]``.

  The impact map of a student against a teacher whose impacts all lie below the student's
  (the paper's SmolLM2 pairs: ``|dP_s - dP_t| = dP_s - dP_t``) is such a case: the cost picks
  the *set* of teacher heads (the ``k`` smallest ``b_j``), not the pairs.
- many-to-one: each student head takes its cheapest candidate. When the cost over the chosen
  rows and *all* candidates is additively separable, every row ranks the candidates alike
  (``argmin_j a_i + b_j = argmin_j b_j``): every student head meets the same teacher head,
  whatever the student head; and when every row's minimum is tied, ties chose every partner.

Tolerance: :data:`TIE` on ``max |R|`` (costs are float32; closer than this is rounding).
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from circuitlens.ablation.result import AblationResult
from circuitlens.core.types import Head

TIE = 1e-6  # impacts are float32: closer than this is a tie decided by rounding


def map_warnings(
    student_sweep: AblationResult,
    teacher_sweep: AblationResult,
    students: list[Head],
    chosen: list[Head],
    dist: torch.Tensor,
    cands: list[Head],
) -> list[str]:
    """What in a map is decided by noise or by ties, head by head (see the module docstring)."""
    out = []
    for role, sweep, heads in (
        ("student", student_sweep, students),
        ("teacher", teacher_sweep, chosen),
    ):
        flat = [h for h in dict.fromkeys(heads) if sweep.excludes_zero(h) is False]
        if flat:
            level = sweep.config.ci_level
            out.append(
                f"{role} head(s) {', '.join(map(str, flat))}: the impact dP is not "
                f"distinguishable from 0 ({100 * level:.0f}% bootstrap interval over prompts "
                "contains 0)"
            )
    # the measured heads, among which the students were chosen (a screened sweep's estimates
    # are never chosen, so they cannot tie)
    delta = torch.tensor(
        [float(student_sweep.delta[h.layer, h.head]) for h in student_sweep.exact_heads]
    )
    k = len(students)
    if k < delta.numel():
        ranked = delta.sort(descending=True).values
        if float(ranked[k - 1] - ranked[k]) <= TIE:
            out.append(
                f"a tie decides the student heads: the last chosen and the first left out both "
                f"have dP_s = {float(ranked[k - 1]):.4f} (chosen by layer, head order)"
            )
    for i, s in enumerate(students):
        tied = [cands[j] for j in range(len(cands)) if float(dist[i, j] - dist[i].min()) <= TIE]
        if len(tied) > 1:
            out.append(
                f"a tie decides {s}'s partner: {', '.join(map(str, tied))} are all at distance "
                f"{float(dist[i].min()):.4f} ({chosen[i]} taken)"
            )
    return out


def separable_residual(cost: Float[Tensor, "row col"]) -> Float[Tensor, "row col"]:
    """``R[i, j] = C[i, j] - C[i, 0] - C[0, j] + C[0, 0]`` (in float64): 0 everywhere iff
    ``C[i, j] = a_i + b_j`` (see the module docstring)."""
    c = cost.double()
    return c - c[:, :1] - c[:1, :] + c[:1, :1]


def is_separable(cost: Float[Tensor, "row col"], tol: float = TIE) -> bool:
    """Whether ``cost`` is additively separable, ``C[i, j] = a_i + b_j``, to within ``tol``
    (for a square cost: whether every one-to-one pairing of its rows and columns costs the
    same)."""
    if cost.numel() == 0:
        return True
    return float(separable_residual(cost).abs().max()) <= tol


def degenerate_warnings(
    cost: Float[Tensor, "student candidate"],
    chosen: list[int],
    one_to_one: bool,
    students: list[Head],
    candidates: list[Head],
) -> list[str]:
    """A warning containing "degenerate" when the cost did not decide the pairs (see the
    module docstring); none otherwise.

    Args:
        cost: ``[student head, candidate teacher head]``, the cost the map was assigned from.
        chosen: the column each row took.
        one_to_one: the map was an assignment (distinct partners).
        students, candidates: the heads of the rows and columns (named in the warning).

    Returns:
        Zero or one warning (a list, as the map's other warnings).
    """
    k = len(students)
    if k < 2 or len(candidates) < 2:
        return []
    if one_to_one:
        square = cost[:, chosen]  # rows: students, columns: their partners, in the same order
        if is_separable(square):
            return [
                f"degenerate assignment: every one-to-one pairing of the {k} chosen student "
                f"heads with the {k} chosen teacher heads costs the same (the cost is "
                f"additively separable, C[i, j] = a_i + b_j, to within {TIE:g}): the "
                "solver's tie-breaking, not the cost, decided which student head meets which "
                "teacher head (only the set of teacher heads is chosen by the cost)"
            ]
        return []
    if is_separable(cost):
        return [
            f"degenerate map: the cost over the {k} chosen student heads and the "
            f"{len(candidates)} candidates is additively separable (C[i, j] = a_i + b_j, to "
            f"within {TIE:g}), so every student head ranks the teacher heads alike and meets "
            "the same partner whatever the student head"
        ]
    mins = cost.double().min(1, keepdim=True).values
    if bool(((cost.double() - mins <= TIE).sum(1) > 1).all()):
        return [
            f"degenerate map: a tie decides every one of the {k} student heads' partners "
            "(several candidates at the minimal cost in each row; the first in (layer, head) "
            "order taken)"
        ]
    return []


__all__ = ["TIE", "degenerate_warnings", "is_separable", "map_warnings", "separable_residual"]
