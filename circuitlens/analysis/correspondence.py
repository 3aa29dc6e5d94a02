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
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from einops import rearrange
from jaxtyping import Float
from torch import Tensor

from circuitlens.analysis.ablation import AblationConfig, AblationResult, ablation_sweep
from circuitlens.analysis.cka import cka, cka_with_null
from circuitlens.analysis.mapping import (
    DEFAULT_BUDGET,
    choose_student_heads,
    map_warnings,
    require_one_to_one,
    teacher_candidates,
)
from circuitlens.core.hooks import z_name
from circuitlens.core.types import Circuit, Head, HeadMap, parse_heads
from circuitlens.models.registry import model_facts
from circuitlens.tasks import Task
from circuitlens.tasks.metrics import model_device, no_logits

log = logging.getLogger(__name__)

NEEDS = ("teacher_sweep", "prompt_delta", "z")


@dataclass
class CorrespondenceFeatures:
    """What the methods read, measured once for a student-teacher pair.

    Attributes:
        student_sweep: the student's sweep (chooses the student heads; always needed).
        teacher_sweep: the teacher's sweep, or None when no method asked for it.
        student_z, teacher_z: ``[n, layer, head, d_head]`` each head's ``z`` at the last
            position of the sweep's prompts, or None.
    """

    student_sweep: AblationResult
    teacher_sweep: AblationResult | None = None
    student_z: Float[Tensor, "n s_layer s_head s_d"] | None = None
    teacher_z: Float[Tensor, "n t_layer t_head t_d"] | None = None

    def teacher_shape(self) -> tuple[int, int]:
        """The teacher's (layers, heads), from whichever teacher feature is present."""
        if self.teacher_sweep is not None:
            n_layers, n_heads = self.teacher_sweep.delta.shape
            return int(n_layers), int(n_heads)
        if self.teacher_z is not None:
            return int(self.teacher_z.shape[1]), int(self.teacher_z.shape[2])
        raise ValueError("no teacher features: pass teacher_sweep or teacher_z")


@dataclass
class CostInputs:
    """The one argument of every ``cost_fn``.

    Attributes:
        features: the measured features.
        students: the chosen student heads (the cost's rows, in this order).
        candidates: the candidate teacher heads (its columns).
        options: method options (``n_perm``, ``seed``).
        extras: what a cost function leaves for its warnings or the map's config.
    """

    features: CorrespondenceFeatures
    students: list[Head]
    candidates: list[Head]
    options: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)


CostFn = Callable[[CostInputs], Tensor]
WarnFn = Callable[[CostInputs, Tensor, list[int]], list[str]]


@dataclass(frozen=True)
class CorrespondenceMethod:
    """One correspondence method.

    Attributes:
        name: the name ``correspond(method=...)`` takes.
        cost_fn: ``cost_fn(inputs) -> [student_head, teacher_head]`` costs (low = alike).
        needs: which features it reads besides the student sweep, among :data:`NEEDS`.
        description: one line for listings.
        warn_fn: ``warn_fn(inputs, cost, chosen) -> warnings`` (``chosen[i]``: the column
            taken by row ``i``); None: :func:`generic_warnings`.
    """

    name: str
    cost_fn: CostFn
    needs: tuple[str, ...] = ()
    description: str = ""
    warn_fn: WarnFn | None = None


METHODS: dict[str, CorrespondenceMethod] = {}


def register_method(
    name: str,
    cost_fn: CostFn,
    needs: Sequence[str] = (),
    description: str = "",
    warn_fn: WarnFn | None = None,
) -> CorrespondenceMethod:
    """Add (or replace) a method: ``correspond(..., method=name)`` then uses ``cost_fn``."""
    bad = [x for x in needs if x not in NEEDS]
    if bad:
        raise ValueError(f"unknown needs {bad}; valid: {', '.join(NEEDS)}")
    method = CorrespondenceMethod(name, cost_fn, tuple(needs), description, warn_fn)
    METHODS[name] = method
    return method


def get_method(name: str) -> CorrespondenceMethod:
    """The registered method ``name``, or an error listing the valid ones."""
    if name not in METHODS:
        raise ValueError(f"unknown correspondence method {name!r}; valid: {', '.join(METHODS)}")
    return METHODS[name]


# --- the costs -------------------------------------------------------------------------------


def _values(t: Tensor, heads: list[Head]) -> Tensor:
    return torch.stack([t[h.layer, h.head] for h in heads])


def _teacher_sweep(inputs: CostInputs) -> AblationResult:
    sweep = inputs.features.teacher_sweep
    if sweep is None:
        raise ValueError("this method reads the teacher's sweep: gather it (needs teacher_sweep)")
    return sweep


def impact_cost(inputs: CostInputs) -> Float[Tensor, "student teacher"]:
    """``|dP_s - dP_t|``, computed as :func:`circuitlens.analysis.mapping.map_heads` does."""
    s = inputs.features.student_sweep
    ds = torch.tensor([float(s.delta[h.layer, h.head]) for h in inputs.students])
    t = _teacher_sweep(inputs)
    dt = torch.tensor([float(t.delta[h.layer, h.head]) for h in inputs.candidates])
    return (ds[:, None] - dt[None, :]).abs()


