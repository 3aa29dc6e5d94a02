"""``distill_circuit``: the whole circuit-distillation method in one call (orchestration only).

1. the teacher's circuit (given, or none: every teacher head is a candidate);
2. mean-ablation sweeps of teacher (against the student's baseline) and student;
3. the head map (closest impact; the random control for ``ce+rand``);
4. training of the mapped student heads (:class:`circuitlens.distill.trainer.CircuitTrainer`);
5. evaluation before and after, with the CKA of the mapped pairs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from circuitlens.analysis.ablation import AblationConfig, AblationResult, ablation_sweep
from circuitlens.analysis.cka import CKAWithNull
from circuitlens.analysis.correspondence import METHODS as CORRESPONDENCE_METHODS
from circuitlens.analysis.correspondence import (
    CorrespondenceFeatures,
    correspond_features,
    head_z,
)
from circuitlens.analysis.correspondence import get_method as get_correspondence_method
from circuitlens.analysis.cost import estimate_distill_cost, report_cost
from circuitlens.analysis.evaluation import circuit_only_scores, format_accuracy
from circuitlens.analysis.mapping import budget_count, map_heads
from circuitlens.analysis.mechanism import MechanismCheck, mechanism_check
from circuitlens.analysis.screening import SCREEN_TOP, auto_method, top_count
from circuitlens.core.deltas import apply_delta, load_delta, model_delta, save_delta
from circuitlens.core.io import atomic_write_text
from circuitlens.core.types import Circuit, HeadMap
from circuitlens.core.validate import ConfigError, check_fields
from circuitlens.distill.masks import TrainedFraction
from circuitlens.distill.setup import Setup
from circuitlens.distill.teacher_cache import TeacherCache, model_hash
from circuitlens.distill.trainer import CircuitTrainer, TrainConfig
from circuitlens.models.registry import (
    copy_model,
    load_model,
    model_facts,
    model_fingerprint,
    model_spec,
    save_pretrained,
)
from circuitlens.tasks import Task, evaluate, get_task, prompt_scores
from circuitlens.tasks.formats import check_task_format
from circuitlens.tasks.metrics import METRICS
from circuitlens.tasks.tokenizers import require_compatible_tokenizers

log = logging.getLogger(__name__)


def refuse_unknown_keys(cls: type, d: dict[str, Any], what: str) -> None:
    """A config dict may only hold the dataclass's fields: name the others and the valid ones."""
    if not isinstance(d, dict):
        raise ConfigError(f"{what} must be a table of options (got {type(d).__name__} {d!r})")
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(d) - set(valid))
    if unknown:
        raise ConfigError(f"unknown {what} keys {unknown}; valid keys: {valid}")


#: keys of a run file (``circuitlens distill --config``) that name what to run, not options
RUN_KEYS = ("teacher", "student", "task", "task_options")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The table in a ``.toml`` or ``.json`` file; a :class:`ConfigError` that names the file
    and the problem when it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no such config file: {str(path)!r}")
    if path.suffix not in (".toml", ".json"):
        raise ConfigError(f"config file {str(path)!r}: name it .toml or .json (read by its suffix)")
    text = path.read_text()
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"config file {str(path)!r} is not valid {path.suffix[1:]}: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a table of options at the top")
    return data


def _build(cls: type, d: dict[str, Any], what: str) -> Any:
    try:
        return cls(**d)
    except TypeError as e:  # e.g. a table where a number belongs, caught by no __post_init__
        raise ConfigError(f"{what}: {e}") from e


