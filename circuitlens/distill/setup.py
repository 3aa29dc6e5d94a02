"""The setup of a distillation: what every condition and seed of one task shares.

Computed once, before any training, by :func:`circuitlens.distill.pipeline.prepare` (called by
:func:`circuitlens.distill_circuit` and by the reproduce runner, once per task): the teacher's
circuit, the two mean-ablation sweeps, the closest-impact head map, and the untrained
references (teacher and student accuracy, per prompt, circuit-only and per prompt format).
Each condition's pairs come from it (:meth:`Setup.condition_map`, through the registry's
:func:`circuitlens.distill.conditions.condition_map`).

A reproduce run keeps it as ``<task>/setup.json``: :meth:`Setup.to_dict` writes the keys that
file has always had, and :meth:`Setup.from_dict` reads them back (also from the committed run
exports in ``benchmarks/results/``), checking the saved map again from the saved sweeps
(:func:`circuitlens.mapping.map.check_map`): a map saved before the degenerate-assignment
check gains its warning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from circuitlens.ablation.result import AblationResult
from circuitlens.core.io import json_ready
from circuitlens.core.rundir import read_json
from circuitlens.core.types import Circuit, HeadMap
from circuitlens.core.validate import require_keys
from circuitlens.distill.conditions import Condition, PairSources, condition_map
from circuitlens.mapping.map import check_map
from circuitlens.mapping.methods import CorrespondenceFeatures

log = logging.getLogger(__name__)

#: the untrained references a setup measures (rows of the experiment's table)
Role = Literal["student", "teacher"]


class SetupError(ValueError):
    """A setup (``setup.json``) that cannot be read: the message names what is missing."""


@dataclass(frozen=True)
class Reference:
    """One untrained model's measures on the test prompts (a row of the table).

    Attributes:
        accuracy: full-model test accuracy.
        circuit_accuracy: accuracy with every head outside the kept set mean-ablated (the
            student: the map's heads; the teacher: the circuit's, None without a circuit).
        format_accuracy: prompt format -> test accuracy (empty: the card's format only).
        test_correct: 1/0 per test prompt.
    """

    accuracy: float
    circuit_accuracy: float | None
    format_accuracy: dict[str, float]
    test_correct: tuple[int, ...]


@dataclass(frozen=True)
class Setup:
    """Circuit, sweeps, head map and untrained references of one task (see the module).

    Attributes:
        task: the task's name.
        circuit: the teacher's circuit (None: none was used; it may hold no heads, when
            patching found none: then the map may use any teacher head).
        circuit_note: why the circuit is as it is, when that needs saying ("" otherwise).
        teacher_sweep, student_sweep: the mean-ablation sweeps the map was made from.
        head_map: the closest-impact map (the aligned conditions' pairs).
        teacher_accuracy, student_accuracy: test accuracy, untrained.
        student_test_correct, teacher_test_correct: 1/0 per test prompt.
        student_circuit_accuracy: the student's accuracy with every head outside the map's
            student heads mean-ablated.
        teacher_circuit_accuracy: the teacher's with every head outside the circuit
            mean-ablated (None without circuit heads).
        student_format_accuracy, teacher_format_accuracy: prompt format -> test accuracy
            (empty: the card's format only).
        student_val_accuracy: the untrained student's validation accuracy (step 0 of the
            training curves; NaN where the task has no validation prompts).
        fingerprints: role -> what identifies the weights behind the model's name
            (:func:`circuitlens.models.registry.model_fingerprint`; empty: not known).
        teacher_shape, student_shape: ``(n_layers, n_heads, n_kv_heads)``.
        seconds: wall time of the setup.
        features: what the map method read besides the sweeps (the heads' ``z``), for the
            random-heads controls' partners; not saved (None: the sweeps only).
    """

    task: str
    circuit: Circuit | None
    circuit_note: str
    teacher_sweep: AblationResult
    student_sweep: AblationResult
    head_map: HeadMap
    teacher_accuracy: float
    student_accuracy: float
    student_test_correct: tuple[int, ...]
    teacher_test_correct: tuple[int, ...]
    student_circuit_accuracy: float
    teacher_circuit_accuracy: float | None
    student_format_accuracy: dict[str, float]
    teacher_format_accuracy: dict[str, float]
    student_val_accuracy: float
    fingerprints: dict[str, str]
    teacher_shape: tuple[int, int, int]
    student_shape: tuple[int, int, int]
    seconds: float
    features: CorrespondenceFeatures | None = field(default=None, compare=False, repr=False)

    def __repr__(self) -> str:
        n = "no circuit" if self.circuit is None else f"{len(self.circuit.heads)} circuit heads"
        return (
            f"Setup({self.task!r}: {n}, {len(self.head_map)} mapped pair(s); accuracy "
            f"student {self.student_accuracy:.3f}, teacher {self.teacher_accuracy:.3f}; "
            f"{self.seconds} s)"
        )

    @property
    def map_circuit(self) -> Circuit | None:
        """The circuit the maps draw teacher heads from: None when it holds no heads."""
        return self.circuit if self.circuit is not None and self.circuit.heads else None

    def reference(self, role: Role) -> Reference:
        """The untrained student's or the teacher's measures."""
        if role == "student":
            return Reference(
                self.student_accuracy,
                self.student_circuit_accuracy,
                self.student_format_accuracy,
                self.student_test_correct,
            )
        if role == "teacher":
            return Reference(
                self.teacher_accuracy,
                self.teacher_circuit_accuracy,
                self.teacher_format_accuracy,
                self.teacher_test_correct,
            )
        raise ValueError(f"a setup measures the untrained 'student' and 'teacher' (got {role!r})")

    def condition_map(
        self, condition: Condition | str, seed: int, random_from_circuit: bool = True
    ) -> HeadMap:
        """The pairs one condition trains: the setup's map, or the condition's control drawn
        with ``seed`` (:func:`circuitlens.distill.conditions.condition_map`); random teacher
        partners come from the circuit's heads (``random_from_circuit``, when it has any) or
        from every teacher head; random student heads are matched to the map's in trained
        parameters (the student's K/V heads: ``student_shape``) and get their partners from
        the map's method (``features``)."""
        circuit = self.map_circuit
        sources = PairSources(
            self.head_map,
            self.student_sweep,
            self.teacher_sweep,
            circuit,
            circuit if random_from_circuit else None,
            n_kv_heads=self.student_shape[2],
            features=self.features,
        )
        return condition_map(condition, sources, seed)

    def to_dict(self) -> dict[str, Any]:
        """The keys of ``setup.json``, in its order, as strict JSON holds them (NaN as None)."""
        return json_ready(
            {
                "task": self.task,
                "circuit": None if self.circuit is None else self.circuit.to_dict(),
                "circuit_note": self.circuit_note,
                "teacher_sweep": self.teacher_sweep.to_dict(),
                "student_sweep": self.student_sweep.to_dict(),
                "head_map": self.head_map.to_dict(),
                "teacher_accuracy": self.teacher_accuracy,
                "student_accuracy": self.student_accuracy,
                "student_test_correct": list(self.student_test_correct),
                "teacher_test_correct": list(self.teacher_test_correct),
                "student_circuit_accuracy": self.student_circuit_accuracy,
                "teacher_circuit_accuracy": self.teacher_circuit_accuracy,
                "student_format_accuracy": dict(self.student_format_accuracy),
                "teacher_format_accuracy": dict(self.teacher_format_accuracy),
                "student_val_accuracy": self.student_val_accuracy,
                "fingerprints": dict(self.fingerprints),
                "teacher_shape": list(self.teacher_shape),
                "student_shape": list(self.student_shape),
                "seconds": self.seconds,
            }
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Setup:
        """Read :meth:`to_dict`'s output (a ``setup.json``).

        Raises:
            SetupError: ``d`` is not a setup, or lacks keys (named).
        """
        name = f"setup of task {d.get('task', '?')!r}" if isinstance(d, dict) else ""
        require_keys(
            d, SETUP_KEYS, SetupError, "a setup is a table of its parts", name,
            "delete the task's directory to recompute it",
        )  # fmt: skip
        nan = float("nan")
        circuit = d["circuit"]
        teacher_sweep = AblationResult.from_dict(d["teacher_sweep"])
        student_sweep = AblationResult.from_dict(d["student_sweep"])
        head_map = rechecked(HeadMap.from_dict(d["head_map"]), student_sweep, teacher_sweep)
        return cls(
            task=d["task"],
            circuit=None if circuit is None else Circuit.from_dict(circuit),
            circuit_note=d["circuit_note"],
            teacher_sweep=teacher_sweep,
            student_sweep=student_sweep,
            head_map=head_map,
            teacher_accuracy=d["teacher_accuracy"],
            student_accuracy=d["student_accuracy"],
            student_test_correct=tuple(d["student_test_correct"]),
            teacher_test_correct=tuple(d["teacher_test_correct"]),
            student_circuit_accuracy=d["student_circuit_accuracy"],
            teacher_circuit_accuracy=d["teacher_circuit_accuracy"],
            student_format_accuracy=dict(d["student_format_accuracy"]),
            teacher_format_accuracy=dict(d["teacher_format_accuracy"]),
            student_val_accuracy=nan if d["student_val_accuracy"] is None
            else d["student_val_accuracy"],
            fingerprints=dict(d["fingerprints"]),
            teacher_shape=tuple(d["teacher_shape"]),
            student_shape=tuple(d["student_shape"]),
            seconds=d["seconds"],
        )  # fmt: skip


def rechecked(
    head_map: HeadMap, student_sweep: AblationResult, teacher_sweep: AblationResult
) -> HeadMap:
    """``head_map`` with the warnings :func:`~circuitlens.mapping.map.check_map` finds
    from the saved sweeps added where the saved map lacks them (logged); the map itself when
    it has them all."""
    have = head_map.warnings
    new = [w for w in check_map(head_map, student_sweep, teacher_sweep) if w not in have]
    if not new:
        return head_map
    for w in new:
        log.warning("saved map, checked again: %s", w)
    return replace(head_map, config=head_map.config | {"warnings": [*have, *new]})


#: the keys of ``setup.json`` (:meth:`Setup.to_dict`), in order
SETUP_KEYS = (
    "task", "circuit", "circuit_note", "teacher_sweep", "student_sweep", "head_map",
    "teacher_accuracy", "student_accuracy", "student_test_correct", "teacher_test_correct",
    "student_circuit_accuracy", "teacher_circuit_accuracy", "student_format_accuracy",
    "teacher_format_accuracy", "student_val_accuracy", "fingerprints", "teacher_shape",
    "student_shape", "seconds",
)  # fmt: skip


def read_setup(path: Path, task: str) -> Setup:
    """The setup saved at ``path`` (a run's ``<task>/setup.json``) for task ``task``, read back
    by :meth:`Setup.from_dict`; a missing or unreadable file is an error naming the task."""
    return Setup.from_dict(read_json(path, f"the {task} setup"))


__all__ = ["SETUP_KEYS", "Reference", "Role", "Setup", "SetupError", "read_setup", "rechecked"]
