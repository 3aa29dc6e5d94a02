"""Mapping student heads to teacher heads (circuit distillation, step 3): the one map path.

:func:`map_heads` builds every map: its ``method`` is a name in the registry of correspondence
methods (:mod:`circuitlens.mapping.methods`; the default ``"impact"`` is the paper's, below;
:mod:`circuitlens.mapping.methods` describes the others), all taking the same
arguments. The rest of this docstring describes the impact method.

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
when a tie decides a pair (several candidates at the minimal distance), and when the assignment
is *degenerate*: the cost did not decide the pairs at all (one-to-one: every pairing of the
chosen heads costs the same; :mod:`circuitlens.mapping.checks`). ``HeadMap.distances``
holds each chosen pair's distance. :func:`check_map` recomputes the degenerate check of a saved
map from its saved sweeps.

Controls: :func:`random_map` (random partners) and :func:`permuted_map` (the map's partners,
the pairing deranged).
"""

from __future__ import annotations

import logging
import random
from dataclasses import replace
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from circuitlens.ablation.config import AblationConfig
from circuitlens.ablation.result import AblationResult
from circuitlens.core.types import Circuit, Head, HeadMap, Model, parse_heads
from circuitlens.mapping.checks import TIE, degenerate_warnings, map_warnings
from circuitlens.mapping.config import DEFAULT_BUDGET, MapConfig, map_config
from circuitlens.mapping.features import gather_features
from circuitlens.mapping.methods import (
    METHODS,
    CorrespondenceFeatures,
    CorrespondenceMethod,
    CostInputs,
    generic_warnings,
    get_method,
)
from circuitlens.tasks import Task

log = logging.getLogger(__name__)


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


def _teacher_candidates(features: CorrespondenceFeatures, circuit: Circuit | None) -> list[Head]:
    if features.teacher_sweep is not None:
        return _candidates(features.teacher_sweep, circuit)
    n_layers, n_heads = features.teacher_shape()
    if circuit is None:
        return [Head(layer, h) for layer in range(n_layers) for h in range(n_heads)]
    if not circuit.heads:
        raise ValueError("the circuit has no heads to map to")
    return [h.check(n_layers, n_heads) for h in circuit.heads]


def assign(cost: Float[Tensor, "student teacher"], one_to_one: bool) -> list[int]:
    """The column each row takes: the first minimum (many-to-one), or the assignment of least
    total cost (one-to-one, ``scipy.optimize.linear_sum_assignment``)."""
    if not one_to_one:
        return cost.argmin(1).tolist()  # the first minimum: columns are in (layer, head) order
    from scipy.optimize import linear_sum_assignment

    require_one_to_one(cost.shape[1], cost.shape[0], "the set of candidate teacher heads")
    rows, cols = linear_sum_assignment(cost.double().numpy())
    pick = dict(zip(rows.tolist(), cols.tolist(), strict=True))
    return [pick[i] for i in range(cost.shape[0])]


def _with_sweeps(
    features: CorrespondenceFeatures | None,
    student_sweep: AblationResult,
    teacher_sweep: AblationResult | None,
) -> CorrespondenceFeatures:
    """``features`` (or none) with the sweeps given to :func:`map_heads` (a teacher sweep of
    None keeps the features' own)."""
    if features is None:
        return CorrespondenceFeatures(student_sweep, teacher_sweep)
    t_sweep = teacher_sweep if teacher_sweep is not None else features.teacher_sweep
    return replace(features, student_sweep=student_sweep, teacher_sweep=t_sweep)


def _map_config(
    features: CorrespondenceFeatures,
    budget: float | int,
    one_to_one: bool,
    circuit: Circuit | None,
    warnings: list[str],
) -> dict[str, Any]:
    """The options a map records, in the order ``config`` has always had them."""
    t_sweep = features.teacher_sweep
    return {
        "budget": budget,
        "one_to_one": one_to_one,
        "circuit": None if circuit is None else circuit.to_dict()["groups"],
        "metric": features.student_sweep.config.metric,
        "teacher_baseline": None if t_sweep is None else t_sweep.config.baseline,
        "warnings": warnings,
    }


def _custom(cost: Tensor, features: CorrespondenceFeatures) -> CorrespondenceMethod:
    n_s = len(features.student_sweep.heads)
    t_layers, t_heads = features.teacher_shape()
    if tuple(cost.shape) != (n_s, t_layers * t_heads):
        raise ValueError(
            f"cost= is [student head, teacher head] over all heads in (layer, head) order: "
            f"[{n_s}, {t_layers * t_heads}] for these models, got {list(cost.shape)}"
        )

    def cost_fn(inputs: CostInputs) -> Tensor:
        rows = [
            h.layer * int(features.student_sweep.delta.shape[1]) + h.head for h in inputs.students
        ]
        cols = [h.layer * t_heads + h.head for h in inputs.candidates]
        return cost[rows][:, cols].float()

    return CorrespondenceMethod("custom", cost_fn, (), "a given cost matrix")