@dataclass(frozen=True)
class DistillConfig:
    """Every option of :func:`distill_circuit` (loads from TOML or JSON; unknown keys refused).

    Attributes:
        metric: P for the ablation sweeps: ``"prob"`` (answer probability, the default: a
            continuous P separates heads that accuracy ties), ``"logit_diff"`` or
            ``"accuracy"``.
        sweep_n: prompts per sweep.
        n_boot: bootstrap resamples for each head's dP interval (0: none; then no warning
            about impacts indistinguishable from zero is possible).
        teacher_baseline: ``"student"`` (dP_t = P_s - P_t^abl, the paper's apparent choice)
            or ``"own"``.
        budget: student heads to train, a fraction (default 0.13) or a count.
        one_to_one: assignment instead of independent argmin.
        map_seed: seed of the random control map.
        map_method: how student heads find their teacher partners, a method of
            :func:`circuitlens.analysis.correspondence.correspond` (``"impact"``: the paper's
            closest
            ``|dP_s - dP_t|``, the default; ``"impact-rank"``, ``"profile"``, ``"cka"``,
            ``"combined"``, or a name added with ``register_method``). The student heads are
            the budget's top impacts whatever the method; the method chooses their partners.
        test_n: test prompts for the before/after accuracy.
        train: the trainer's options (:class:`TrainConfig`), including the condition.
    """

    metric: str = "prob"
    sweep_n: int = 200
    n_boot: int = 1000
    teacher_baseline: str = "student"
    budget: float | int = 0.13
    one_to_one: bool = False
    map_seed: int = 0
    map_method: str = "impact"
    test_n: int = 500
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        check_fields(
            self,
            {"sweep_n": (1, None), "test_n": (1, None), "budget": (0, None), "n_boot": (0, None)},
        )
        if self.metric not in METRICS:
            raise ConfigError(
                f"DistillConfig.metric must be one of {list(METRICS)} (got {self.metric!r}; "
                "prob is the default)"
            )
        if self.budget <= 0:
            raise ConfigError(
                f"DistillConfig.budget must be a fraction in (0, 1] or a count >= 1 "
                f"(got {self.budget!r})"
            )
        if isinstance(self.budget, float) and self.budget > 1:
            raise ConfigError(
                f"DistillConfig.budget {self.budget!r} is a fraction above 1: write a count of "
                f"heads as an integer ({int(self.budget)}), or a fraction in (0, 1]"
            )
        if not isinstance(self.train, TrainConfig):
            raise ConfigError(
                f"DistillConfig.train must be a TrainConfig or a table of its options (got "
                f"{type(self.train).__name__})"
            )
        if self.map_method not in CORRESPONDENCE_METHODS:
            raise ConfigError(
                f"unknown map_method {self.map_method!r}; valid: "
                f"{', '.join(CORRESPONDENCE_METHODS)} (or one added with register_method)"
            )
        if self.teacher_baseline not in ("student", "own"):
            raise ConfigError(
                f"teacher_baseline must be 'student' or 'own' (got {self.teacher_baseline!r})"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DistillConfig:
        refuse_unknown_keys(cls, d, "config")
        d = dict(d)
        train = d.pop("train", {})
        if isinstance(train, dict):
            refuse_unknown_keys(TrainConfig, train, "[train]")
            train = _build(TrainConfig, train, "[train]")
        return _build(cls, {"train": train, **d}, "config")

    @classmethod
    def load(cls, path: str | Path) -> DistillConfig:
        """From a ``.toml`` or ``.json`` file (``[train]`` holds the trainer's options); the
        run-file keys (:data:`RUN_KEYS`: teacher, student, task, task_options) are skipped."""
        data = read_config_file(path)
        return cls.from_dict({k: v for k, v in data.items() if k not in RUN_KEYS})

    def with_overrides(self, **overrides: Any) -> DistillConfig:
        """A copy with top-level or ``train`` fields replaced (``condition="ce"``, ``lam=2``)."""
        train_keys = {f.name for f in dataclasses.fields(TrainConfig)}
        top = {k: v for k, v in overrides.items() if k not in train_keys}
        sub = {k: v for k, v in overrides.items() if k in train_keys}
        d = self.to_dict() | top
        d["train"] = dataclasses.asdict(self.train) | sub
        return DistillConfig.from_dict(d)


@dataclass
class DistillResult:
    """What :func:`distill_circuit` returns.

    Attributes:
        student: the trained student (a bridge).
        head_map: the pairs trained (the random control's for ``ce+rand``).
        circuit: the teacher circuit used (None: every teacher head was a candidate).
        teacher_sweep, student_sweep: the ablation sweeps.
        history: one row per training step (loss parts, mean CKA, validation accuracy).
        metrics: accuracy before/after (full model, and circuit-only: every student head
            outside the mapped set mean-ablated), teacher accuracy, the pairs' mean held-out
            debiased CKA before/after with its permutation null, fractions trained.
        config: the full config.
        student_spec: what loads the untrained student (``"real:..."``, a directory), when
            known: a saved result names it, and ``DistillResult.load`` loads it.
        masks: the trained entries (parameter name -> bool mask), what ``save`` writes.
    """

    student: Any
    head_map: HeadMap
    circuit: Circuit | None
    teacher_sweep: AblationResult
    student_sweep: AblationResult
    history: list[dict[str, float]]
    metrics: dict[str, float]
    config: DistillConfig
    student_spec: str | None = None
    masks: dict[str, Tensor] | None = None

    def __repr__(self) -> str:
        m = self.metrics

        def num(key: str, fmt: str = ".3f") -> str:
            v = m.get(key)
            return "?" if not isinstance(v, int | float) else format(v, fmt)

        pairs = " ".join(f"{s}->{t}" for s, t in self.head_map.pairs[:4])
        more = f" (+{len(self.head_map) - 4})" if len(self.head_map) > 4 else ""
        return (
            f"DistillResult({self.config.train.condition}, {m.get('steps', '?')} steps, "
            f"{len(self.head_map)} {self.head_map.kind} pair(s) {pairs}{more}; "
            f"student accuracy {num('student_accuracy_before')} -> "
            f"{num('student_accuracy_after')} (teacher {num('teacher_accuracy')}); "
            f"mean CKA {num('mean_cka_before')} -> {num('mean_cka_after')}; "
            f"{num('param_fraction', '.1%')} of parameters trained; {m.get('seconds', '?')} s)"
        )

    def table(self) -> Any:
        """The metrics as a one-column pandas table."""
        import pandas as pd

        return pd.DataFrame({"value": self.metrics}).rename_axis("metric")

    def save(self, directory: str | Path, full: bool = False) -> None:
        """Write the result atomically (a partial result never replaces a complete one).

        The JSON parts (metrics, map, sweeps, history, config) are written first, then the
        trained weights as a delta against the student the run started from
        (``student_delta.safetensors``, :mod:`circuitlens.core.deltas`: the mapped heads' slices
        only, a size near the trained entries', tied embeddings untouched). ``full``: also the
        whole trained student under ``student/``, through the model's own
        ``save_pretrained`` (tied weights written once; loads with ``load_model``).

        Raises:
            ResultSaveError: a weight file could not be written: the message names it, why, and
                where the JSON parts went; the run's checkpoint (if any) still holds the
                trained weights.
        """
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
        mask = os.umask(0o022)
        os.umask(mask)
        tmp.chmod(0o777 & ~mask)  # mkdtemp makes it private; the result is as readable as any
        try:
            for name, obj in self._json_parts().items():
                atomic_write_text(tmp / name, json.dumps(obj, indent=1))
            try:
                self._write_weights(tmp, full)
            except Exception as e:
                # keep what was measured: beside a complete result, never over it
                kept = directory if not directory.exists() else _sibling(directory, ".partial")
                _publish(tmp, kept)
                raise ResultSaveError(
                    f"writing the trained weights into {directory} failed "
                    f"({type(e).__name__}: {e}); the metrics, map, sweeps and history are in "
                    f"{kept}; the trained weights are in the run's checkpoint, if it kept one "
                    "(`circuitlens distill` with the same --out finishes from it without "
                    "retraining)"
                ) from e
            _publish(tmp, directory)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)

    def _json_parts(self) -> dict[str, Any]:
        return {
            "head_map.json": self.head_map.to_dict(),
            "circuit.json": None if self.circuit is None else self.circuit.to_dict(),
            "teacher_sweep.json": self.teacher_sweep.to_dict(),
            "student_sweep.json": self.student_sweep.to_dict(),
            "history.json": self.history,
            "metrics.json": self.metrics,
            "config.json": self.config.to_dict(),
        }

    def _write_weights(self, directory: Path, full: bool) -> None:
        if self.masks is None:
            raise ResultSaveError(
                "this result does not know which entries were trained (masks=None): save "
                "with full=True, or rebuild it with distill_circuit"
            )
        meta = {"base_spec": self.student_spec or ""}
        if self.student_spec:
            meta["base_fingerprint"] = model_fingerprint(self.student_spec)
        save_delta(directory / DELTA_FILE, model_delta(self.student, self.masks, meta))
        if full:
            save_pretrained(self.student, directory / "student")

    @classmethod
    def load(cls, directory: str | Path, student: Any = None) -> DistillResult:
        """Read a saved result; the trained weights go onto ``student``, the student the run
        started from (default: loaded from the spec the result names), bit for bit.

        Raises:
            DeltaError: ``student`` is not the model the run started from (its untrained
                weights differ).
        """
        directory = Path(directory)
        read = lambda name: json.loads((directory / name).read_text())  # noqa: E731
        delta_file, legacy = directory / DELTA_FILE, directory / "student.safetensors"
        delta = load_delta(delta_file) if delta_file.is_file() else None
        spec = (delta.meta.get("base_spec") or None) if delta is not None else None
        if student is None:
            if spec is None:
                raise ConfigError(
                    f"{directory} names no student to load (a model passed in, not a spec): "
                    "pass the student it was trained from, DistillResult.load(dir, student)"
                )
            student = load_model(spec)
        else:
            student = load_model(student)
        if delta is not None:
            apply_delta(student, delta)
            masks: dict[str, Any] | None = delta.masks
        elif legacy.is_file():  # results written before deltas: the whole state dict
            from safetensors.torch import load_file

            student.load_state_dict(load_file(legacy))
            masks = None
        else:
            raise ResultSaveError(
                f"{directory} holds no trained weights ({DELTA_FILE}): its save failed; "
                "rerun the distillation with the same output to write them"
            )
        circuit = read("circuit.json")
        return cls(
            student=student,
            head_map=HeadMap.from_dict(read("head_map.json")),
            circuit=None if circuit is None else Circuit.from_dict(circuit),
            teacher_sweep=AblationResult.from_dict(read("teacher_sweep.json")),
            student_sweep=AblationResult.from_dict(read("student_sweep.json")),
            history=read("history.json"),
            metrics=read("metrics.json"),
            config=DistillConfig.from_dict(read("config.json")),
            student_spec=spec,
            masks=masks,
        )


