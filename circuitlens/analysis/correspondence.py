"""Which teacher head is each student head? Correspondence methods, and a known answer to test
them on.

Every method is one entry of a registry (:data:`METHODS`) with one signature: a
:class:`CorrespondenceMethod` holds a ``cost_fn(inputs) -> cost[student_head, teacher_head]``
(low = alike) over the chosen student heads (rows) and the candidate teacher heads (columns).
The student heads are chosen as :func:`circuitlens.analysis.mapping.map_heads` chooses them, the
budget's most important by impact (:func:`~circuitlens.analysis.mapping.choose_student_heads`), and
the
candidates are the circuit's heads (or all measured teacher heads). Each student head then takes
its cheapest candidate (many-to-one: the first minimum in (layer, head) order) or the assignment
of least total cost (one-to-one: ``scipy.optimize.linear_sum_assignment``). ``HeadMap.distances``
holds each pair's cost and ``HeadMap.config["method"]`` names the method.

The methods (impacts are ``dP = P_baseline - P_ablated`` of mean-ablating one head,
:func:`circuitlens.ablation_sweep`):

- ``"impact"``: ``|dP_s - dP_t|``, the paper's map, equal to ``map_heads`` (same pairs, distances
  and warnings). When the models' impacts live on different scales (the SmolLM2 pair: every
  teacher impact negative against the student's baseline, the student's from -0.05 to +0.22)
  every student head's nearest teacher head is the same one.
- ``"impact-rank"``: ``|q_s - q_t|`` with each model's impacts replaced by their within-model
  rank quantiles (``(rank - 1/2) / N`` over the model's measured heads, average ranks for ties):
  the k-th most important student head meets the teacher head of the same quantile whatever the
  two scales.
- ``"profile"``: each head's per-prompt impact vector on the same prompts
  (``AblationResult.prompt_delta``, against each model's own score on each prompt), matched by
  correlation distance ``1 - r`` (Pearson, in [0, 2]). A head whose impact is the same on every
  prompt (e.g. 0: it never matters) has no defined correlation; it is given ``r = 0``.
- ``"cka"``: ``1 - CKA``, debiased linear CKA (:func:`circuitlens.analysis.cka`) of the head's
``z`` at
  the last position over the prompts, each untrained student head against each teacher head.
  The chosen pairs get their permutation null (:func:`circuitlens.cka_with_null`, prompts of the
  teacher side shuffled) in ``config["cka_null"]``.
- ``"combined"``: ``(1 - r) / 4 + (1 - CKA) / 2``: the mean of the profile and CKA costs, each
  first put on [0, 1] (``1 - r`` spans [0, 2]). Profile reads what a head does to the answer,
  CKA what it computes; equal weights because neither is known to be the better witness, and a
  head the profile cannot tell apart (a constant impact) is then decided by its CKA.

A user method is one :func:`register_method` call; a ready cost matrix over all heads can be
passed as ``cost=`` instead (``config["method"] == "custom"``).

Warnings, where noise or ties decide a pair, go to the log and ``config["warnings"]``: the
impact methods give :func:`circuitlens.analysis.mapping.map_warnings`' (a chosen head's impact
interval
contains 0, a tie decides the student heads or a partner); the others give its student-side
warnings and the ties of their own cost, plus their own: ``profile`` when a student head's
profile is constant, or when its partner's correlation is within the noise of the runner-up's
(Fisher z differ by less than ``1.96 sqrt(2 / (n - 3))``); ``cka`` when a pair's CKA does not
exceed its null's mean by two null sds.

The known answer (:mod:`circuitlens.analysis.known_answer`): ``permuted_copy`` relabels a
model's query heads within each layer (inside their K/V group, and optionally the groups as
wholes) without changing the function, plus optional seeded weight noise; ``recovery`` is the
fraction of chosen student heads a map sends to their own relabelled copy.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from einops import rearrange
from jaxtyping import Float
from torch import Tensor

from circuitlens.analysis.ablation import AblationConfig, ablation_sweep
from circuitlens.analysis.costs import (
    METHODS,
    NEEDS,
    CorrespondenceFeatures,
    CorrespondenceMethod,
    CostFn,
    CostInputs,
    generic_warnings,
    get_method,
    rank_quantiles,
    register_method,
)
from circuitlens.analysis.head_features import gather_more
from circuitlens.analysis.mapping import (
    DEFAULT_BUDGET,
    choose_student_heads,
    require_one_to_one,
    teacher_candidates,
)
from circuitlens.core.hooks import z_name
from circuitlens.core.types import Circuit, Head, HeadMap, parse_heads
from circuitlens.models.registry import model_facts
from circuitlens.tasks import Task
from circuitlens.tasks.metrics import model_device, no_logits

log = logging.getLogger(__name__)

#: the public names; the registry's (:mod:`circuitlens.analysis.costs`) are re-exported here
__all__ = [
    "METHODS",
    "NEEDS",
    "CorrespondenceFeatures",
    "CorrespondenceMethod",
    "CostInputs",
    "assign",
    "correspond",
    "correspond_features",
    "gather_features",
    "get_method",
    "head_z",
    "rank_quantiles",
    "register_method",
]

# --- the map ---------------------------------------------------------------------------------


def _teacher_candidates(features: CorrespondenceFeatures, circuit: Circuit | None) -> list[Head]:
    if features.teacher_sweep is not None:
        return teacher_candidates(features.teacher_sweep, circuit)
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


def _custom(cost: Tensor, features: CorrespondenceFeatures) -> CostFn:
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

    return cost_fn


def correspond_features(
    features: CorrespondenceFeatures,
    method: str = "impact",
    budget: float | int = DEFAULT_BUDGET,
    one_to_one: bool = False,
    *,
    circuit: Circuit | None = None,
    student_heads: list[Head | str] | None = None,
    cost: Float[Tensor, "s_all t_all"] | None = None,
    n_perm: int = 20,
    seed: int = 0,
) -> HeadMap:
    """Map student heads to teacher heads from measured features (the lower-level entry).

    Args:
        features: the sweeps and activations (:func:`gather_features`).
        method: a name in :data:`METHODS` (ignored when ``cost`` is given).
        budget, one_to_one, circuit, student_heads: as
            :func:`circuitlens.analysis.mapping.map_heads`.
        cost: a ready ``[student head, teacher head]`` cost over all heads in (layer, head)
            order; the map's method is then ``"custom"``.
        n_perm, seed: the permutation null of the CKA methods.

    Returns:
        A :class:`HeadMap` whose ``distances`` are the chosen pairs' costs and whose
        ``config["method"]`` names the method.
    """
    if cost is not None:
        spec = CorrespondenceMethod("custom", _custom(cost, features), (), "a given cost matrix")
    else:
        spec = get_method(method)
    s_sweep = features.student_sweep
    if student_heads is None:
        students = choose_student_heads(s_sweep, budget)
    else:
        students = parse_heads(list(student_heads))
    inputs = CostInputs(
        features, students, _teacher_candidates(features, circuit), {"n_perm": n_perm, "seed": seed}
    )
    dist = spec.cost_fn(inputs).float()
    if not bool(torch.isfinite(dist).all()):
        raise ValueError(f"method {spec.name!r} gave a cost that is not finite")
    chosen = assign(dist, one_to_one)
    warnings = (spec.warn_fn or generic_warnings)(inputs, dist, chosen)
    for w in warnings:
        log.warning("correspond (%s): %s", spec.name, w)
    t_sweep = features.teacher_sweep
    config: dict[str, Any] = {
        "budget": budget,
        "one_to_one": one_to_one,
        "circuit": None if circuit is None else circuit.to_dict()["groups"],
        "metric": s_sweep.config.metric,
        "teacher_baseline": None if t_sweep is None else t_sweep.config.baseline,
        "warnings": warnings,
    }
    if student_heads is not None:
        config["student_heads"] = [str(h) for h in students]
    config["method"] = spec.name
    if "cka_null" in inputs.extras:
        config["cka_null"] = inputs.extras["cka_null"]
    cands = inputs.candidates
    return HeadMap(
        pairs=[(s, cands[j]) for s, j in zip(students, chosen, strict=True)],
        distances=[float(dist[i, j]) for i, j in enumerate(chosen)],
        kind="ablation" if spec.name == "impact" else spec.name,
        config=config,
    )


# --- measuring -------------------------------------------------------------------------------


@torch.no_grad()
def head_z(
    model: Any, task: Task, split: str = "test", n: int | None = 200, batch_size: int = 64
) -> Float[Tensor, "n layer head d_head"]:
    """Every head's ``z`` (the input of W_O) at each prompt's last position, on CPU."""
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
    student: Any,
    teacher: Any,
    task: Task,
    needs: Sequence[str] = NEEDS,
    *,
    metric: str = AblationConfig.metric,
    n: int | None = AblationConfig.n,
    split: str = "test",
    teacher_baseline: str = "student",
    n_boot: int = AblationConfig.n_boot,
    progress: bool = False,
) -> CorrespondenceFeatures:
    """Measure what ``needs`` asks for (the student's sweep always): the sweeps (exact, on the
    same ``n`` prompts of ``split``; ``teacher_baseline="student"``: the teacher's impacts
    against the student's P, as :func:`circuitlens.distill.sweeps.sweeps` does, or ``"own"``) and
    the
    heads' ``z`` at the last position on the same prompts; weights, ``z`` at named positions or
    tokens, and attention patterns (:func:`~circuitlens.analysis.head_features.gather_more`)."""
    if teacher_baseline not in ("student", "own"):
        raise ValueError(f"teacher_baseline must be 'student' or 'own' (got {teacher_baseline!r})")
    bad = [x for x in needs if x not in NEEDS]
    if bad:
        raise ValueError(f"unknown needs {bad}; valid: {', '.join(NEEDS)}")
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
    more = gather_more(student, teacher, task, needs, split=split, n=n)
    return CorrespondenceFeatures(s_sweep, t_sweep, zs, zt, more)


def correspond(
    student: Any,
    teacher: Any,
    task: Task,
    method: str = "impact",
    budget: float | int = DEFAULT_BUDGET,
    one_to_one: bool = False,
    *,
    n: int | None = AblationConfig.n,
    metric: str = AblationConfig.metric,
    split: str = "test",
    teacher_baseline: str = "student",
    circuit: Circuit | None = None,
    student_heads: list[Head | str] | None = None,
    n_boot: int = AblationConfig.n_boot,
    n_perm: int = 20,
    seed: int = 0,
    progress: bool = False,
) -> HeadMap:
    """Map each chosen student head to a teacher head by ``method`` (see the module docstring),
    measuring only what the method reads.

    Args:
        method: ``"impact"``, ``"impact-rank"``, ``"profile"``, ``"cka"``, ``"combined"`` or a
            name added with :func:`register_method`.
        budget, one_to_one, circuit, student_heads: as
            :func:`circuitlens.analysis.mapping.map_heads`.
        n, metric, split, teacher_baseline, n_boot: the sweeps and prompts
            (:func:`gather_features`).
        n_perm, seed: the CKA methods' permutation null.

    Returns:
        The :class:`HeadMap` (``config["method"]`` names the method).
    """
    spec = get_method(method)
    features = gather_features(
        student,
        teacher,
        task,
        spec.needs,
        metric=metric,
        n=n,
        split=split,
        teacher_baseline=teacher_baseline,
        n_boot=n_boot,
        progress=progress,
    )
    return correspond_features(
        features,
        method,
        budget,
        one_to_one,
        circuit=circuit,
        student_heads=student_heads,
        n_perm=n_perm,
        seed=seed,
    )


__all__ = [
    "METHODS",
    "CorrespondenceFeatures",
    "CorrespondenceMethod",
    "CostInputs",
    "correspond",
    "correspond_features",
    "gather_features",
    "get_method",
    "head_z",
    "rank_quantiles",
    "register_method",
]
