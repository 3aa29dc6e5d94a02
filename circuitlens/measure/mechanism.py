"""The mechanism check: after training, does the student rely on its mapped heads the way the
teacher relies on their partners?

The map paired each chosen student head with the teacher head of closest mean-ablation impact,
``dP = P_baseline - P_ablated`` (positive when ablating the head hurts:
:mod:`circuitlens.ablation.sweep`). Training moved only the mapped heads. The check mean-ablates
each
trained student head alone in the trained student and measures its impact ``dP_s`` after
training with the untrained student sweep's metric, prompts (split and n) and baseline
convention (``baseline="own"``: the trained student's own unablated P; another model's baseline
is that model's P, which training does not change, so the sweep's ``p_baseline`` is kept). The
means are the trained student's, over the task's ablation reference prompts, as a full sweep of
the trained student would take them: the "after" impact of a head equals a full exact
:func:`~circuitlens.ablation.sweep.ablation_sweep` of the trained student at that head (tested),
at
the price of one ablated pass per pair instead of one per head.

Per pair it reports the student head, its teacher partner, ``dP_s`` before (the untrained sweep),
``dP_s`` after, ``dP_t`` (the partner's, from the teacher sweep, whose baseline is the map's:
the student's untrained P by default) and the gap ``|dP_s - dP_t|`` before and after; the mean
gap falling means the student's reliance on the mapped heads moved towards the teacher's on
their partners. Beside it, the held-out CKA of each pair: its gain ``value_after -
value_before`` and the after-value's z over its permutation null, ``(value - null_mean) /
null_sd``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from circuitlens.ablation.config import AblationConfig
from circuitlens.ablation.means import compute_means
from circuitlens.ablation.result import AblationResult
from circuitlens.ablation.sweep import ablated_scores
from circuitlens.core.types import Head, HeadMap, Model
from circuitlens.measure.cka import CKAWithNull
from circuitlens.tasks import Task, prompt_scores


def _floats(xs: Sequence[float | None]) -> list[float]:
    """Floats from JSON, where strict files store NaN as null."""
    return [float("nan") if x is None else float(x) for x in xs]


def _z(value: float, mean: float, sd: float) -> float:
    return (value - mean) / sd if sd > 0 else float("nan")


@dataclass(frozen=True)
class MechanismCheck:
    """Per mapped pair, the student head's impact before and after training beside its teacher
    partner's, and the pair's held-out CKA (see the module docstring).

    Attributes:
        student_heads, teacher_heads: the pairs, as head names (``L1H0``).
        dp_student_before: the untrained student sweep's ``dP_s`` at each student head.
        dp_student_after: ``dP_s`` of each head in the trained student (same metric, prompts
            and baseline convention).
        dp_teacher: the teacher sweep's ``dP_t`` at each partner.
        cka_before, cka_after: each pair's held-out CKA before and after training.
        cka_null_mean_after, cka_null_sd_after: the after-value's permutation null.
        metric, split, n: the sweeps' P and prompts.
        baseline: the student sweep's baseline convention (``"own"`` or ``"other"``).
        p_baseline_before, p_baseline_after: the P the student impacts are measured against,
            before and after training.
    """

    student_heads: list[str]
    teacher_heads: list[str]
    dp_student_before: list[float]
    dp_student_after: list[float]
    dp_teacher: list[float]
    cka_before: list[float]
    cka_after: list[float]
    cka_null_mean_after: list[float]
    cka_null_sd_after: list[float]
    metric: str
    split: str
    n: int | None
    baseline: str
    p_baseline_before: float
    p_baseline_after: float

    def __post_init__(self) -> None:
        n = len(self.student_heads)
        lists = {
            k: len(getattr(self, k))
            for k in (
                "teacher_heads",
                "dp_student_before",
                "dp_student_after",
                "dp_teacher",
                "cka_before",
                "cka_after",
                "cka_null_mean_after",
                "cka_null_sd_after",
            )
        }
        wrong = {k: m for k, m in lists.items() if m != n}
        if wrong:
            raise ValueError(f"one value per pair ({n} pairs) expected; got lengths {wrong}")

    @property
    def gap_before(self) -> list[float]:
        """``|dP_s - dP_t|`` of each pair before training."""
        return [abs(s - t) for s, t in zip(self.dp_student_before, self.dp_teacher, strict=True)]

    @property
    def gap_after(self) -> list[float]:
        """``|dP_s - dP_t|`` of each pair after training."""
        return [abs(s - t) for s, t in zip(self.dp_student_after, self.dp_teacher, strict=True)]

    @property
    def mean_gap_before(self) -> float:
        return sum(self.gap_before) / len(self.gap_before) if self.gap_before else float("nan")

    @property
    def mean_gap_after(self) -> float:
        return sum(self.gap_after) / len(self.gap_after) if self.gap_after else float("nan")

    @property
    def cka_gain(self) -> list[float]:
        """``value_after - value_before`` of each pair's held-out CKA."""
        return [a - b for a, b in zip(self.cka_after, self.cka_before, strict=True)]

    @property
    def cka_z_after(self) -> list[float]:
        """Each pair's after-value over its null, ``(value - null_mean) / null_sd`` (NaN where
        the null has no spread)."""
        return [
            _z(v, m, s)
            for v, m, s in zip(
                self.cka_after, self.cka_null_mean_after, self.cka_null_sd_after, strict=True
            )
        ]

    def to_dict(self) -> dict[str, Any]:
        """The fields, with the derived gaps, their means, the CKA gains and z-values."""
        return {
            "student_heads": list(self.student_heads),
            "teacher_heads": list(self.teacher_heads),
            "dp_student_before": list(self.dp_student_before),
            "dp_student_after": list(self.dp_student_after),
            "dp_teacher": list(self.dp_teacher),
            "gap_before": self.gap_before,
            "gap_after": self.gap_after,
            "mean_gap_before": self.mean_gap_before,
            "mean_gap_after": self.mean_gap_after,
            "cka_before": list(self.cka_before),
            "cka_after": list(self.cka_after),
            "cka_null_mean_after": list(self.cka_null_mean_after),
            "cka_null_sd_after": list(self.cka_null_sd_after),
            "cka_gain": self.cka_gain,
            "cka_z_after": self.cka_z_after,
            "metric": self.metric,
            "split": self.split,
            "n": self.n,
            "baseline": self.baseline,
            "p_baseline_before": self.p_baseline_before,
            "p_baseline_after": self.p_baseline_after,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MechanismCheck:
        """Read :meth:`to_dict`'s output (the derived values are recomputed, not read)."""
        lists = (
            "dp_student_before",
            "dp_student_after",
            "dp_teacher",
            "cka_before",
            "cka_after",
            "cka_null_mean_after",
            "cka_null_sd_after",
        )
        nan = float("nan")
        return cls(
            student_heads=[str(h) for h in d["student_heads"]],
            teacher_heads=[str(h) for h in d["teacher_heads"]],
            **{k: _floats(d[k]) for k in lists},
            metric=d["metric"],
            split=d["split"],
            n=d["n"],
            baseline=d["baseline"],
            p_baseline_before=nan if d["p_baseline_before"] is None else d["p_baseline_before"],
            p_baseline_after=nan if d["p_baseline_after"] is None else d["p_baseline_after"],
        )


@torch.no_grad()
def head_impacts(
    model: Model,
    task: Task,
    heads: Sequence[Head],
    config: AblationConfig,
    p_baseline: float | None = None,
) -> tuple[float, Float[Tensor, " n_heads"]]:
    """The impact ``dP = P_baseline - P_ablated`` of each head of ``heads`` ablated alone, as
    an exact :func:`~circuitlens.ablation.sweep.ablation_sweep` with ``config``'s metric, split
    and
    n measures it (the same means, prompts and passes, for these heads only).

    Args:
        p_baseline: the baseline P (another model's); None: the model's own unablated P.

    Returns:
        The baseline P and ``dP`` per head, in the order of ``heads``.
    """
    batch = task.batch(model, config.split, config.n)
    if batch.ablation_tokens is None:
        raise ValueError(f"task {task.name!r} has no ablation reference prompts")
    means = compute_means(model, batch.ablation_tokens)
    if p_baseline is None:
        own = prompt_scores(model, task, config.split, config.n, config.metric)
        p_baseline = float(own.double().mean())
    scores = ablated_scores(model, batch, list(heads), means, config, progress=False)
    return p_baseline, p_baseline - scores


def compare(
    head_map: HeadMap,
    student_sweep: AblationResult,
    teacher_sweep: AblationResult,
    dp_after: Sequence[float],
    p_baseline_after: float,
    cka_before: CKAWithNull,
    cka_after: CKAWithNull,
) -> MechanismCheck:
    """The check from measured values: ``dp_after`` per pair (the trained student's impacts
    at ``head_map``'s student heads, in pair order), the untrained sweeps and the CKA."""
    s_cfg, t_cfg = student_sweep.config, teacher_sweep.config
    if s_cfg.metric != t_cfg.metric:
        raise ValueError(
            f"the student sweep measured {s_cfg.metric!r} but the teacher sweep {t_cfg.metric!r}: "
            "impacts of different metrics cannot be compared"
        )

    def at(sweep: AblationResult, h: Head) -> float:
        return float(sweep.delta[h.layer, h.head])

    def per_pair(x: Tensor) -> list[float]:
        return [float(v) for v in x.flatten()]

    return MechanismCheck(
        student_heads=[str(s) for s, _ in head_map.pairs],
        teacher_heads=[str(t) for _, t in head_map.pairs],
        dp_student_before=[at(student_sweep, s) for s, _ in head_map.pairs],
        dp_student_after=[float(v) for v in dp_after],
        dp_teacher=[at(teacher_sweep, t) for _, t in head_map.pairs],
        cka_before=per_pair(cka_before.value),
        cka_after=per_pair(cka_after.value),
        cka_null_mean_after=per_pair(cka_after.null_mean),
        cka_null_sd_after=per_pair(cka_after.null_sd),
        metric=s_cfg.metric,
        split=s_cfg.split,
        n=s_cfg.n,
        baseline=s_cfg.baseline,
        p_baseline_before=student_sweep.p_baseline,
        p_baseline_after=p_baseline_after,
    )


def mechanism_check(
    student: Model,
    task: Task,
    head_map: HeadMap,
    student_sweep: AblationResult,
    teacher_sweep: AblationResult,
    cka_before: CKAWithNull,
    cka_after: CKAWithNull,
) -> MechanismCheck:
    """Measure the trained ``student``'s impact at each of ``head_map``'s student heads with
    the untrained ``student_sweep``'s metric, prompts and baseline convention (one ablated pass
    of its prompts per pair) and compare it with the teacher partner's (see the module
    docstring)."""
    heads = head_map.student_heads
    for h in heads:
        h.check(*student_sweep.delta.shape)
    for t in head_map.teacher_heads:
        t.check(*teacher_sweep.delta.shape)
    other = None if student_sweep.config.baseline == "own" else student_sweep.p_baseline
    p_after, dp_after = head_impacts(student, task, heads, student_sweep.config, other)
    return compare(
        head_map, student_sweep, teacher_sweep, dp_after.tolist(), p_after, cka_before, cka_after
    )