#: the trained entries of a saved result (a delta against its student)
DELTA_FILE = "student_delta.safetensors"


class ResultSaveError(RuntimeError):
    """A result's weights could not be written (or a saved result holds none)."""


def _sibling(directory: Path, suffix: str) -> Path:
    return directory.with_name(directory.name + suffix)


def _publish(tmp: Path, directory: Path) -> None:
    """Move the finished ``tmp`` onto ``directory`` (replacing it) by renames only."""
    if directory.exists():
        old = _sibling(directory, ".old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(directory, old)
        os.replace(tmp, directory)
        shutil.rmtree(old)
    else:
        os.replace(tmp, directory)


def check_split_sizes(task: Task, cfg: DistillConfig) -> None:
    """Refuse, before any work, a config that asks for more prompts than a split holds."""
    need = {"test": max(cfg.sweep_n, cfg.test_n)}
    if cfg.train.eval_every:
        need["val"] = cfg.train.eval_n
    for split, n in need.items():
        have = len(task.split(split))
        if n > have:
            fields = {
                "test": "sweep_n / test_n",
                "val": "eval_n (the trainer's validation prompts)",
            }[split]
            raise ConfigError(
                f"the config asks for {n} {split} prompts ({fields}) but the task's {split} "
                f"split holds {have}: build the task with n_{split}={n} (or more), or lower "
                f"{fields.split(' (')[0]}"
            )


def _student_top(student: Any, budget: float | int) -> float | int:
    """A screened student sweep's ``top``: the default
    (:data:`~circuitlens.analysis.screening.SCREEN_TOP` of the heads), or the budget's count where
    the
    budget asks for more heads (the map chooses among measured heads only)."""
    n = model_facts(student).n_total_heads
    k = budget_count(budget, n)
    return SCREEN_TOP if k <= top_count(SCREEN_TOP, n) else k


def sweeps(
    teacher: Any,
    student: Any,
    task: Task,
    cfg: DistillConfig,
    progress: bool = True,
    circuit: Circuit | None = None,
) -> tuple[AblationResult, AblationResult]:
    """The teacher's and the student's mean-ablation sweeps as ``cfg`` asks (metric, prompts,
    the teacher's baseline, bootstrap intervals), with ``method="auto"``: exact at every size
    for now (:func:`circuitlens.analysis.screening.auto_method`). Where screening is on, the
    teacher's
    sweep measures ``circuit``'s heads in any case (the map's candidates), the student's at
    least the budget's heads."""
    sweep = AblationConfig(metric=cfg.metric, n=cfg.sweep_n, n_boot=cfg.n_boot)
    verify = () if circuit is None else tuple(str(h) for h in circuit.heads)
    t_sweep = ablation_sweep(
        teacher,
        task,
        sweep.with_overrides(verify=verify),
        baseline_from=student if cfg.teacher_baseline == "student" else None,
        progress=progress,
    ).named("teacher")
    s_sweep = ablation_sweep(
        student,
        task,
        sweep.with_overrides(top=_student_top(student, cfg.budget)),
        progress=progress,
    ).named("student")
    return t_sweep, s_sweep


@dataclass
class ConditionResult:
    """One trained condition (:func:`train_condition`): the history and what was measured.

    Attributes:
        condition, seed: what was trained.
        head_map: the pairs trained (and aligned, in the CKA conditions).
        history: the trainer's rows, one per step.
        test_correct: 1/0 per test prompt after training (the first ``test_n``).
        circuit_accuracy: accuracy after training with every student head outside the
            map's mean-ablated.
        cka_before, cka_after: the mapped pairs' held-out CKA with its permutation null.
        fraction: heads and parameters trained.
        steps: steps taken; resumed: whether a checkpoint was resumed.
        seconds: wall time.
        masks: the trained entries (parameter name -> bool mask; the trainer's).
        mechanism: each trained head's impact before and after training beside its teacher
            partner's (:mod:`circuitlens.analysis.mechanism`), or None when the untrained sweeps
            were
            not passed.
    """

    condition: str
    seed: int
    head_map: HeadMap
    history: list[dict[str, float]]
    test_correct: list[int]
    circuit_accuracy: float
    cka_before: CKAWithNull
    cka_after: CKAWithNull
    fraction: TrainedFraction
    steps: int
    resumed: bool
    seconds: float
    masks: dict[str, Tensor] = field(default_factory=dict, repr=False)
    mechanism: MechanismCheck | None = None

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
            f"accuracy={self.accuracy:.3f}, circuit_accuracy={self.circuit_accuracy:.3f}, "
            f"heads={self.fraction.heads}, cka {self.mean_cka_before:.3f} -> "
            f"{self.mean_cka_after:.3f})"
        )