def map_heads(
    student_sweep: AblationResult,
    teacher_sweep: AblationResult | None = None,
    circuit: Circuit | None = None,
    config: MapConfig | None = None,
    *,
    student_heads: list[Head | str] | None = None,
    features: CorrespondenceFeatures | None = None,
    cost: Float[Tensor, "s_all t_all"] | None = None,
    **overrides: Any,
) -> HeadMap:
    """Pair each chosen student head with a teacher head by a correspondence method: the one
    function that builds a head map.

    The student heads are the budget's most important by impact (or ``student_heads``); the
    candidates are the circuit's heads (or every teacher head the sweep measured); the method
    (a name in :data:`circuitlens.mapping.methods.METHODS`; ``"impact"``, the paper's closest
    ``|dP_s - dP_t|``, by default) gives the ``[student head, candidate]`` cost; then each
    student head takes its cheapest candidate (many-to-one) or the assignment of least total
    cost (one-to-one). The warnings (:mod:`circuitlens.mapping.checks`: noise, ties, and
    a *degenerate* assignment that the cost did not decide) are logged and kept in
    ``HeadMap.warnings``.

    Args:
        student_sweep, teacher_sweep: the sweeps (the teacher's None for a method that does
            not read it, e.g. ``"cka"``).
        circuit: the teacher heads to map to (None: every measured teacher head).
        config, **overrides: a :class:`~circuitlens.mapping.config.MapConfig` (None: the
            defaults) and its fields by name (``budget=5``; another name: a TypeError):
            ``budget``, ``one_to_one`` (an assignment), ``method``, and ``n_perm``, ``seed``
            (the CKA methods' permutation null); ``teacher_baseline`` is not read.
        student_heads: pair these heads instead of the budget's (the random-heads controls).
        features: what else the method reads (the heads' ``z``: ``gather_features``); the
            sweeps given here replace its own (a teacher sweep of None keeps its).
        cost: a ready ``[student head, teacher head]`` cost over all heads in (layer, head)
            order; the method is then ``"custom"``.

    Returns:
        A :class:`HeadMap` whose ``distances`` are the chosen pairs' costs, ``kind`` is
        ``"ablation"`` for the impact method (else the method's name) and
        ``config["method"]`` names the method.

    >>> import torch
    >>> from circuitlens import AblationConfig, AblationResult
    >>> def sweep(d):
    ...     d = torch.tensor(d)
    ...     return AblationResult(1.0, 1.0, 1 - d, d, "m", AblationConfig())
    >>> hm = map_heads(sweep([[0.3, 0.0], [0.1, 0.05]]), sweep([[0.0, 0.29, 0.12]]), budget=2)
    >>> [(str(s), str(t)) for s, t in hm.pairs]
    [('L0H0', 'L0H1'), ('L1H0', 'L0H2')]
    """
    cfg = map_config(config, overrides, "map_heads")
    budget, one_to_one = cfg.budget, cfg.one_to_one
    features = _with_sweeps(features, student_sweep, teacher_sweep)
    spec = get_method(cfg.method) if cost is None else _custom(cost, features)
    if student_heads is None:
        students = choose_student_heads(student_sweep, budget)
    else:
        students = parse_heads(list(student_heads))
    cands = _teacher_candidates(features, circuit)
    inputs = CostInputs(features, students, cands, {"n_perm": cfg.n_perm, "seed": cfg.seed})
    dist = spec.cost_fn(inputs).float()  # [student, candidate]
    if not bool(torch.isfinite(dist).all()):
        raise ValueError(f"method {spec.name!r} gave a cost that is not finite")
    chosen = assign(dist, one_to_one)
    warnings = (spec.warn_fn or generic_warnings)(inputs, dist, chosen)
    warnings += degenerate_warnings(dist, chosen, one_to_one, students, cands)
    for w in warnings:
        log.warning("map_heads (%s): %s", spec.name, w)
    record = _map_config(features, budget, one_to_one, circuit, warnings)
    if student_heads is not None:
        record["student_heads"] = [str(h) for h in students]
    record["method"] = spec.name
    record |= {k: v for k, v in inputs.extras.items() if k == "cka_null"}
    return HeadMap(
        pairs=[(s, cands[j]) for s, j in zip(students, chosen, strict=True)],
        distances=[float(dist[i, j]) for i, j in enumerate(chosen)],
        kind="ablation" if spec.name == "impact" else spec.name,
        config=record,
    )