def rank_quantiles(values: Float[Tensor, " k"]) -> Float[Tensor, " k"]:
    """``(rank - 1/2) / k`` of each value (rank 1 the smallest; ties share their mean rank)."""
    v = values.double()
    below = (v[None, :] < v[:, None]).sum(1).double()
    equal = (v[None, :] == v[:, None]).sum(1).double()
    return ((below + (equal + 1) / 2 - 0.5) / v.numel()).float()


def _quantile_of(sweep: AblationResult, heads: list[Head]) -> Tensor:
    measured = sweep.exact_heads
    q = rank_quantiles(_values(sweep.delta, measured).float())
    where = {h: i for i, h in enumerate(measured)}
    return torch.stack([q[where[h]] for h in heads])


def impact_rank_cost(inputs: CostInputs) -> Float[Tensor, "student teacher"]:
    """``|q_s - q_t|`` of the within-model rank quantiles of the impacts."""
    qs = _quantile_of(inputs.features.student_sweep, inputs.students)
    qt = _quantile_of(_teacher_sweep(inputs), inputs.candidates)
    return (qs[:, None] - qt[None, :]).abs()


def _profiles(sweep: AblationResult | None, heads: list[Head], side: str) -> Tensor:
    if sweep is None or sweep.prompt_delta is None:
        raise ValueError(
            f"the {side}'s sweep holds no per-prompt impacts (prompt_delta): rerun the sweep "
            "(results saved before prompt_delta was kept lack them)"
        )
    return torch.stack([sweep.prompt_delta[h.layer, h.head] for h in heads]).double()


def correlation(
    a: Float[Tensor, "k n"], b: Float[Tensor, "m n"]
) -> tuple[Float[Tensor, "k m"], Float[Tensor, " k"], Float[Tensor, " m"]]:
    """Pearson r of every row of ``a`` with every row of ``b`` (0 where a row is constant),
    and which rows of ``a`` and ``b`` are constant."""
    a = a.double() - a.double().mean(1, keepdim=True)
    b = b.double() - b.double().mean(1, keepdim=True)
    na, nb = a.norm(dim=1), b.norm(dim=1)
    flat_a, flat_b = na <= 1e-12 * (1 + a.abs().max()), nb <= 1e-12 * (1 + b.abs().max())
    r = (a / na.clamp(min=1e-300)[:, None]) @ (b / nb.clamp(min=1e-300)[:, None]).T
    r = r.masked_fill(flat_a[:, None] | flat_b[None, :], 0.0).clamp(-1, 1)
    return r.float(), flat_a.float(), flat_b.float()


def profile_cost(inputs: CostInputs) -> Float[Tensor, "student teacher"]:
    """``1 - r``: Pearson correlation of the per-prompt impact vectors."""
    a = _profiles(inputs.features.student_sweep, inputs.students, "student")
    b = _profiles(inputs.features.teacher_sweep, inputs.candidates, "teacher")
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"the sweeps scored {a.shape[1]} and {b.shape[1]} prompts: a profile compares "
            "impacts on the same prompts (sweep both with the same split and n)"
        )
    r, flat_s, _ = correlation(a, b)
    inputs.extras["profile_r"] = r
    inputs.extras["profile_flat"] = [h for h, f in zip(inputs.students, flat_s, strict=True) if f]
    inputs.extras["n_prompts"] = a.shape[1]
    return 1 - r


def _z(inputs: CostInputs) -> tuple[Tensor, Tensor]:
    f = inputs.features
    if f.student_z is None or f.teacher_z is None:
        raise ValueError("this method reads the heads' z: gather it (needs z)")
    if f.student_z.shape[0] != f.teacher_z.shape[0]:
        raise ValueError(
            f"z of {f.student_z.shape[0]} and {f.teacher_z.shape[0]} prompts: CKA compares "
            "the heads on the same prompts"
        )
    x = torch.stack([f.student_z[:, h.layer, h.head] for h in inputs.students])
    y = torch.stack([f.teacher_z[:, h.layer, h.head] for h in inputs.candidates])
    return x, y  # [student, n, d_s], [teacher, n, d_t]


def cka_cost(inputs: CostInputs) -> Float[Tensor, "student teacher"]:
    """``1 - CKA``: debiased linear CKA of the heads' ``z`` at the last position."""
    x, y = _z(inputs)
    rows = [cka(xi.expand(y.shape[0], -1, -1), y) for xi in x]  # each [teacher]
    value = torch.stack(rows).float()
    inputs.extras["cka"] = value
    return 1 - value


def combined_cost(inputs: CostInputs) -> Float[Tensor, "student teacher"]:
    """``(1 - r) / 4 + (1 - CKA) / 2``: profile and CKA costs on [0, 1], weighted equally."""
    return profile_cost(inputs) / 4 + cka_cost(inputs) / 2