def train_condition(
    teacher: Any,
    student: Any,
    task: Task,
    head_map: HeadMap,
    config: TrainConfig,
    test_n: int,
    circuit: Circuit | None = None,
    checkpoint_dir: str | Path | None = None,
    teacher_cache: TeacherCache | None | bool = None,
    progress: bool = True,
    cka_before: CKAWithNull | None = None,
    student_sweep: AblationResult | None = None,
    teacher_sweep: AblationResult | None = None,
) -> ConditionResult:
    """Train ``student`` in place in one condition and measure it: the one path that
    :func:`distill_circuit` and the reproduce runner share. The mapped pairs' held-out CKA
    before and after, then per-prompt test accuracy and circuit-only accuracy after.
    ``cka_before``: the held-out CKA of this map on this untrained student, when measured
    already (it depends on neither the condition nor the seed). ``student_sweep``,
    ``teacher_sweep``: the untrained sweeps the map came from; given, the trained heads are
    ablated again after training (:func:`circuitlens.analysis.mechanism.mechanism_check`, one pass
    of
    the sweep's prompts per pair: ``ConditionResult.mechanism``); None: no check."""
    if (student_sweep is None) != (teacher_sweep is None):
        raise ValueError("the mechanism check needs both sweeps: student_sweep and teacher_sweep")
    t0 = time.time()
    trainer = CircuitTrainer(
        student, teacher, task, head_map, config, circuit, checkpoint_dir, teacher_cache
    )
    resumed = checkpoint_dir is not None and (Path(checkpoint_dir) / "trainer.pt").exists()
    if cka_before is None:  # a checkpoint loads in train(): the student is fresh here
        cka_before = trainer.heldout_cka()
    history = trainer.train(progress=progress)
    cka_after = trainer.heldout_cka()
    correct = [int(x) for x in prompt_scores(student, task, "test", test_n).tolist()]
    keep = head_map.student_heads
    mechanism = None
    if student_sweep is not None and teacher_sweep is not None:
        mechanism = mechanism_check(
            student, task, head_map, student_sweep, teacher_sweep, cka_before, cka_after
        )
    return ConditionResult(
        condition=config.condition,
        seed=config.seed,
        head_map=head_map,
        history=history,
        test_correct=correct,
        circuit_accuracy=float(circuit_only_scores(student, task, keep, "test", test_n).mean()),
        cka_before=cka_before,
        cka_after=cka_after,
        fraction=trainer.fraction,
        steps=trainer.state.step,
        resumed=resumed,
        seconds=round(time.time() - t0, 1),
        masks=trainer.masks,
        mechanism=mechanism,
    )


