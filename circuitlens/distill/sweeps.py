"""The mean-ablation sweeps of a teacher and a student as a :class:`DistillConfig` asks, and
``sweeps.json``, where a run keeps them (keyed by the models, the task, its prompts and the
options the sweeps read) so that a rerun, or a run that differs only in what the sweeps do not
read, repeats no sweep."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from circuitlens.ablation.result import AblationResult
from circuitlens.ablation.screening import SCREEN_TOP, auto_method, top_count
from circuitlens.ablation.sweep import ablation_sweep
from circuitlens.core.io import atomic_write_text
from circuitlens.core.types import Circuit, Model
from circuitlens.distill.config import DistillConfig
from circuitlens.distill.teacher_cache import model_hash
from circuitlens.mapping.map import budget_count
from circuitlens.models.registry import (
    model_facts,
)
from circuitlens.tasks import Task

log = logging.getLogger(__name__)


def _student_top(student: Model, budget: float | int) -> float | int:
    """A screened student sweep's ``top``: the default
    (:data:`~circuitlens.ablation.screening.SCREEN_TOP` of the heads), or the budget's count where
    the
    budget asks for more heads (the map chooses among measured heads only)."""
    n = model_facts(student).n_total_heads
    k = budget_count(budget, n)
    return SCREEN_TOP if k <= top_count(SCREEN_TOP, n) else k


def sweeps(
    teacher: Model,
    student: Model,
    task: Task,
    cfg: DistillConfig,
    progress: bool = True,
    circuit: Circuit | None = None,
) -> tuple[AblationResult, AblationResult]:
    """The teacher's and the student's mean-ablation sweeps as ``cfg.sweep`` asks (metric,
    prompts, bootstrap intervals; ``method="auto"`` by default: exact at every size for now,
    :func:`circuitlens.ablation.screening.auto_method`), the teacher's against the baseline
    ``cfg.map.teacher_baseline`` names. Where screening is on, the teacher's sweep measures
    ``circuit``'s heads in any case (the map's candidates), the student's at least the
    budget's heads."""
    sweep = cfg.sweep
    verify = sweep.verify + (() if circuit is None else tuple(str(h) for h in circuit.heads))
    t_sweep = ablation_sweep(
        teacher,
        task,
        sweep.with_overrides(verify=verify),
        baseline_from=student if cfg.map.teacher_baseline == "student" else None,
        progress=progress,
    ).named("teacher")
    s_sweep = ablation_sweep(
        student,
        task,
        sweep.with_overrides(top=_student_top(student, cfg.map.budget)),
        progress=progress,
    ).named("student")
    return t_sweep, s_sweep


def kept_sweeps(
    teacher: Model,
    student: Model,
    task: Task,
    cfg: DistillConfig,
    progress: bool,
    circuit: Circuit | None,
    directory: str | Path | None,
) -> tuple[AblationResult, AblationResult]:
    """:func:`sweeps`, kept in ``directory`` (``sweeps.json``: a distill run's checkpoint
    directory, a reproduce run's task directory) and read back on a rerun of the same models,
    task, circuit and sweep options, so that a rerun after a failed save (or an interruption
    after training) repeats no sweep, and runs that differ only in what the sweeps do not read
    (the budget of an exact sweep, the trainer's options) can share one file."""
    if directory is None:
        return sweeps(teacher, student, task, cfg, progress, circuit)
    key = sweeps_key(teacher, student, task, cfg, circuit)
    f = Path(directory) / "sweeps.json"
    if f.is_file():
        try:
            saved = json.loads(f.read_text())
            if saved.get("key") == key:
                log.info("sweeps read from %s", f)
                t, s = saved["teacher_sweep"], saved["student_sweep"]
                return AblationResult.from_dict(t), AblationResult.from_dict(s)
        except (ValueError, KeyError, TypeError) as e:  # a damaged file: recompute it
            log.warning("%s unreadable (%s): recomputing the sweeps", f, e)
    t_sweep, s_sweep = sweeps(teacher, student, task, cfg, progress, circuit)
    save_sweeps(f, key, t_sweep, s_sweep)
    return t_sweep, s_sweep


def sweeps_key(
    teacher: Model, student: Model, task: Task, cfg: DistillConfig, circuit: Circuit | None
) -> str:
    """What ``sweeps.json`` is valid for: a digest of both models' weights, the task, its
    sweep prompts (the first ``cfg.sweep.n`` of ``cfg.sweep.split``: ``probe`` by default),
    the circuit and the options the sweeps read (not the map's, the trainer's, nor an exact
    sweep's budget)."""
    reads_budget = auto_method(model_facts(student).n_total_heads) == "screened"
    drop = {"train", "test_n", "map_seed", "map_method", "one_to_one"} | (
        set() if reads_budget else {"budget"}
    )
    key = {
        "teacher": model_hash(teacher),
        "student": model_hash(student),
        "task": repr(getattr(task, "config", None)),
        "prompts": [repr(p) for p in task.split(cfg.sweep.split, cfg.sweep.n)],
        "circuit": None if circuit is None else circuit.to_dict(),
        "config": {k: v for k, v in cfg.flat().items() if k not in drop},
    }
    return hashlib.blake2b(json.dumps(key, sort_keys=True).encode(), digest_size=16).hexdigest()


def save_sweeps(
    f: str | Path, key: str, teacher_sweep: AblationResult, student_sweep: AblationResult
) -> None:
    """Write ``sweeps.json`` (atomically): ``key`` (:func:`sweeps_key`) and both sweeps."""
    doc = {"key": key, "teacher_sweep": teacher_sweep.to_dict()}
    atomic_write_text(Path(f), json.dumps(doc | {"student_sweep": student_sweep.to_dict()}))