# --- warnings --------------------------------------------------------------------------------


def generic_warnings(inputs: CostInputs, cost: Tensor, chosen: list[int]) -> list[str]:
    """The student-side warnings of :func:`~circuitlens.analysis.mapping.map_warnings` (the student
    heads are chosen by impact) and the ties of this cost; not the teacher's impact intervals,
    which a method that does not read the teacher's impact does not depend on."""
    s = inputs.features.student_sweep
    blind = replace(s, delta_ci=None)  # no intervals: no teacher-impact lines
    cands = inputs.candidates
    return map_warnings(s, blind, inputs.students, [cands[j] for j in chosen], cost, cands)


def impact_warnings(inputs: CostInputs, cost: Tensor, chosen: list[int]) -> list[str]:
    """:func:`~circuitlens.analysis.mapping.map_warnings`, as ``map_heads`` gives them."""
    cands = inputs.candidates
    return map_warnings(
        inputs.features.student_sweep,
        _teacher_sweep(inputs),
        inputs.students,
        [cands[j] for j in chosen],
        cost,
        cands,
    )


def _runner_up(row: Tensor, j: int) -> int | None:
    others = [k for k in range(row.numel()) if k != j]
    return min(others, key=lambda k: float(row[k])) if others else None


def profile_warnings(inputs: CostInputs, cost: Tensor, chosen: list[int]) -> list[str]:
    """Constant profiles, and partners whose correlation is within noise of the runner-up's."""
    out = []
    flat = inputs.extras.get("profile_flat", [])
    if flat:
        out.append(
            f"student head(s) {', '.join(map(str, flat))}: the impact is the same on every "
            "prompt, so its profile has no correlation (r = 0 with every teacher head)"
        )
    r, n = inputs.extras["profile_r"].double(), int(inputs.extras["n_prompts"])
    if n > 3:
        margin = 1.96 * math.sqrt(2 / (n - 3))
        z = torch.atanh(r.clamp(-1 + 1e-7, 1 - 1e-7))
        for i, (s, j) in enumerate(zip(inputs.students, chosen, strict=True)):
            k = _runner_up(-r[i], j)
            if k is not None and float(z[i, j] - z[i, k]) < margin:
                out.append(
                    f"noise may decide {s}'s partner: r = {float(r[i, j]):.3f} with "
                    f"{inputs.candidates[j]}, {float(r[i, k]):.3f} with {inputs.candidates[k]} "
                    f"(Fisher z differ by less than {margin:.3f} on {n} prompts)"
                )
    return out


def cka_warnings(inputs: CostInputs, cost: Tensor, chosen: list[int]) -> list[str]:
    """The permutation null of each chosen pair (into ``extras["cka_null"]``) and the pairs
    whose CKA does not exceed it by two null sds."""
    x, y = _z(inputs)
    null = cka_with_null(
        x[:, :, None, :],
        y[chosen][:, :, None, :],
        n_perm=int(inputs.options.get("n_perm", 20)),
        seed=int(inputs.options.get("seed", 0)),
    )
    inputs.extras["cka_null"] = null.to_dict()
    out = []
    for i, (s, j) in enumerate(zip(inputs.students, chosen, strict=True)):
        v, m, sd = (float(t[i]) for t in (null.value, null.null_mean, null.null_sd))
        if v <= m + 2 * sd:
            out.append(
                f"{s} -> {inputs.candidates[j]}: CKA {v:.3f} does not exceed its permutation "
                f"null ({m:.3f} +- {sd:.3f}, {null.n_perm} permutations) by 2 sd"
            )
    return out


def _generic_then(*more: WarnFn) -> WarnFn:
    def warn(inputs: CostInputs, cost: Tensor, chosen: list[int]) -> list[str]:
        out = generic_warnings(inputs, cost, chosen)
        for fn in more:
            out += fn(inputs, cost, chosen)
        return out

    return warn


register_method("impact", impact_cost, ("teacher_sweep",), "|dP_s - dP_t|", impact_warnings)
register_method(
    "impact-rank",
    impact_rank_cost,
    ("teacher_sweep",),
    "|q_s - q_t| of within-model impact rank quantiles",
    impact_warnings,
)
register_method(
    "profile",
    profile_cost,
    ("teacher_sweep", "prompt_delta"),
    "1 - Pearson r of the per-prompt impacts",
    _generic_then(profile_warnings),
)
register_method(
    "cka",
    cka_cost,
    ("z",),
    "1 - debiased CKA of z at the last position",
    _generic_then(cka_warnings),
)
register_method(
    "combined",
    combined_cost,
    ("teacher_sweep", "prompt_delta", "z"),
    "(1 - r) / 4 + (1 - CKA) / 2",
    _generic_then(profile_warnings, cka_warnings),
)


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
    heads' ``z`` at the last position on the same prompts."""
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
    return CorrespondenceFeatures(s_sweep, t_sweep, zs, zt)


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