def _correct(model: Any, task: Task, n: int) -> list[int]:
    return [int(x) for x in prompt_scores(model, task, "test", n).tolist()]


def _val_accuracy(model: Any, task: Task, n: int) -> float:
    """Accuracy on the first ``n`` validation prompts, or on all of them where the split holds
    fewer (a distillation without validation during training needs none); NaN: none."""
    have = len(task.split("val"))
    return evaluate(model, task, "val", min(n, have)) if have else float("nan")


def _setup_map(
    teacher: Any,
    student: Any,
    task: Task,
    config: DistillConfig,
    s_sweep: AblationResult,
    t_sweep: AblationResult,
    circuit: Circuit | None,
) -> HeadMap:
    """The setup's map: the closest impacts (:func:`~circuitlens.analysis.mapping.map_heads`, the
    paper's), or ``config.map_method``'s partners for the same student heads (the heads' ``z``
    on the sweep's prompts measured where the method reads it)."""
    if config.map_method == "impact":
        return map_heads(s_sweep, t_sweep, circuit, config.budget, config.one_to_one)
    zs = zt = None
    if "z" in get_correspondence_method(config.map_method).needs:
        split, n = s_sweep.config.split, s_sweep.config.n
        zs, zt = head_z(student, task, split, n), head_z(teacher, task, split, n)
    features = CorrespondenceFeatures(s_sweep, t_sweep, zs, zt)
    return correspond_features(
        features, config.map_method, config.budget, config.one_to_one, circuit=circuit
    )


