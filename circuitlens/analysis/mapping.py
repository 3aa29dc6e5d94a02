"""Mapping student heads to teacher heads by mean-ablation impact (circuit distillation, step 3).

Student heads are chosen by a budget (a fraction or a count of all the student's heads), ranked
by their impact ``dP_s`` (largest first). Each is paired with the teacher head, among the
circuit's heads when a circuit is given (else all heads), that minimises
``d(h_s, h_t) = |dP_s(h_s) - dP_t(h_t)|``:

- many-to-one (default): an independent argmin per student head; ties go to the teacher head
  first in (layer, head) order, so the map is deterministic;
- one-to-one: the assignment minimising the summed distance
  (``scipy.optimize.linear_sum_assignment``).

The control, :func:`random_map`, keeps the same student heads and draws the teacher heads at
random from the same candidates (seeded).

A map can be decided by noise. :func:`map_heads` warns (and records in ``HeadMap.config
["warnings"]``) when a chosen head's impact is not distinguishable from zero (its bootstrap
interval over prompts, ``AblationResult.delta_ci``, contains 0), when a tie decides which
student heads are chosen (the last chosen and the first left out have the same ``dP_s``), and
when a tie decides a pair (several candidates at the minimal distance). ``HeadMap.distances``
holds each chosen pair's distance.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import torch

from circuitlens.analysis.ablation import AblationResult
from circuitlens.core.types import Circuit, Head, HeadMap, parse_heads

log = logging.getLogger(__name__)

#: student heads to train by default: 13% of them (the paper trains 11-15% of a student's heads)
DEFAULT_BUDGET = 0.13


def budget_count(budget: float | int, n_heads: int) -> int:
    """Heads a budget allows: an int is a count; a float in (0, 1] a fraction (rounded, >= 1)."""
    if isinstance(budget, bool) or not isinstance(budget, (int, float)):
        raise ValueError(
            f"budget must be a fraction in (0, 1] or a count of heads (got {budget!r})"
        )
    if isinstance(budget, float):
        if not 0 < budget <= 1:
            raise ValueError(f"a fractional budget must lie in (0, 1] (got {budget})")
        return max(1, round(budget * n_heads))
    count = int(budget)
    if not 1 <= count <= n_heads:
        raise ValueError(
            f"a budget of {count} heads is outside 1..{n_heads}: the student has {n_heads} heads"
        )
    return count


TIE = 1e-6  # impacts are float32: closer than this is a tie decided by rounding


def choose_student_heads(student: AblationResult, budget: float | int) -> list[Head]:
    """The ``budget`` student heads with the largest impact (ties: layer, head order), among
    the heads whose impact was measured (a screened sweep estimates the others)."""
    k = budget_count(budget, len(student.heads))
    heads = student.exact_heads
    if len(heads) < k:
        raise ValueError(
            f"a budget of {k} heads, but the screened sweep measured only {len(heads)}: "
            f"sweep with top={k} or more"
        )
    delta = [float(student.delta[h.layer, h.head]) for h in heads]
    if max(delta) == min(delta):
        log.warning(
            "the student's impact dP is %.3f for every head (e.g. its accuracy is 0 or no head "
            "matters alone): the choice of student heads and the mapping are uninformative",
            delta[0],
        )
    order = sorted(range(len(heads)), key=lambda i: (-delta[i], i))
    return [heads[i] for i in order[:k]]


def map_warnings(
    student_sweep: AblationResult,
    teacher_sweep: AblationResult,
    students: list[Head],
    chosen: list[Head],
    dist: torch.Tensor,
    cands: list[Head],
) -> list[str]:
    """What in a map is decided by noise or by ties (see the module docstring)."""
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


def _candidates(teacher: AblationResult, circuit: Circuit | None) -> list[Head]:
    n_layers, n_heads = teacher.delta.shape
    if circuit is None:
        return teacher.exact_heads  # a screened sweep's estimates are not mapped to
    heads = circuit.heads
    if not heads:
        raise ValueError("the circuit has no heads to map to")
    for h in heads:
        h.check(n_layers, n_heads)
    measured = [h for h in heads if bool(teacher.exact[h.layer, h.head])]
    if len(measured) < len(heads):
        log.warning(
            "the teacher's screened sweep did not measure circuit heads %s: they are left out "
            "of the mapping (sweep with verify=circuit.heads to include them)",
            ", ".join(str(h) for h in heads if h not in measured),
        )
    if not measured:
        raise ValueError("the teacher sweep measured none of the circuit's heads")
    return measured


def teacher_candidates(teacher: AblationResult, circuit: Circuit | None) -> list[Head]:
    """The teacher heads a map may pair with: the circuit's heads (or all heads) that the
    teacher's sweep measured (as :func:`map_heads` takes them)."""
    return _candidates(teacher, circuit)


def require_one_to_one(n_teacher: int, n_student: int, what: str) -> None:
    """A named error when ``what`` (``n_teacher`` teacher heads) is too small for a one-to-one
    map of ``n_student`` student heads."""
    if n_teacher < n_student:
        raise ValueError(
            f"{what} has {n_teacher} heads, but a one-to-one map of {n_student} student heads "
            f"needs at least {n_student} (at least as many teacher heads as student heads): "
            f"set the budget to {n_teacher} or fewer, or one_to_one=False"
        )