def check_map(
    head_map: HeadMap,
    student_sweep: AblationResult,
    teacher_sweep: AblationResult | None,
    features: CorrespondenceFeatures | None = None,
) -> list[str]:
    """The degenerate-assignment warning of a saved map, recomputed from its saved sweeps
    (maps made before :func:`map_heads` checked it lack it).

    The map's method (``config["method"]``, ``"impact"`` when absent), circuit, one-to-one
    setting and student heads are read from the map; its cost is recomputed over the same
    candidates. A random control map, a custom cost, a method that reads features not given
    (``z``: pass ``features``) or a partner that is not a candidate: nothing to check, [].

    Returns:
        The warnings of :func:`~circuitlens.mapping.checks.degenerate_warnings` (zero or
        one line).
    """
    method = head_map.config.get("method", "impact")
    if head_map.kind == "random" or method not in METHODS or len(head_map) < 2:
        return []
    spec = METHODS[method]
    features = replace(
        features or CorrespondenceFeatures(student_sweep, teacher_sweep),
        student_sweep=student_sweep,
        teacher_sweep=teacher_sweep,
    )
    groups = head_map.config.get("circuit")
    circuit = Circuit(groups) if groups else None
    try:
        cands = _teacher_candidates(features, circuit)
        where = {h: j for j, h in enumerate(cands)}
        chosen = [where[t] for t in head_map.teacher_heads]
        students = head_map.student_heads
        dist = spec.cost_fn(CostInputs(features, students, cands, {"n_perm": 0})).float()
    except (KeyError, ValueError):
        return []  # a partner outside the candidates, or features the method reads are absent
    return degenerate_warnings(
        dist, chosen, bool(head_map.config.get("one_to_one")), students, cands
    )


def impact_distances(
    student_sweep: AblationResult,
    teacher_sweep: AblationResult,
    students: list[Head],
    partners: list[Head],
) -> list[float]:
    """``|dP_s - dP_t|`` of each pair (the distance a control's pairs are reported with)."""
    return [
        abs(
            float(student_sweep.delta[s.layer, s.head])
            - float(teacher_sweep.delta[t.layer, t.head])
        )
        for s, t in zip(students, partners, strict=True)
    ]


def random_map(
    student_sweep: AblationResult,
    teacher_sweep: AblationResult,
    circuit: Circuit | None = None,
    config: MapConfig | None = None,
    *,
    student_heads: list[Head | str] | None = None,
    avoid: HeadMap | None = None,
    **overrides: Any,
) -> HeadMap:
    """The control: the same student heads, teacher heads drawn at random from the candidates.

    ``config`` (:class:`~circuitlens.mapping.config.MapConfig`, or its fields by name in
    ``**overrides``: ``budget=3, seed=1``) gives the ``budget``, ``one_to_one`` and the draw's
    ``seed``; its other fields are not read. ``student_heads`` replace the budget's.
    ``avoid`` (the ablation map) keeps each student head off its aligned partner, so the
    control is never the treatment by chance (1 in 32 on the zoo teacher otherwise).
    """
    cfg = map_config(config, overrides, "random_map")
    budget, one_to_one, seed = cfg.budget, cfg.one_to_one, cfg.seed
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
    dist = impact_distances(student_sweep, teacher_sweep, students, picked)
    record: dict[str, Any] = {
        "budget": budget,
        "one_to_one": one_to_one,
        "seed": seed,
        "circuit": None if circuit is None else circuit.to_dict()["groups"],
        "avoid": None if avoid is None else [[str(a), str(b)] for a, b in avoid.pairs],
    }
    return HeadMap(
        pairs=list(zip(students, picked, strict=True)), distances=dist, kind="random", config=record
    )


def permuted_map(
    aligned: HeadMap,
    student_sweep: AblationResult,
    teacher_sweep: AblationResult,
    seed: int = 0,
) -> HeadMap:
    """The control ``ce+permuted``: the map's student heads with the map's teacher heads,
    the pairing permuted (seeded) so that no student head keeps its partner.

    The permutation is a derangement of the partners *as heads*: where several student heads
    share a partner (many-to-one), none of them gets that head back. Drawn uniformly by
    rejection (seeded); where that finds none in 10,000 draws, by the classic construction
    (positions sorted by partner, shifted by the largest group's size). It exists iff no
    teacher head is the partner of more than half the pairs.

    Raises:
        ValueError: fewer than 2 pairs, or one teacher head partners more than half of them
            (no pairing moves every head): both named.

    Returns:
        A :class:`HeadMap` (``kind="permuted"``) whose distances are ``|dP_s - dP_t|``.
    """
    students, partners = aligned.student_heads, aligned.teacher_heads
    k = len(partners)
    if k < 2:
        raise ValueError(
            f"ce+permuted needs a map of at least 2 pairs to permute (this map has {k}): "
            "raise the budget, or leave ce+permuted out of the conditions"
        )
    most = max(partners.count(t) for t in set(partners))
    if 2 * most > k:
        raise ValueError(
            f"ce+permuted: one teacher head partners {most} of the map's {k} pairs, so no "
            "permutation gives every student head another partner (a many-to-one map that "
            "collapsed): use a one-to-one map, or leave ce+permuted out of the conditions"
        )
    rng = random.Random(f"permuted:{seed}")
    order = list(range(k))
    for _ in range(10_000):
        rng.shuffle(order)
        if all(partners[order[i]] != partners[i] for i in range(k)):
            break
    else:  # sorted by partner, shifted by the largest group: no position meets its own head
        by_head = sorted(range(k), key=lambda i: (partners[i].layer, partners[i].head))
        order = [0] * k
        for a, i in enumerate(by_head):
            order[i] = by_head[(a + most) % k]
    picked = [partners[order[i]] for i in range(k)]
    dist = impact_distances(student_sweep, teacher_sweep, students, picked)
    config: dict[str, Any] = {
        "budget": aligned.config.get("budget"),
        "one_to_one": aligned.config.get("one_to_one"),
        "seed": seed,
        "method": aligned.config.get("method", "impact"),
        "permuted": [[str(a), str(b)] for a, b in aligned.pairs],
    }
    return HeadMap(
        pairs=list(zip(students, picked, strict=True)), distances=dist, kind="permuted",
        config=config,
    )  # fmt: skip