def prepare(
    teacher: Any,
    student: Any,
    task: Task,
    config: DistillConfig,
    circuit: Circuit | None = None,
    progress: bool = True,
    sweeps_dir: str | Path | None = None,
    formats: dict[str, Task] | None = None,
    fingerprints: dict[str, str] | None = None,
    circuit_note: str = "",
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
        fingerprints: role -> weight fingerprint, recorded for a run directory to check.
        circuit_note: recorded with the circuit (why it is as it is).

    Returns:
        :class:`~circuitlens.distill.setup.Setup`; ``setup.condition_map(condition, seed)``
        gives each condition's pairs.
    """
    t0 = time.time()
    n = config.test_n
    map_circuit = circuit if circuit is not None and circuit.heads else None
    t_sweep, s_sweep = kept_sweeps(
        teacher, student, task, config, progress, map_circuit, sweeps_dir
    )
    head_map = _setup_map(teacher, student, task, config, s_sweep, t_sweep, map_circuit)
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
    )


def distill_circuit(
    teacher: Any,
    student: Any,
    task: Task | str,
    config: DistillConfig | None = None,
    circuit: Circuit | None = None,
    checkpoint_dir: str | Path | None = None,
    progress: bool = True,
    inplace: bool = False,
    **overrides: Any,
) -> DistillResult:
    """Distil the teacher's circuit into the student (see the module docstring).

    Args:
        teacher, student: anything :func:`circuitlens.load_model` accepts.
        task: a :class:`Task` or a task name.
        config: a :class:`DistillConfig`; ``**overrides`` replace its fields (also the
            trainer's: ``condition="ce"``, ``steps=100``, ``lam=0.5``).
        circuit: the teacher's circuit; None (or a circuit without heads) maps to any
            teacher head.
        checkpoint_dir: makes training resumable (and keeps the sweeps for a rerun).
        inplace: train the ``student`` object passed in; by default a ready model is copied
            first, so the caller's student is left as it was (``result.student`` is trained).

    Returns:
        :class:`DistillResult`; ``result.table()`` shows the metrics.

    Raises:
        ConfigError: a bad option (named) before any work.
        TokenizerMismatchError: teacher and student tokenize the task differently.
    """
    cfg = config or DistillConfig()
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
    check_split_sizes(task, cfg)
    report_cost(estimate_distill_cost(teacher, student, task, cfg), progress)
    setup = prepare(teacher, student, task, cfg, circuit, progress, checkpoint_dir)
    # the condition's pairs: the map's, random partners (ce+rand) or random heads
    head_map = setup.condition_map(cfg.train.condition, cfg.map_seed)
    circuit_before = setup.student_circuit_accuracy  # the map's student heads, untrained
    if set(head_map.student_heads) != set(setup.head_map.student_heads):  # random heads
        keep = head_map.student_heads
        circuit_before = float(circuit_only_scores(student, task, keep, "test", cfg.test_n).mean())
    done = train_condition(
        teacher, student, task, head_map, cfg.train, cfg.test_n, circuit, checkpoint_dir,
        progress=progress, student_sweep=setup.student_sweep, teacher_sweep=setup.teacher_sweep,
    )  # fmt: skip
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
        # mean |dP_s - dP_t| of the pairs before and after training (circuitlens.analysis.mechanism)
        "mechanism_gap_before": done.mechanism.mean_gap_before,
        "mechanism_gap_after": done.mechanism.mean_gap_after,
        "heads_trained": done.fraction.heads,
        "heads_touched": done.fraction.heads_touched,
        "head_fraction": done.fraction.head_fraction,
        "param_fraction": done.fraction.param_fraction,
        "steps": done.steps,
        "seconds": seconds,
    }


def kept_sweeps(
    teacher: Any,
    student: Any,
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
    teacher: Any, student: Any, task: Task, cfg: DistillConfig, circuit: Circuit | None
) -> str:
    """What ``sweeps.json`` is valid for: a digest of both models' weights, the task, its
    sweep prompts, the circuit and the options the sweeps read (not the map's, the
    trainer's, nor an exact sweep's budget)."""
    reads_budget = auto_method(model_facts(student).n_total_heads) == "screened"
    drop = {"train", "test_n", "map_seed", "map_method", "one_to_one"} | (
        set() if reads_budget else {"budget"}
    )
    key = {
        "teacher": model_hash(teacher),
        "student": model_hash(student),
        "task": repr(getattr(task, "config", None)),
        "prompts": [repr(p) for p in task.split("test", cfg.sweep_n)],
        "circuit": None if circuit is None else circuit.to_dict(),
        "config": {k: v for k, v in cfg.to_dict().items() if k not in drop},
    }
    return hashlib.blake2b(json.dumps(key, sort_keys=True).encode(), digest_size=16).hexdigest()


def save_sweeps(
    f: str | Path, key: str, teacher_sweep: AblationResult, student_sweep: AblationResult
) -> None:
    """Write ``sweeps.json`` (atomically): ``key`` (:func:`sweeps_key`) and both sweeps."""
    doc = {"key": key, "teacher_sweep": teacher_sweep.to_dict()}
    atomic_write_text(Path(f), json.dumps(doc | {"student_sweep": student_sweep.to_dict()}))
