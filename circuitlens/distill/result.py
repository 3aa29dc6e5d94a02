"""A saved result of :func:`~circuitlens.distill.pipeline.distill_circuit`: the trained entries as a
safetensors delta against the student it started from, its metrics, history, map and config,
written atomically (a temporary directory renamed into place).

Every file of a result is checked when it loads: ``SHA256SUMS`` (the ``sha256sum`` format:
``sha256sum -c SHA256SUMS`` checks it by hand) lists the sha256 of the JSON parts and of the
delta, and the delta carries the sha256 of each of its tensors (:mod:`circuitlens.core.deltas`).
A file whose bytes differ is a :class:`ResultIntegrityError` naming it, never a model or a
metric that silently differs from the one measured. A result saved before checksums loads
with a logged note."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from circuitlens.ablation.result import AblationResult
from circuitlens.core.deltas import (
    DeltaError,
    DeltaIntegrityError,
    apply_delta,
    load_delta,
    model_delta,
    save_delta,
)
from circuitlens.core.io import atomic_write_text, sha256_file
from circuitlens.core.types import Circuit, HeadMap, Model
from circuitlens.core.validate import ConfigError
from circuitlens.distill.config import DistillConfig
from circuitlens.models.registry import (
    load_model,
    model_fingerprint,
    save_pretrained,
)

log = logging.getLogger(__name__)


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

    student: Model
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
            ResultSaveError: a file could not be written: the message names it, why, and
                (for the weights) where the JSON parts went; the run's checkpoint (if any)
                still holds the trained weights.
        """
        directory = Path(directory)
        try:
            directory.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
        except OSError as e:
            raise ResultSaveError(
                f"creating the result {directory} failed: {e.strerror or e}. Make "
                f"{directory.parent} a writable directory (or pass another --out) and run the "
                "same command again"
            ) from e
        mask = os.umask(0o022)
        os.umask(mask)
        tmp.chmod(0o777 & ~mask)  # mkdtemp makes it private; the result is as readable as any
        try:
            sums: dict[str, str] = {}
            for name, obj in self._json_parts().items():
                text = json.dumps(obj, indent=1)
                try:
                    atomic_write_text(tmp / name, text)
                except OSError as e:  # named by its final path, not the temporary one
                    raise ResultSaveError(
                        f"writing {directory / name} failed: {e.strerror or e}; nothing of the "
                        "result was written. Free some space or make it writable, then run the "
                        "same command again (`circuitlens distill` with the same --out finishes "
                        "from the run's checkpoint without retraining)"
                    ) from e
                sums[name] = hashlib.sha256(text.encode("utf-8")).hexdigest()
            try:
                self._write_weights(tmp, full)
                sums[DELTA_FILE] = sha256_file(tmp / DELTA_FILE)
                atomic_write_text(tmp / SUMS_FILE, "".join(f"{h}  {n}\n" for n, h in sums.items()))
            except Exception as e:
                # keep what was measured: beside a complete result, never over it
                kept = directory if not directory.exists() else _sibling(directory, ".partial")
                _publish(tmp, kept)
                why = e.strerror if isinstance(e, OSError) and e.strerror else None
                why = why or f"{type(e).__name__}: {e}"
                raise ResultSaveError(
                    f"writing the trained weights {directory / DELTA_FILE} failed ({why}); "
                    f"the metrics, map, sweeps and history are in {kept}; the trained weights "
                    "are in the run's checkpoint, if it kept one (`circuitlens distill` with the "
                    "same --out finishes from it without retraining)"
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
    def load(cls, directory: str | Path, student: Model = None) -> DistillResult:
        """Read a saved result; the trained weights go onto ``student``, the student the run
        started from (default: loaded from the spec the result names), bit for bit.

        Raises:
            ResultIntegrityError: a file of the result is damaged (its checksum differs, it
                does not parse): the message names it and the fix.
            DeltaError: ``student`` is not the model the run started from (its untrained
                weights differ).
        """
        directory = Path(directory)
        sums = _read_sums(directory)

        def read(name: str) -> Any:
            f = directory / name
            _check_sum(f, sums)
            try:
                return json.loads(f.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise ResultIntegrityError(f, f"it does not parse ({e})") from e

        delta_file, legacy = directory / DELTA_FILE, directory / "student.safetensors"
        delta = None
        if delta_file.is_file():
            _check_sum(delta_file, sums)
            try:
                delta = load_delta(delta_file)
            except DeltaError as e:  # a delta that does not read back is damaged
                problem = e.problem if isinstance(e, DeltaIntegrityError) else str(e)
                raise ResultIntegrityError(delta_file, problem) from e
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
#: the sha256 of every file a result's load reads, in ``sha256sum``'s format
SUMS_FILE = "SHA256SUMS"


class ResultSaveError(RuntimeError):
    """A result's weights could not be written (or a saved result holds none)."""


class ResultIntegrityError(ValueError):
    """A file of a saved result whose bytes are not those written; the message names it and
    the fix."""

    def __init__(self, path: Path, problem: str) -> None:
        self.path = path
        super().__init__(
            f"the saved result's file {path} is damaged: {problem}. Rerun the distillation with "
            f"the same --out to recompute {path.parent}, or restore it from a copy"
        )


def _read_sums(directory: Path) -> dict[str, str] | None:
    """The result's checksums by file name; None (logged) for a result saved before them."""
    f = directory / SUMS_FILE
    if not f.is_file():
        if directory.is_dir():
            log.info("%s was saved before results carried checksums: not verified", directory)
        return None
    sums = {}
    try:
        for line in f.read_text(encoding="utf-8").splitlines():
            digest, name = line.split("  ", 1)
            sums[name] = digest
    except (UnicodeDecodeError, ValueError) as e:
        raise ResultIntegrityError(f, f"it does not parse ({e})") from e
    return sums


def _check_sum(path: Path, sums: dict[str, str] | None) -> None:
    if sums is None:
        return
    if path.name not in sums:
        raise ResultIntegrityError(path, f"{SUMS_FILE} lists no checksum for it")
    if sha256_file(path) != sums[path.name]:
        raise ResultIntegrityError(path, f"its sha256 differs from the one in {SUMS_FILE}")


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
