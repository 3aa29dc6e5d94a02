"""One finished cell of an experiment (task x condition x seed): what ``cell.json`` holds.

The runner makes a :class:`Cell` from the :class:`~circuitlens.distill.pipeline.ConditionResult`
that
:func:`~circuitlens.distill.pipeline.train_condition` returns (:meth:`Cell.from_condition`), writes
:meth:`Cell.to_dict` (the keys ``cell.json`` has always had) and the tables read cells back
with :meth:`Cell.from_dict` (also from the committed run exports in ``benchmarks/results/``).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from circuitlens.core.io import json_ready
from circuitlens.core.types import Head
from circuitlens.core.validate import require_keys
from circuitlens.distill.pipeline import ConditionResult
from circuitlens.measure.cka import CKAWithNull
from circuitlens.measure.mechanism import MechanismCheck


class CellError(ValueError):
    """A cell (``cell.json``) that cannot be read: the message names what is missing."""


@dataclass(frozen=True)
class Cell:
    """One trained condition of one task and seed, as measured.

    Attributes:
        task, condition, seed: which cell.
        accuracy: test accuracy after training (the mean of ``test_correct``).
        test_correct: 1/0 per test prompt after training.
        circuit_accuracy: accuracy after training with every student head outside the
            map's mean-ablated (None: not measured, ``circuitlens run --no-circuit-only``).
        format_accuracy: prompt format -> test accuracy after training.
        mean_cka_before, mean_cka_after: the mapped pairs' mean held-out CKA (None where it
            was not finite: strict JSON holds no NaN).
        cka_before, cka_after: per pair, the held-out CKA with its permutation null.
        heads_trained, head_fraction, param_fraction: what was trained.
        pairs: ``(student head, teacher head)`` trained.
        steps: steps taken.
        final_loss: the last step's loss (None: no step).
        curve: one point per evaluation (:func:`curve_points`: ``step``, ``val_accuracy``,
            ``val_cka``, ``loss``, ``train_cka``).
        seconds: wall time of the cell.
        resumed: whether training resumed from a checkpoint.
        mechanism: each trained head ablated again after training beside its teacher partner
            (:mod:`circuitlens.measure.mechanism`; None in cells written before it existed).
        lr: the learning rate trained with (the condition's choice on the experiment's grid,
            or the config's ``lr``; None in cells written before it was recorded).
        kept_step: the step whose weights were measured (the best validation evaluation's
            with ``patience``, else the last; None in cells written before it was recorded).
    """

    task: str
    condition: str
    seed: int
    accuracy: float
    test_correct: tuple[int, ...]
    circuit_accuracy: float | None
    format_accuracy: dict[str, float]
    mean_cka_before: float | None
    mean_cka_after: float | None
    cka_before: CKAWithNull
    cka_after: CKAWithNull
    heads_trained: int
    head_fraction: float
    param_fraction: float
    pairs: tuple[tuple[Head, Head], ...]
    steps: int
    final_loss: float | None
    curve: tuple[dict[str, float], ...]
    seconds: float
    resumed: bool
    mechanism: MechanismCheck | None = None
    lr: float | None = None
    kept_step: int | None = None

    def __repr__(self) -> str:
        return (
            f"Cell({self.task!r}, {self.condition!r}, seed={self.seed}: accuracy "
            f"{self.accuracy:.3f}, {len(self.pairs)} pair(s), {self.steps} steps)"
        )

    @classmethod
    def from_condition(
        cls,
        task: str,
        done: ConditionResult,
        format_accuracy: dict[str, float],
        seconds: float,
    ) -> Cell:
        """The cell of one trained condition (``done``) of ``task``."""
        return cls(
            task=task,
            condition=done.condition,
            seed=done.seed,
            accuracy=done.accuracy,
            test_correct=tuple(done.test_correct),
            circuit_accuracy=done.circuit_accuracy,
            format_accuracy=format_accuracy,
            mean_cka_before=done.mean_cka_before,
            mean_cka_after=done.mean_cka_after,
            cka_before=done.cka_before,
            cka_after=done.cka_after,
            heads_trained=done.fraction.heads,
            head_fraction=done.fraction.head_fraction,
            param_fraction=done.fraction.param_fraction,
            pairs=tuple(done.head_map.pairs),
            steps=done.steps,
            final_loss=done.final_loss,
            curve=tuple(curve_points(done.history)),
            seconds=seconds,
            resumed=done.resumed,
            mechanism=done.mechanism,
            lr=done.lr,
            kept_step=done.kept_step,
        )

    @property
    def final_val_accuracy(self) -> float | None:
        """The validation accuracy at the last evaluation (None: never evaluated)."""
        return self.curve[-1]["val_accuracy"] if self.curve else None

    @property
    def val_auc(self) -> float | None:
        """The area under the validation-accuracy curve over the steps it spans, divided by
        them (trapezoids between evaluations): the mean validation accuracy while training, 1
        for a run at 100% from its first evaluation on. One evaluation: its accuracy; None:
        never evaluated. A run stopped early averages over its own, shorter span (see
        :func:`val_auc`'s ``until`` to compare at one budget)."""
        return val_auc(self.curve)

    def steps_to(self, target: float | None) -> int | None:
        """The first evaluated step whose validation accuracy reaches ``target`` (None: never,
        or no target)."""
        if target is None:
            return None
        for point in self.curve:
            if point["val_accuracy"] >= target:
                return int(point["step"])
        return None

    def to_dict(self) -> dict[str, Any]:
        """The keys of ``cell.json``, in its order, as strict JSON holds them (NaN as None);
        ``mechanism`` only where the cell has one."""
        d = {
            "task": self.task,
            "condition": self.condition,
            "seed": self.seed,
            "accuracy": self.accuracy,
            "test_correct": list(self.test_correct),
            "circuit_accuracy": self.circuit_accuracy,
            "format_accuracy": dict(self.format_accuracy),
            "mean_cka_before": self.mean_cka_before,
            "mean_cka_after": self.mean_cka_after,
            "cka_before": self.cka_before.to_dict(),
            "cka_after": self.cka_after.to_dict(),
            "heads_trained": self.heads_trained,
            "head_fraction": self.head_fraction,
            "param_fraction": self.param_fraction,
            "pairs": [[str(s), str(t)] for s, t in self.pairs],
            "steps": self.steps,
            "final_loss": self.final_loss,
            "curve": [dict(point) for point in self.curve],
            "seconds": self.seconds,
            "resumed": self.resumed,
        }
        if self.mechanism is not None:
            d["mechanism"] = self.mechanism.to_dict()
        if self.lr is not None:
            d["lr"] = self.lr
        if self.kept_step is not None:
            d["kept_step"] = self.kept_step
        return json_ready(d)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Cell:
        """Read :meth:`to_dict`'s output (a ``cell.json``).

        Raises:
            CellError: ``d`` is not a cell, or lacks keys (named).
        """
        name = (
            f"cell {d.get('task', '?')}/{d.get('condition', '?')}/seed{d.get('seed', '?')}"
            if isinstance(d, dict)
            else ""
        )
        require_keys(
            d, CELL_KEYS, CellError, "a cell is a table of its measures", name,
            "delete it to recompute it",
        )  # fmt: skip
        mechanism = d.get("mechanism")
        return cls(
            task=d["task"],
            condition=d["condition"],
            seed=d["seed"],
            accuracy=d["accuracy"],
            test_correct=tuple(d["test_correct"]),
            circuit_accuracy=d["circuit_accuracy"],
            format_accuracy=dict(d["format_accuracy"]),
            mean_cka_before=d["mean_cka_before"],
            mean_cka_after=d["mean_cka_after"],
            cka_before=CKAWithNull.from_dict(d["cka_before"]),
            cka_after=CKAWithNull.from_dict(d["cka_after"]),
            heads_trained=d["heads_trained"],
            head_fraction=d["head_fraction"],
            param_fraction=d["param_fraction"],
            pairs=tuple((Head.parse(s), Head.parse(t)) for s, t in d["pairs"]),
            steps=d["steps"],
            final_loss=d["final_loss"],
            curve=tuple(dict(point) for point in d["curve"]),
            seconds=d["seconds"],
            resumed=d["resumed"],
            mechanism=None if mechanism is None else MechanismCheck.from_dict(mechanism),
            lr=d.get("lr"),
            kept_step=d.get("kept_step"),
        )


#: the keys every ``cell.json`` holds (:meth:`Cell.to_dict`; ``mechanism``, ``lr`` and
#: ``kept_step`` besides, since they were added)
CELL_KEYS = (
    "task", "condition", "seed", "accuracy", "test_correct", "circuit_accuracy",
    "format_accuracy", "mean_cka_before", "mean_cka_after", "cka_before", "cka_after",
    "heads_trained", "head_fraction", "param_fraction", "pairs", "steps", "final_loss",
    "curve", "seconds", "resumed",
)  # fmt: skip


def curve_points(history: list[dict[str, float]]) -> list[dict[str, float]]:
    """One row per evaluation: step, validation accuracy and CKA, and the mean training loss
    (and CKA term's batch CKA) over the steps since the previous evaluation."""
    out, since = [], []
    for row in history:
        since.append(row)
        if "val_accuracy" not in row:
            continue
        point = {k: row[k] for k in ("step", "val_accuracy", "val_cka") if k in row}
        point["loss"] = sum(r["loss"] for r in since) / len(since)
        if "mean_cka" in row:
            point["train_cka"] = sum(r["mean_cka"] for r in since) / len(since)
        out.append(point)
        since = []
    return out


def val_auc(
    curve: tuple[dict[str, float], ...] | list[dict[str, float]], until: int | None = None
) -> float | None:
    """The area under a curve's validation accuracy over steps (trapezoids between its
    evaluations), divided by the steps it spans: the mean validation accuracy from the first
    evaluation to the last (one evaluation: its accuracy; none: None).

    ``until``: to this step instead of the last evaluation's, the last accuracy held after it
    (a run stopped early keeps its best weights, so its curve compares with an uncapped one's
    at one budget, e.g. the cap ``steps``).
    """
    points = [(float(p["step"]), float(p["val_accuracy"])) for p in curve]
    if not points:
        return None
    if until is not None and until > points[-1][0]:
        points.append((float(until), points[-1][1]))
    span = points[-1][0] - points[0][0]
    if span <= 0:
        return points[-1][1]
    area = sum((s1 - s0) * (a0 + a1) / 2 for (s0, a0), (s1, a1) in pairwise(points))
    return area / span


__all__ = ["CELL_KEYS", "Cell", "CellError", "curve_points", "val_auc"]
