"""Which teacher head is each student head? The correspondence methods' registry, their costs
and warnings, and a known answer to test them on.

Every method is one entry of a registry (:data:`METHODS`) with one signature: a
:class:`CorrespondenceMethod` holds a ``cost_fn(inputs) -> cost[student_head, teacher_head]``
(low = alike) over the chosen student heads (rows) and the candidate teacher heads (columns).
One function builds every map, whatever the method:
:func:`circuitlens.mapping.map.map_heads` (``method=`` a registered name). The student
heads are the budget's most important by impact
(:func:`~circuitlens.mapping.map.choose_student_heads`), and the candidates are the
circuit's heads (or all measured teacher heads). Each student head then takes its cheapest
candidate (many-to-one: the first minimum in (layer, head) order) or the assignment of least
total cost (one-to-one: ``scipy.optimize.linear_sum_assignment``). ``HeadMap.distances`` holds
each pair's cost and ``HeadMap.config["method"]`` names the method. What the methods read is
measured by :func:`circuitlens.mapping.features.gather_features`;
:func:`circuitlens.mapping.map.correspond` measures and maps in one call and
:func:`~circuitlens.mapping.map.correspond_features` is ``map_heads`` over measured features.

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
- ``"cka"``: ``1 - CKA``, debiased linear CKA (:func:`circuitlens.measure.cka`) of the head's
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
impact methods give :func:`circuitlens.mapping.map.map_warnings`' (a chosen head's impact
interval
contains 0, a tie decides the student heads or a partner); the others give its student-side
warnings and the ties of their own cost, plus their own: ``profile`` when a student head's
profile is constant, or when its partner's correlation is within the noise of the runner-up's
(Fisher z differ by less than ``1.96 sqrt(2 / (n - 3))``); ``cka`` when a pair's CKA does not
exceed its null's mean by two null sds. Every method also gets the degenerate-assignment check
(:mod:`circuitlens.mapping.checks`: the cost did not decide the pairs).

The known answer (:mod:`circuitlens.mapping.known_answer`): ``permuted_copy`` relabels a
model's query heads within each layer (inside their K/V group, and optionally the groups as
wholes) without changing the function, plus optional seeded weight noise; ``recovery`` is the
fraction of chosen student heads a map sends to their own relabelled copy.

This module holds what a method is (:class:`CorrespondenceMethod`, its one argument
:class:`CostInputs`, the features it reads :class:`CorrespondenceFeatures`), the registry
(:data:`METHODS`, :func:`register_method`) and the five built-in methods' costs and warnings
(the weight-space methods: :mod:`circuitlens.mapping.weights`; the multi-position ones:
:mod:`circuitlens.mapping.positions`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from circuitlens.ablation.result import AblationResult
from circuitlens.core.types import Head
from circuitlens.mapping.checks import map_warnings
from circuitlens.measure.cka import cka, cka_with_null

#: what a method may read; the last four are measured by :mod:`circuitlens.mapping.features`
#: into ``CorrespondenceFeatures.more`` (weights: none; the others: one forward pass per model)
NEEDS = ("teacher_sweep", "prompt_delta", "z", "weights", "z_positions", "z_tokens", "pattern")


@dataclass
class CorrespondenceFeatures:
    """What the methods read, measured once for a student-teacher pair.

    Attributes:
        student_sweep: the student's sweep (chooses the student heads; always needed).
        teacher_sweep: the teacher's sweep, or None when no method asked for it.
        student_z, teacher_z: ``[n, layer, head, d_head]`` each head's ``z`` at the last
            position of the sweep's prompts, or None.
        more: the other features, keyed by need (``"weights"``, ``"z_positions"``...), each a
            ``(student, teacher)`` pair (:func:`circuitlens.mapping.features.gather_more`).
    """

    student_sweep: AblationResult
    teacher_sweep: AblationResult | None = None
    student_z: Float[Tensor, "n s_layer s_head s_d"] | None = None
    teacher_z: Float[Tensor, "n t_layer t_head t_d"] | None = None
    more: dict[str, Any] = field(default_factory=dict)

    def teacher_shape(self) -> tuple[int, int]:
        """The teacher's (layers, heads), from whichever teacher feature is present."""
        if self.teacher_sweep is not None:
            n_layers, n_heads = self.teacher_sweep.delta.shape
            return int(n_layers), int(n_heads)
        if self.teacher_z is not None:
            return int(self.teacher_z.shape[1]), int(self.teacher_z.shape[2])
        for _, teacher in self.more.values():
            if hasattr(teacher, "head_shape"):
                return teacher.head_shape
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
        name: the name ``map_heads(method=...)`` takes.
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
    """Add (or replace) a method: ``map_heads(..., method=name)`` then uses ``cost_fn``."""
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
    """``|dP_s - dP_t|``, computed as :func:`circuitlens.mapping.map.map_heads` does."""
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
    """The student-side warnings of :func:`~circuitlens.mapping.map.map_warnings` (the student
    heads are chosen by impact) and the ties of this cost; not the teacher's impact intervals,
    which a method that does not read the teacher's impact does not depend on."""
    s = inputs.features.student_sweep
    blind = replace(s, delta_ci=None)  # no intervals: no teacher-impact lines
    cands = inputs.candidates
    return map_warnings(s, blind, inputs.students, [cands[j] for j in chosen], cost, cands)


def impact_warnings(inputs: CostInputs, cost: Tensor, chosen: list[int]) -> list[str]:
    """:func:`~circuitlens.mapping.map.map_warnings`, as ``map_heads`` gives them."""
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


def null_warnings(
    inputs: CostInputs, x: Tensor, y: Tensor, chosen: list[int], what: str = ""
) -> list[str]:
    """Each chosen pair's CKA with its permutation null (``x``: the student heads' features,
    ``y``: the candidates'; the null into ``extras["cka_null"]``), and the pairs whose CKA does
    not exceed the null's mean by two null sds (``what`` says what the CKA is over)."""
    null = cka_with_null(
        x,
        y[chosen],
        n_perm=int(inputs.options.get("n_perm", 20)),
        seed=int(inputs.options.get("seed", 0)),
    )
    inputs.extras["cka_null"] = null.to_dict()
    out = []
    for i, (s, j) in enumerate(zip(inputs.students, chosen, strict=True)):
        v, m, sd = (float(t[i]) for t in (null.value, null.null_mean, null.null_sd))
        if v <= m + 2 * sd:
            out.append(
                f"{s} -> {inputs.candidates[j]}: CKA {v:.3f}{what} does not exceed its "
                f"permutation null ({m:.3f} +- {sd:.3f}, {null.n_perm} permutations) by 2 sd"
            )
    return out


def cka_warnings(inputs: CostInputs, cost: Tensor, chosen: list[int]) -> list[str]:
    """The permutation null of each chosen pair (into ``extras["cka_null"]``) and the pairs
    whose CKA does not exceed it by two null sds."""
    x, y = _z(inputs)
    return null_warnings(inputs, x[:, :, None, :], y[:, :, None, :], chosen)


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