__all__ = [
    "DEFAULT_BUDGET",
    "TIE",
    "assign",
    "budget_count",
    "check_map",
    "choose_student_heads",
    "degenerate_warnings",
    "map_heads",
    "map_warnings",
    "permuted_map",
    "random_map",
    "teacher_candidates",
]


# --- the map from measured features, and from the models in one call -------------------------


def correspond_features(
    features: CorrespondenceFeatures,
    config: MapConfig | None = None,
    *,
    circuit: Circuit | None = None,
    student_heads: list[Head | str] | None = None,
    cost: Float[Tensor, "s_all t_all"] | None = None,
    **overrides: Any,
) -> HeadMap:
    """Map student heads to teacher heads from measured features: a thin wrapper of
    :func:`circuitlens.mapping.map.map_heads` (the one function that builds maps), which
    see for the arguments (``correspond_features(features, method="cka", budget=3)``).

    Returns:
        A :class:`HeadMap` whose ``distances`` are the chosen pairs' costs and whose
        ``config["method"]`` names the method.
    """
    return map_heads(
        features.student_sweep,
        features.teacher_sweep,
        circuit,
        map_config(config, overrides, "correspond_features"),
        student_heads=student_heads,
        features=features,
        cost=cost,
    )


#: the sweep options :func:`correspond` takes by name beside the MapConfig fields (fields of
#: :class:`~circuitlens.ablation.config.AblationConfig`, at its defaults when not given)
SWEEP_OPTIONS: tuple[str, ...] = ("n", "metric", "split", "n_boot")


def correspond(
    student: Model,
    teacher: Model,
    task: Task,
    config: MapConfig | None = None,
    *,
    circuit: Circuit | None = None,
    student_heads: list[Head | str] | None = None,
    progress: bool = False,
    **overrides: Any,
) -> HeadMap:
    """Map each chosen student head to a teacher head by ``config.method`` (see the module
    docstring), measuring only what the method reads:
    ``correspond(s, t, task, method="cka", budget=5, n=64)``.

    Args:
        config: the map's options (:class:`~circuitlens.mapping.config.MapConfig`; None: the
            defaults): ``method`` (``"impact"``, ``"impact-rank"``, ``"profile"``, ``"cka"``,
            ``"combined"`` or a name added with :func:`register_method`), ``budget``,
            ``one_to_one``, ``teacher_baseline`` (the teacher sweep's baseline,
            :func:`gather_features`), and ``n_perm``, ``seed`` (the CKA methods' permutation
            null).
        circuit, student_heads: as :func:`circuitlens.mapping.map.map_heads`.
        **overrides: MapConfig fields by name, replacing ``config``'s; and the sweeps'
            options (:data:`SWEEP_OPTIONS`: ``n``, ``metric``, ``split``, ``n_boot``, as in
            :class:`~circuitlens.ablation.config.AblationConfig`, whose defaults hold for those
            not given). Another name is a TypeError that lists the valid ones.

    Returns:
        The :class:`HeadMap` (``config["method"]`` names the method).
    """
    sweep = {k: overrides.pop(k) for k in SWEEP_OPTIONS if k in overrides}
    cfg = map_config(config, overrides, "correspond", also=SWEEP_OPTIONS)
    features = gather_features(
        student,
        teacher,
        task,
        get_method(cfg.method).needs,
        AblationConfig(**sweep),
        teacher_baseline=cfg.teacher_baseline,
        progress=progress,
    )
    return correspond_features(features, cfg, circuit=circuit, student_heads=student_heads)
