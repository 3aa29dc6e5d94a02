"""Each condition's learning rate, chosen on validation from one shared grid.

A comparison of conditions at one learning rate tuned for one of them measures that choice as
much as the conditions. With :attr:`~circuitlens.distill.train_config.TrainConfig.lr_grid` set,
the experiment runner gives every condition its own best shot: for each task x condition it
trains the first of the experiment's seeds at every learning rate of the grid (validation only:
the test split is never read), keeps each run's best validation accuracy (the accuracy at its
kept step: the best evaluation with ``patience``, else the last), and every cell of that
condition trains at the lr with the highest one (ties: the smaller lr). ``lr_from`` may instead
name a pilot run's directory, whose choices (on the same grid) are taken as they are.

The choices go to ``<run>/<task>/lr.json``, one entry per condition (:class:`LRChoice`)::

    {"ce": {"lr": 0.0002, "seed": 0, "grid": [0.0001, 0.0002, 0.0004],
            "val_accuracy": {"0.0001": 0.81, "0.0002": 0.86, "0.0004": 0.86},
            "kept_step": {"0.0001": 300, "0.0002": 150, "0.0004": 100},
            "source": "first-seed"}}

``lr`` is None until every grid point is measured; each point is written (atomically) as soon
as it is, so an interrupted choice resumes without training a finished point again.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from circuitlens.core.io import atomic_write_text, json_ready
from circuitlens.core.rundir import read_json
from circuitlens.core.validate import ConfigError

#: a task's learning-rate choices, in its directory of the run
LR_FILE = "lr.json"


def lr_key(lr: float) -> str:
    """A grid point's key in ``lr.json`` (JSON keys are strings): ``repr`` of the float,
    which reads back as the same float."""
    return repr(float(lr))


def choose_lr(val_accuracy: dict[float, float]) -> float:
    """The learning rate with the highest validation accuracy; ties: the smaller lr (the
    smaller step is the more conservative claim); a NaN accuracy loses to any number."""
    if not val_accuracy:
        raise ValueError("no grid point measured: nothing to choose from")

    def rank(lr: float) -> tuple[float, float]:
        acc = val_accuracy[lr]
        return (-math.inf if math.isnan(acc) else acc, -lr)

    return max(val_accuracy, key=rank)


@dataclass(frozen=True)
class LRChoice:
    """One condition's choice of learning rate on one task (an entry of ``lr.json``).

    Attributes:
        condition: the condition.
        grid: the learning rates tried, ascending.
        seed: the training seed the grid points were trained with.
        val_accuracy: lr -> the kept validation accuracy of the run at that lr (the points
            measured so far).
        kept_step: lr -> the step that run kept.
        source: ``"first-seed"``, or the pilot run's directory the choice was read from.
    """

    condition: str
    grid: tuple[float, ...]
    seed: int
    val_accuracy: dict[float, float] = field(default_factory=dict)
    kept_step: dict[float, int] = field(default_factory=dict)
    source: str = "first-seed"

    @property
    def done(self) -> bool:
        """Whether every grid point is measured."""
        return all(g in self.val_accuracy for g in self.grid)

    @property
    def lr(self) -> float | None:
        """The chosen learning rate (:func:`choose_lr`); None until :attr:`done`."""
        return choose_lr(self.val_accuracy) if self.done else None

    def missing(self) -> list[float]:
        """The grid points still to measure, in the grid's order."""
        return [g for g in self.grid if g not in self.val_accuracy]

    def with_point(self, lr: float, accuracy: float, kept_step: int) -> LRChoice:
        """A copy with one more grid point measured."""
        return LRChoice(
            self.condition,
            self.grid,
            self.seed,
            {**self.val_accuracy, lr: accuracy},
            {**self.kept_step, lr: kept_step},
            self.source,
        )

    def to_dict(self) -> dict[str, Any]:
        """The entry as ``lr.json`` holds it (NaN as null)."""
        return json_ready(
            {
                "lr": self.lr,
                "seed": self.seed,
                "grid": list(self.grid),
                "val_accuracy": {lr_key(g): self.val_accuracy[g] for g in self.grid
                                 if g in self.val_accuracy},
                "kept_step": {lr_key(g): self.kept_step[g] for g in self.grid
                              if g in self.kept_step},
                "source": self.source,
            }
        )  # fmt: skip

    @classmethod
    def from_dict(cls, condition: str, d: dict[str, Any]) -> LRChoice:
        """Read :meth:`to_dict`'s output (``None`` accuracies read back as NaN)."""
        acc = {float(k): math.nan if v is None else float(v) for k, v in d["val_accuracy"].items()}
        return cls(
            condition=condition,
            grid=tuple(float(g) for g in d["grid"]),
            seed=int(d["seed"]),
            val_accuracy=acc,
            kept_step={float(k): int(v) for k, v in d["kept_step"].items()},
            source=d.get("source", "first-seed"),
        )


def read_choices(f: str | Path) -> dict[str, LRChoice]:
    """A task's ``lr.json``: condition -> :class:`LRChoice` (an absent file: none)."""
    f = Path(f)
    if not f.is_file():
        return {}
    return {c: LRChoice.from_dict(c, d) for c, d in read_json(f, "the lr choices").items()}


def write_choices(f: str | Path, choices: dict[str, LRChoice]) -> None:
    """Write a task's ``lr.json`` atomically (a reader never sees half of it)."""
    doc = {c: choice.to_dict() for c, choice in choices.items()}
    atomic_write_text(Path(f), json.dumps(doc, indent=1))


def pilot_choice(pilot: str | Path, task: str, condition: str, grid: tuple[float, ...]) -> LRChoice:
    """A finished choice of a pilot run (``<pilot>/<task>/lr.json``), made on ``grid``.

    Raises:
        ConfigError: the pilot has no finished choice for the condition, or made it on
            another grid.
    """
    f = Path(pilot) / task / LR_FILE
    choice = read_choices(f).get(condition)
    if choice is None or not choice.done:
        raise ConfigError(
            f"lr_from={str(pilot)!r}: {f} holds no finished choice for {condition!r}; run the "
            f"pilot with this condition first, or use lr_from='first-seed'"
        )
    if tuple(sorted(choice.grid)) != tuple(sorted(grid)):
        raise ConfigError(
            f"lr_from={str(pilot)!r}: the pilot chose {condition!r}'s lr on the grid "
            f"{list(choice.grid)}, this run's is {list(grid)}: use the same grid"
        )
    return LRChoice(
        condition, choice.grid, choice.seed, choice.val_accuracy, choice.kept_step, str(pilot)
    )


__all__ = [
    "LR_FILE",
    "LRChoice",
    "choose_lr",
    "lr_key",
    "pilot_choice",
    "read_choices",
    "write_choices",
]
