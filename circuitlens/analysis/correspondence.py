"""Which teacher head is each student head? Correspondence methods, and a known answer to test
them on.

Every method is one entry of a registry (:data:`METHODS`) with one signature: a
:class:`CorrespondenceMethod` holds a ``cost_fn(inputs) -> cost[student_head, teacher_head]``
(low = alike) over the chosen student heads (rows) and the candidate teacher heads (columns).
One function builds every map, whatever the method:
:func:`circuitlens.analysis.mapping.map_heads` (``method=`` a registered name). The student
heads are the budget's most important by impact
(:func:`~circuitlens.analysis.mapping.choose_student_heads`), and the candidates are the
circuit's heads (or all measured teacher heads). Each student head then takes its cheapest
candidate (many-to-one: the first minimum in (layer, head) order) or the assignment of least
total cost (one-to-one: ``scipy.optimize.linear_sum_assignment``). ``HeadMap.distances`` holds
each pair's cost and ``HeadMap.config["method"]`` names the method. This module measures what
the methods read (:func:`gather_features`) and maps in one call (:func:`correspond`);
:func:`correspond_features` is ``map_heads`` over measured features.

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
impact methods give :func:`circuitlens.analysis.mapping.map_warnings`' (a chosen head's impact
interval
contains 0, a tie decides the student heads or a partner); the others give its student-side
warnings and the ties of their own cost, plus their own: ``profile`` when a student head's
profile is constant, or when its partner's correlation is within the noise of the runner-up's
(Fisher z differ by less than ``1.96 sqrt(2 / (n - 3))``); ``cka`` when a pair's CKA does not
exceed its null's mean by two null sds. Every method also gets the degenerate-assignment check
(:mod:`circuitlens.analysis.map_checks`: the cost did not decide the pairs).

The known answer (:mod:`circuitlens.analysis.known_answer`): ``permuted_copy`` relabels a
model's query heads within each layer (inside their K/V group, and optionally the groups as
wholes) without changing the function, plus optional seeded weight noise; ``recovery`` is the
fraction of chosen student heads a map sends to their own relabelled copy.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal, get_args

import torch
from einops import rearrange
from jaxtyping import Float
from torch import Tensor

from circuitlens.ablation.sweep import AblationConfig, ablation_sweep
from circuitlens.analysis.costs import (
    METHODS,
    NEEDS,
    CorrespondenceFeatures,
    CorrespondenceMethod,
    CostInputs,
    get_method,
    rank_quantiles,
    register_method,
)
from circuitlens.analysis.head_features import gather_more
from circuitlens.analysis.mapping import (
    DEFAULT_BUDGET,
    assign,
    map_heads,
)
from circuitlens.core.hooks import z_name
from circuitlens.core.types import Circuit, Head, HeadMap, Model
from circuitlens.models.registry import model_facts
from circuitlens.tasks import Task
from circuitlens.tasks.metrics import model_device, no_logits

log = logging.getLogger(__name__)

#: whose unablated P the teacher's impacts are measured against
TeacherBaseline = Literal["student", "own"]
TEACHER_BASELINES: tuple[str, ...] = get_args(TeacherBaseline)

#: the public names; the registry's (:mod:`circuitlens.analysis.costs`) are re-exported here
__all__ = [
    "METHODS",
    "NEEDS",
    "TEACHER_BASELINES",
    "CorrespondenceFeatures",
    "CorrespondenceMethod",
    "CostInputs",
    "TeacherBaseline",
    "assign",
    "correspond",
    "correspond_features",
    "gather_features",
    "get_method",
    "head_z",
    "map_heads",
    "rank_quantiles",
    "register_method",
]

# --- the map ---------------------------------------------------------------------------------


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
    """Map student heads to teacher heads from measured features: a thin wrapper of
    :func:`circuitlens.analysis.mapping.map_heads` (the one function that builds maps), which
    see for the arguments.

    Returns:
        A :class:`HeadMap` whose ``distances`` are the chosen pairs' costs and whose
        ``config["method"]`` names the method.
    """
    return map_heads(
        features.student_sweep,
        features.teacher_sweep,
        circuit,
        budget,
        one_to_one,
        student_heads,
        method=method,
        features=features,
        cost=cost,
        n_perm=n_perm,
        seed=seed,
    )


# --- measuring -------------------------------------------------------------------------------


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
    *,
    metric: str = AblationConfig.metric,
    n: int | None = AblationConfig.n,
    split: str = AblationConfig.split,
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
    if teacher_baseline not in TEACHER_BASELINES:
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
    student: Model,
    teacher: Model,
    task: Task,
    method: str = "impact",
    budget: float | int = DEFAULT_BUDGET,
    one_to_one: bool = False,
    *,
    n: int | None = AblationConfig.n,
    metric: str = AblationConfig.metric,
    split: str = AblationConfig.split,
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
