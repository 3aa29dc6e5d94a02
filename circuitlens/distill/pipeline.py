"""``distill_circuit``: the whole circuit-distillation method in one call (orchestration only).

1. the teacher's circuit (given, or none: every teacher head is a candidate);
2. mean-ablation sweeps of teacher (against the student's baseline) and student, on the
   task's ``probe`` prompts (what chooses never reads the ``test`` prompts it is scored on);
3. the head map (closest impact; the random control for ``ce+rand``);
4. training of the mapped student heads (:class:`circuitlens.distill.trainer.CircuitTrainer`);
5. evaluation before and after, with the CKA of the mapped pairs.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from circuitlens.ablation.result import AblationResult
from circuitlens.circuits.evaluation import circuit_only_scores, format_accuracy
from circuitlens.core.types import Circuit, HeadMap, Model
from circuitlens.core.validate import ConfigError
from circuitlens.distill.config import DistillConfig
from circuitlens.distill.masks import TrainedFraction
from circuitlens.distill.result import DistillResult
from circuitlens.distill.setup import Setup
from circuitlens.distill.sweeps import kept_sweeps
from circuitlens.distill.trainer import CircuitTrainer, TrainRun
from circuitlens.mapping.features import MoreSettings, gather_more, head_z
from circuitlens.mapping.map import map_heads
from circuitlens.mapping.methods import METHODS as CORRESPONDENCE_METHODS
from circuitlens.mapping.methods import CorrespondenceFeatures
from circuitlens.mapping.methods import get_method as get_correspondence_method
from circuitlens.measure.cka import CKAWithNull
from circuitlens.measure.mechanism import MechanismCheck, mechanism_check
from circuitlens.measure.runtime_estimate import estimate_distill_cost, report_cost
from circuitlens.models.registry import (
    copy_model,
    load_model,
    model_facts,
    model_spec,
)
from circuitlens.tasks import Task, evaluate, get_task, prompt_scores
from circuitlens.tasks.formats import check_task_format
from circuitlens.tasks.tokenizers import require_compatible_tokenizers

log = logging.getLogger(__name__)


#: the prompt counts of a DistillConfig that a split must hold: flat name -> (the part, its
#: field, what it is for)
_SIZES: dict[str, tuple[str | None, str, str]] = {
    "sweep_n": ("sweep", "n", "the sweeps' prompts, which choose the heads"),
    "test_n": (None, "test_n", "the test prompts every accuracy is reported on"),
    "eval_n": ("train", "eval_n", "the trainer's validation prompts"),
}


def _oversized(task: Task, cfg: DistillConfig) -> list[tuple[str, int, str, int]]:
    """Each prompt count of ``cfg`` that its split cannot give: (flat name, count, split,
    prompts the split holds)."""
    out = []
    counts = {"sweep_n": cfg.sweep.n, "test_n": cfg.test_n}
    if cfg.train.eval_every:
        counts["eval_n"] = cfg.train.eval_n
    for name, n in counts.items():
        split = cfg.sweep.split if name == "sweep_n" else {"test_n": "test", "eval_n": "val"}[name]
        have = len(task.split(split))
        if n is not None and n > have:
            out.append((name, n, split, have))
    return out


def check_split_sizes(task: Task, cfg: DistillConfig) -> None:
    """Refuse, before any work, a config that asks for more prompts than a split holds:
    ``sweep_n`` (the sweeps' split, ``probe`` by default), ``test_n`` (``test``), ``eval_n``
    (``val``, where the trainer validates).

    Raises:
        ConfigError: naming the count, the split and the option of this task type that gives
            the split more prompts (a built-in task's ``n_probe``, a JSONL task's
            ``probe_fraction``).
    """
    for name, n, split, have in _oversized(task, cfg):
        what = _SIZES[name][2]
        if have == 0:
            raise ConfigError(
                f"the config asks for {n} {split} prompts ({name}: {what}) but the task's "
                f"{split} split is empty: {task.empty_split_hint(split)}"
            )
        raise ConfigError(
            f"the config asks for {n} {split} prompts ({name}: {what}) but the task's {split} "
            f"split holds {have}: {task.split_size_hint(split, n)}, or lower {name}"
        )


def fit_split_sizes(task: Task, cfg: DistillConfig) -> DistillConfig:
    """``cfg`` with its prompt counts fitted to the task's splits, before any work: a count
    left at its default that its split cannot give is lowered to the whole split, with a note
    in the log, so that a small task (a JSONL file of 60 lines) runs with the defaults; a
    count set to another value is a request, checked by :func:`check_split_sizes`.

    Raises:
        ConfigError: as :func:`check_split_sizes`, for the counts that were set.
    """
    defaults = DistillConfig()
    fitted: dict[str, int] = {}
    for name, n, split, have in _oversized(task, cfg):
        part, field_name, what = _SIZES[name]
        default = getattr(defaults if part is None else getattr(defaults, part), field_name)
        if n == default and have > 0:
            log.info(
                "%s: the task's %s split holds %d prompts, fewer than the default %d: using "
                "all %d (%s)",
                name, split, have, n, have, what,
            )  # fmt: skip
            fitted[name] = have
    cfg = cfg.with_overrides(**fitted) if fitted else cfg
    check_split_sizes(task, cfg)
    return cfg


@dataclass
class ConditionResult:
    """One trained condition (:func:`train_condition`): the history and what was measured.

    Attributes:
        condition, seed: what was trained.
        head_map: the pairs trained (and aligned, in the CKA conditions).
        history: the trainer's rows, one per step.
        test_correct: 1/0 per test prompt after training (the first ``test_n``).
        circuit_accuracy: accuracy after training with every student head outside the
            map's mean-ablated (None: not measured, ``TrainRun(circuit_only=False)``).
        cka_before, cka_after: the mapped pairs' held-out CKA with its permutation null.
        fraction: heads and parameters trained.
        steps: steps taken; resumed: whether a checkpoint was resumed.
        seconds: wall time.
        masks: the trained entries (parameter name -> bool mask; the trainer's).
        mechanism: each trained head's impact before and after training beside its teacher
            partner's (:mod:`circuitlens.measure.mechanism`), or None when the untrained sweeps
            were
            not passed.
        lr: the learning rate trained with.
        kept_step: the step whose weights were kept and measured (the best validation
            evaluation's with ``patience``, else the last step: ``steps``).
    """

    condition: str
    seed: int
    head_map: HeadMap
    history: list[dict[str, float]]
    test_correct: list[int]
    circuit_accuracy: float | None
    cka_before: CKAWithNull
    cka_after: CKAWithNull
    fraction: TrainedFraction
    steps: int
    resumed: bool
    seconds: float
    masks: dict[str, Tensor] = field(default_factory=dict, repr=False)
    mechanism: MechanismCheck | None = None
    lr: float | None = None
    kept_step: int | None = None

    @property
    def accuracy(self) -> float:
        """Test accuracy after training (the mean of ``test_correct``)."""
        return sum(self.test_correct) / len(self.test_correct)

    @property
    def mean_cka_before(self) -> float:
        """The mapped pairs' mean held-out CKA before training."""
        return float(self.cka_before.value.mean())

    @property
    def mean_cka_after(self) -> float:
        """The mapped pairs' mean held-out CKA after training."""
        return float(self.cka_after.value.mean())

    @property
    def final_loss(self) -> float:
        """The last step's loss (NaN: no step was taken)."""
        return self.history[-1]["loss"] if self.history else float("nan")

    def __repr__(self) -> str:
        return (
            f"ConditionResult({self.condition!r}, seed={self.seed}, steps={self.steps}, "
            f"accuracy={self.accuracy:.3f}, circuit_accuracy={_fmt(self.circuit_accuracy)}, "
            f"heads={self.fraction.heads}, cka {self.mean_cka_before:.3f} -> "
            f"{self.mean_cka_after:.3f})"
        )


def _fmt(x: float | None) -> str:
    return "None" if x is None else f"{x:.3f}"


@dataclass(frozen=True)
class BeforeTraining:
    """What :func:`train_condition` is given that was known before the condition trains,
    besides its pairs: the teacher's circuit, the map's held-out CKA on the untrained student
    and the untrained sweeps the map came from (the task's
    :class:`~circuitlens.distill.setup.Setup` holds all but the CKA). Each may be left out.

    Attributes:
        circuit: the teacher's circuit (the trainer's ``positions="circuit"`` reads it; None:
            none).
        cka_before: the held-out CKA of this map on this untrained student, when measured
            already (it depends on neither the condition nor the seed); None: measured before
            training.
        student_sweep, teacher_sweep: the untrained sweeps the map came from, both or
            neither; given, the trained heads are ablated again after training
            (:func:`circuitlens.measure.mechanism.mechanism_check`, one pass of the sweep's
            prompts per pair: ``ConditionResult.mechanism``); None: no check.
    """

    circuit: Circuit | None = None
    cka_before: CKAWithNull | None = None
    student_sweep: AblationResult | None = None
    teacher_sweep: AblationResult | None = None


def train_condition(
    teacher: Model,
    student: Model,
    task: Task,
    head_map: HeadMap,
    config: DistillConfig,
    run: TrainRun | None = None,
    before: BeforeTraining = BeforeTraining(),
) -> ConditionResult:
    """Train ``student`` in place in one condition and measure it: the one path that
    :func:`distill_circuit` and the reproduce runner share. The mapped pairs' held-out CKA
    before and after, then per-prompt test accuracy and circuit-only accuracy after.

    Args:
        config: ``config.train`` trains (:class:`TrainConfig`: the condition, the seed, ...);
            the accuracies are measured on the first ``config.test_n`` test prompts (its sweep
            and map options are not read).
        run: where and how the training runs (:class:`TrainRun`: the checkpoint directory,
            a shared teacher cache, progress bars); None: ``TrainRun()``.
        before: the circuit, the CKA before training and the untrained sweeps
            (:class:`BeforeTraining`).
    """
    run = run or TrainRun()
    circuit, cka_before = before.circuit, before.cka_before
    student_sweep, teacher_sweep = before.student_sweep, before.teacher_sweep
    if (student_sweep is None) != (teacher_sweep is None):
        raise ValueError("the mechanism check needs both sweeps: student_sweep and teacher_sweep")
    checkpoint_dir, test_n, train = run.checkpoint_dir, config.test_n, config.train
    t0 = time.time()
    trainer = CircuitTrainer(student, teacher, task, head_map, train, circuit, run)
    resumed = checkpoint_dir is not None and (Path(checkpoint_dir) / "trainer.pt").exists()
    if cka_before is None:  # a checkpoint loads in train(): the student is fresh here
        cka_before = trainer.heldout_cka()
    history = trainer.train(progress=run.progress)
    cka_after = trainer.heldout_cka()
    correct = [int(x) for x in prompt_scores(student, task, "test", test_n).tolist()]
    keep = head_map.student_heads
    mechanism = None
    if student_sweep is not None and teacher_sweep is not None:
        mechanism = mechanism_check(
            student, task, head_map, student_sweep, teacher_sweep, cka_before, cka_after
        )
    return ConditionResult(
        condition=train.condition,
        seed=train.seed,
        head_map=head_map,
        history=history,
        test_correct=correct,
        circuit_accuracy=(
            float(circuit_only_scores(student, task, keep, "test", test_n).mean())
            if run.circuit_only
            else None
        ),
        cka_before=cka_before,
        cka_after=cka_after,
        fraction=trainer.fraction,
        steps=trainer.state.step,
        resumed=resumed,
        seconds=round(time.time() - t0, 1),
        masks=trainer.masks,
        mechanism=mechanism,
        lr=train.lr,
        kept_step=trainer.kept_step,
    )


def _correct(model: Model, task: Task, n: int) -> list[int]:
    return [int(x) for x in prompt_scores(model, task, "test", n).tolist()]


def _val_accuracy(model: Model, task: Task, n: int) -> float:
    """Accuracy on the first ``n`` validation prompts, or on all of them where the split holds
    fewer (a distillation without validation during training needs none); NaN: none."""
    have = len(task.split("val"))
    return evaluate(model, task, "val", min(n, have)) if have else float("nan")


def map_features(
    teacher: Model,
    student: Model,
    task: Task,
    method: str,
    s_sweep: AblationResult,
    t_sweep: AblationResult,
) -> CorrespondenceFeatures:
    """What map ``method`` reads: the sweeps, and the heads' ``z`` on the sweep's prompts where
    the method reads it."""  # fmt: skip
    zs = zt = None
    needs = get_correspondence_method(method).needs
    split, n = s_sweep.config.split, s_sweep.config.n
    if "z" in needs:
        zs, zt = head_z(student, task, split, n), head_z(teacher, task, split, n)
    more = gather_more(student, teacher, task, needs, MoreSettings(split=split, n=n))
    return CorrespondenceFeatures(s_sweep, t_sweep, zs, zt, more)


def with_map_features(setup: Setup, teacher: Model, student: Model, task: Task) -> Setup:
    """``setup`` with what its map method reads besides the sweeps (the heads' ``z``, which
    ``setup.json`` does not keep), for the random-heads controls' partners; the setup itself
    when the method reads the sweeps only or the features are there."""
    method = setup.head_map.config.get("method", "impact")
    if setup.features is not None or method not in CORRESPONDENCE_METHODS:
        return setup
    if set(get_correspondence_method(method).needs) <= {"teacher_sweep", "prompt_delta"}:
        return setup
    f = map_features(teacher, student, task, method, setup.student_sweep, setup.teacher_sweep)
    return dataclasses.replace(setup, features=f)


def _setup_map(
    teacher: Model,
    student: Model,
    task: Task,
    config: DistillConfig,
    s_sweep: AblationResult,
    t_sweep: AblationResult,
    circuit: Circuit | None,
) -> tuple[HeadMap, CorrespondenceFeatures]:
    """The setup's map (:func:`~circuitlens.mapping.map.map_heads` by
    ``config.map.method``: the closest impacts, the paper's, by default) and the features it
    read (the heads' ``z`` on the sweep's prompts measured where the method reads it)."""
    m = config.map
    features = map_features(teacher, student, task, m.method, s_sweep, t_sweep)
    # seed=0: the map's CKA null keeps the seed it always had; m.seed seeds the random control
    head_map = map_heads(s_sweep, t_sweep, circuit, m, features=features, seed=0)
    return head_map, features


@dataclass(frozen=True)
class SetupRecord:
    """What a run adds to :func:`prepare`'s setup: where the sweeps are kept (``sweeps_dir``),
    the task in other prompt formats (``formats``: format -> the task in it), the models'
    weight fingerprints (role -> fingerprint, for a run directory to check) and why the
    circuit is as it is (``circuit_note``)."""

    sweeps_dir: str | Path | None = None
    formats: dict[str, Task] | None = None
    fingerprints: dict[str, str] | None = None
    circuit_note: str = ""


def prepare(
    teacher: Model,
    student: Model,
    task: Task,
    config: DistillConfig,
    circuit: Circuit | None = None,
    progress: bool = True,
    record: SetupRecord = SetupRecord(),
) -> Setup:
    """What every condition of ``task`` shares, before any training: the one setup path of
    :func:`distill_circuit` and of the reproduce runner (once per task).

    The sweeps (:func:`kept_sweeps`, kept in ``sweeps_dir`` when given), the closest-impact
    map into ``circuit``'s heads (a circuit without heads, or None: any teacher head), then the
    untrained references on the first ``config.test_n`` test prompts: each model's per-prompt
    correctness, circuit-only accuracy (the student: the map's heads; the teacher: the
    circuit's), the accuracy in each of ``formats`` (prompt format -> the task in it; none:
    the card's format only), and the student's validation accuracy (``config.train.eval_n``
    prompts at most, the training curves' step 0).

    Args:
        teacher, student: ready models (bridges), the student untrained.
        record: the sweeps' directory, the prompt formats, the fingerprints and the circuit's
            note (:class:`SetupRecord`).

    Returns:
        :class:`~circuitlens.distill.setup.Setup`; ``setup.condition_map(condition, seed)``
        gives each condition's pairs.
    """
    t0 = time.time()
    sweeps_dir, formats = record.sweeps_dir, record.formats
    fingerprints, circuit_note = record.fingerprints, record.circuit_note
    n = config.test_n
    map_circuit = circuit if circuit is not None and circuit.heads else None
    t_sweep, s_sweep = kept_sweeps(
        teacher, student, task, config, progress, map_circuit, sweeps_dir
    )
    head_map, features = _setup_map(teacher, student, task, config, s_sweep, t_sweep, map_circuit)
    ft, fs = model_facts(teacher), model_facts(student)
    student_correct = _correct(student, task, n)
    teacher_correct = _correct(teacher, task, n)
    teacher_circuit = None
    if map_circuit is not None:
        scores = circuit_only_scores(teacher, task, map_circuit.heads, "test", n)
        teacher_circuit = float(scores.mean())
    student_circuit = float(
        circuit_only_scores(student, task, head_map.student_heads, "test", n).mean()
    )
    student_accuracy = sum(student_correct) / len(student_correct)
    teacher_accuracy = sum(teacher_correct) / len(teacher_correct)
    formats = formats or {}
    return Setup(
        task=task.name,
        circuit=circuit,
        circuit_note=circuit_note,
        teacher_sweep=t_sweep,
        student_sweep=s_sweep,
        head_map=head_map,
        teacher_accuracy=teacher_accuracy,
        student_accuracy=student_accuracy,
        student_test_correct=tuple(student_correct),
        teacher_test_correct=tuple(teacher_correct),
        student_circuit_accuracy=student_circuit,
        teacher_circuit_accuracy=teacher_circuit,
        student_format_accuracy=format_accuracy(student, formats, n, (task, student_accuracy)),
        teacher_format_accuracy=format_accuracy(teacher, formats, n, (task, teacher_accuracy)),
        student_val_accuracy=_val_accuracy(student, task, config.train.eval_n),
        fingerprints=dict(fingerprints or {}),
        teacher_shape=(ft.n_layers, ft.n_heads, ft.n_kv_heads),
        student_shape=(fs.n_layers, fs.n_heads, fs.n_kv_heads),
        seconds=round(time.time() - t0, 1),
        features=features,
    )


def _run_with(run: TrainRun | None, overrides: dict[str, Any]) -> TrainRun:
    """The run's options: ``run`` with the :class:`TrainRun` fields given among ``overrides``
    (``progress=False``, ``checkpoint_dir=...``) taken out of them and applied; sharding is
    refused."""
    names = {f.name for f in dataclasses.fields(TrainRun)}
    of_run = {k: overrides.pop(k) for k in sorted(set(overrides) & names)}
    run = dataclasses.replace(run or TrainRun(), **of_run)
    if run.fsdp:
        raise ConfigError(
            "distill_circuit does not shard the student (TrainRun.fsdp): shard a student too "
            "large for one device with CircuitTrainer(..., run=TrainRun(fsdp=True))"
        )
    return run


def distill_circuit(
    teacher: Model,
    student: Model,
    task: Task | str,
    config: DistillConfig | None = None,
    circuit: Circuit | None = None,
    run: TrainRun | None = None,
    inplace: bool = False,
    **overrides: Any,
) -> DistillResult:
    """Distil the teacher's circuit into the student (see the module docstring).

    Args:
        teacher, student: anything :func:`circuitlens.load_model` accepts.
        task: a :class:`Task` or a task name.
        config: a :class:`DistillConfig`; ``**overrides`` replace its fields (also the
            trainer's: ``condition="ce"``, ``steps=100``, ``lam=0.5``) and the run's
            (:class:`TrainRun`: ``progress=False``, ``checkpoint_dir=...``).
        circuit: the teacher's circuit; None (or a circuit without heads) maps to any
            teacher head.
        run: :class:`TrainRun`: ``run=TrainRun(progress=False)`` hides the progress bars, a
            ``checkpoint_dir`` makes training resumable (and keeps the sweeps for a rerun).
        inplace: train the ``student`` object passed in; by default a ready model is copied
            first, so the caller's student is left as it was (``result.student`` is trained).

    The sweeps and the map read the task's ``probe`` prompts, the reported accuracies its
    ``test`` prompts, the trainer's validation its ``val`` prompts; a prompt count left at its
    default that a split cannot give is lowered to the whole split (:func:`fit_split_sizes`),
    so a small task (a JSONL file of 60 lines) runs with the defaults.

    Returns:
        :class:`DistillResult`; ``result.table()`` shows the metrics.

    Raises:
        ConfigError: a bad option (named) before any work, e.g. a prompt count set larger
            than its split holds.
        TokenizerMismatchError: teacher and student tokenize the task differently.
    """
    cfg = config or DistillConfig()
    run = _run_with(run, overrides)
    if overrides:
        cfg = cfg.with_overrides(**overrides)
    t0 = time.time()
    given = student
    teacher, student = load_model(teacher), load_model(student)
    spec = model_spec(student)
    if not isinstance(given, str | Path) and not inplace:  # a ready model is the caller's
        student = copy_model(student)
    if isinstance(task, str):
        task = get_task(task, tokenizers=[teacher, student])
    else:
        check_task_format(task, [teacher, student])
    require_compatible_tokenizers(
        teacher, student, task, [cfg.train.condition], cfg.train.positions
    )
    cfg = fit_split_sizes(task, cfg)  # a default count larger than its split: the split
    report_cost(estimate_distill_cost(teacher, student, task, cfg), run.progress)
    record = SetupRecord(run.checkpoint_dir)  # the sweeps are kept beside the checkpoints
    setup = prepare(teacher, student, task, cfg, circuit, run.progress, record)
    # the condition's pairs: the map's, random partners (ce+rand) or random heads
    head_map = setup.condition_map(cfg.train.condition, cfg.map.seed)
    circuit_before = setup.student_circuit_accuracy  # the map's student heads, untrained
    if set(head_map.student_heads) != set(setup.head_map.student_heads):  # random heads
        keep = head_map.student_heads
        circuit_before = float(circuit_only_scores(student, task, keep, "test", cfg.test_n).mean())
    before = BeforeTraining(circuit, None, setup.student_sweep, setup.teacher_sweep)
    done = train_condition(teacher, student, task, head_map, cfg, run, before)
    return DistillResult(
        student=student,
        head_map=head_map,
        circuit=circuit,
        teacher_sweep=setup.teacher_sweep,
        student_sweep=setup.student_sweep,
        history=done.history,
        metrics=_metrics(setup, done, circuit_before, round(time.time() - t0, 1)),
        config=cfg,
        student_spec=spec,
        masks=done.masks,
    )


def _metrics(
    setup: Setup, done: ConditionResult, circuit_before: float, seconds: float
) -> dict[str, float]:
    """:attr:`DistillResult.metrics`: the untrained references (``setup``) beside the trained
    condition's measures (``done``), under the names ``metrics.json`` has always had."""
    assert done.mechanism is not None  # train_condition was given the sweeps
    return {
        "teacher_accuracy": setup.teacher_accuracy,
        "student_accuracy_before": setup.student_accuracy,
        "student_accuracy_after": done.accuracy,
        "circuit_accuracy_before": circuit_before,
        "circuit_accuracy_after": done.circuit_accuracy,
        "mean_cka_before": done.mean_cka_before,
        "mean_cka_after": done.mean_cka_after,
        "cka_null_mean": float(done.cka_after.null_mean.mean()),
        "cka_null_sd": float(done.cka_after.null_sd.mean()),
        # mean |dP_s - dP_t| of the pairs before and after training (circuitlens.measure.mechanism)
        "mechanism_gap_before": done.mechanism.mean_gap_before,
        "mechanism_gap_after": done.mechanism.mean_gap_after,
        "heads_trained": done.fraction.heads,
        "heads_touched": done.fraction.heads_touched,
        "head_fraction": done.fraction.head_fraction,
        "param_fraction": done.fraction.param_fraction,
        "steps": done.steps,
        "seconds": seconds,
    }