def map_heads(
    student_sweep: AblationResult,
    teacher_sweep: AblationResult,
    circuit: Circuit | None = None,
    budget: float | int = DEFAULT_BUDGET,
    one_to_one: bool = False,
    student_heads: list[Head | str] | None = None,
) -> HeadMap:
    """Pair each chosen student head with the teacher head of closest impact.

    ``student_heads``: pair these heads instead of the budget's most important ones (the
    random-heads controls); the config then names them.

    Returns:
        A :class:`HeadMap` (``kind="ablation"``) with the pairs and their distances.
    """
    if student_heads is None:
        students = choose_student_heads(student_sweep, budget)
    else:
        students = parse_heads(list(student_heads))
    cands = _candidates(teacher_sweep, circuit)
    ds = torch.tensor([float(student_sweep.delta[h.layer, h.head]) for h in students])
    dt = torch.tensor([float(teacher_sweep.delta[h.layer, h.head]) for h in cands])
    dist = (ds[:, None] - dt[None, :]).abs()  # [student, candidate]
    if one_to_one:
        from scipy.optimize import linear_sum_assignment

        require_one_to_one(len(cands), len(students), "the set of candidate teacher heads")
        rows, cols = linear_sum_assignment(dist.double().numpy())
        pick = dict(zip(rows.tolist(), cols.tolist(), strict=True))
        chosen = [pick[i] for i in range(len(students))]
    else:
        # argmin returns the first minimum: candidates are in (layer, head) order
        chosen = dist.argmin(1).tolist()
    warnings = map_warnings(
        student_sweep, teacher_sweep, students, [cands[j] for j in chosen], dist, cands
    )
    for w in warnings:
        log.warning("map_heads: %s", w)
    config = {
        "budget": budget,
        "one_to_one": one_to_one,
        "circuit": None if circuit is None else circuit.to_dict()["groups"],
        "metric": student_sweep.config.metric,
        "teacher_baseline": teacher_sweep.config.baseline,
        "warnings": warnings,
    }
    if student_heads is not None:
        config["student_heads"] = [str(h) for h in students]
    return HeadMap(
        pairs=[(s, cands[j]) for s, j in zip(students, chosen, strict=True)],
        distances=[float(dist[i, j]) for i, j in enumerate(chosen)],
        kind="ablation",
        config=config,
    )


def random_map(
    student_sweep: AblationResult,
    teacher_sweep: AblationResult,
    circuit: Circuit | None = None,
    budget: float | int = DEFAULT_BUDGET,
    one_to_one: bool = False,
    seed: int = 0,
    student_heads: list[Head | str] | None = None,
    avoid: HeadMap | None = None,
) -> HeadMap:
    """The control: the same student heads, teacher heads drawn at random from the candidates.

    ``avoid`` (the ablation map) keeps each student head off its aligned partner, so the
    control is never the treatment by chance (1 in 32 on the zoo teacher otherwise).
    """
    students = (
        parse_heads(student_heads)
        if student_heads is not None
        else choose_student_heads(student_sweep, budget)
    )
    # a random partner needs no impact value: every teacher head (of the circuit, when given)
    # is a candidate, measured exactly by the sweep or only estimated
    n_layers, n_heads = teacher_sweep.delta.shape
    cands = (
        [Head(layer, h) for layer in range(n_layers) for h in range(n_heads)]
        if circuit is None
        else list(circuit.heads)
    )
    rng = random.Random(seed)
    partner = dict(avoid.pairs) if avoid is not None else {}
    if one_to_one:
        cands = [c for c in cands if c not in set(partner.values())]
        if len(cands) < len(students):
            raise ValueError(
                f"one-to-one needs at least {len(students)} teacher heads, "
                f"the candidates are {len(cands)}"
            )
        picked = rng.sample(cands, len(students))
    else:
        picked = []
        for s in students:
            pool = [c for c in cands if c != partner.get(s)]
            if not pool:
                raise ValueError(f"no teacher head other than {partner.get(s)} to draw for {s}")
            picked.append(rng.choice(pool))
    dist = [
        abs(
            float(student_sweep.delta[s.layer, s.head])
            - float(teacher_sweep.delta[t.layer, t.head])
        )
        for s, t in zip(students, picked, strict=True)
    ]
    config: dict[str, Any] = {
        "budget": budget,
        "one_to_one": one_to_one,
        "seed": seed,
        "circuit": None if circuit is None else circuit.to_dict()["groups"],
        "avoid": None if avoid is None else [[str(a), str(b)] for a, b in avoid.pairs],
    }
    return HeadMap(
        pairs=list(zip(students, picked, strict=True)), distances=dist, kind="random", config=config
    )


__all__ = [
    "budget_count",
    "choose_student_heads",
    "map_heads",
    "map_warnings",
    "random_map",
    "teacher_candidates",
]
