"""Curves, not one point: the comparison over the CKA weight lambda and over the head budget.

``run_sweep(base, directory, lams=(0.1, 0.3, 1, 3))`` runs ``base`` (an
:class:`~circuitlens.experiments.ExperimentConfig`) once per value, each point a resumable run
directory of its own (``directory/lam=0.3/``, ``directory/budget=0.05/``), and reads them back
as one :class:`SweepResult`: per task, condition and point, the seed-mean accuracy with its
seed interval (a t interval over the seeds' accuracies) and the mean held-out CKA of the pairs
after training, the figures' and the table's data.

What the points share is computed once and copied before a point runs (its run directory is
seeded as ``benchmarks/export_run.py --restore`` seeds one, marker and config first):

- lambda changes training only: every point reuses the first point's setup (circuit, sweeps,
  map), and the cells of conditions without the alignment term (CE, KD, ...; lambda does not
  enter their loss), which are the same computation at every lambda;
- the budget changes the map: every point reuses the circuit search's stages and the exact
  sweeps (``sweeps.json``; an exact sweep does not read the budget), and computes its own map.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from circuitlens.core.io import atomic_write_text, json_text
from circuitlens.core.rundir import MARKER
from circuitlens.distill.conditions import condition_names, get_condition
from circuitlens.experiments.cell import Cell
from circuitlens.experiments.config import ExperimentConfig
from circuitlens.experiments.result import ExperimentResult
from circuitlens.experiments.runner import run_experiment

#: what a sweep can vary, and the ExperimentConfig override it sets
KNOBS = ("lam", "budget")


def point_name(knob: str, value: float) -> str:
    """A point's directory name: ``lam=0.3``, ``budget=0.13``, ``budget=26``."""
    return f"{knob}={value:g}"


def _seed_point(first: Path, point: Path, cfg: ExperimentConfig, knob: str) -> None:
    """Copy into a new point's directory what it shares with the first point (see the module
    docstring); nothing is copied into a point that exists already."""
    if point.exists():
        return
    point.mkdir(parents=True)
    atomic_write_text(point / MARKER, json.dumps({"kind": "reproduce", "seeded_from": first.name}))
    atomic_write_text(point / "config.json", json_text(cfg.to_dict()))
    for task in cfg.tasks:
        src, dst = first / task, point / task
        if not src.is_dir():
            continue
        dst.mkdir(parents=True, exist_ok=True)
        if (src / "circuit").is_dir():
            shutil.copytree(src / "circuit", dst / "circuit")
        if (src / "sweeps.json").is_file():
            shutil.copy2(src / "sweeps.json", dst / "sweeps.json")
        if knob != "lam":
            continue
        if (src / "setup.json").is_file():
            shutil.copy2(src / "setup.json", dst / "setup.json")
        for condition in cfg.conditions:
            if condition not in condition_names() or get_condition(condition).uses_cka:
                continue
            for seed in cfg.seeds:
                cell = src / condition / f"seed{seed}" / "cell.json"
                if cell.is_file():
                    (dst / condition / f"seed{seed}").mkdir(parents=True, exist_ok=True)
                    shutil.copy2(cell, dst / condition / f"seed{seed}" / "cell.json")


def run_sweep(
    base: ExperimentConfig,
    directory: str | Path,
    knob: str,
    values: list[float] | tuple[float, ...],
    progress: bool = True,
    device: str | None = None,
    jobs: int | str = 1,
) -> SweepResult:
    """Run ``base`` at every value of ``knob`` (``"lam"`` or ``"budget"``), each point into
    ``directory/<knob>=<value>/`` (resumable: finished cells are kept), the points in the
    given order, then read them back.

    Raises:
        ValueError: an unknown knob, no values, or a value the config refuses (named).
    """
    if knob not in KNOBS:
        raise ValueError(f"a sweep varies one of {', '.join(KNOBS)} (got {knob!r})")
    if not values:
        raise ValueError(f"give the {knob} values to sweep, e.g. 0.1,0.3,1,3")
    configs = {v: base.with_overrides(**{knob: v}) for v in values}  # all checked first
    directory = Path(directory)
    first = directory / point_name(knob, values[0])
    for v, cfg in configs.items():
        point = directory / point_name(knob, v)
        if point != first and first.is_dir():
            _seed_point(first, point, cfg, knob)
        run_experiment(cfg, point, progress=progress, device=device, jobs=jobs)
    return SweepResult.load(directory, knob, values)


@dataclass
class SweepResult:
    """The points of a sweep, read from their run directories.

    Attributes:
        directory: the sweep's directory.
        knob: ``"lam"`` or ``"budget"``.
        points: value -> that point's :class:`ExperimentResult`.
    """

    directory: Path
    knob: str
    points: dict[float, ExperimentResult]

    @classmethod
    def load(
        cls, directory: str | Path, knob: str, values: list[float] | tuple[float, ...]
    ) -> SweepResult:
        directory = Path(directory)
        points = {v: ExperimentResult.load(directory / point_name(knob, v)) for v in values}
        return cls(directory, knob, points)

    def frame(self) -> Any:
        """One row per task, condition and point: seeds, accuracy mean, its 95% t interval
        over the seeds (NaN with one seed), the held-out CKA after training (mean over seeds
        of the pairs' mean) and the trained fraction of heads."""
        import pandas as pd
        from scipy import stats

        rows = []
        for value, result in self.points.items():
            for cell_group in _groups(result.cells):
                accs = [c.accuracy for c in cell_group]
                n = len(accs)
                mean = sum(accs) / n
                half = float("nan")
                if n > 1:
                    sd = math.sqrt(sum((a - mean) ** 2 for a in accs) / (n - 1))
                    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
                ckas = [c.mean_cka_after for c in cell_group if c.mean_cka_after]
                rows.append(
                    {
                        "task": cell_group[0].task,
                        "condition": cell_group[0].condition,
                        self.knob: value,
                        "seeds": n,
                        "accuracy": mean,
                        "ci_low": mean - half,
                        "ci_high": mean + half,
                        "cka_after": sum(ckas) / len(ckas) if ckas else float("nan"),
                        "head_fraction": cell_group[0].head_fraction,
                    }
                )
        return pd.DataFrame(rows)

    def markdown(self) -> str:
        """The frame as a markdown table, a section per task."""
        df = self.frame()
        parts = []
        for task, sub in df.groupby("task", sort=False):
            parts.append(f"### {task}: accuracy over {self.knob} (95% t interval over seeds)\n")
            parts.append(sub.drop(columns="task").to_markdown(index=False, floatfmt=".3f"))
            parts.append("")
        return "\n".join(parts)


def _groups(cells: list[Cell]) -> list[list[Cell]]:
    """The cells grouped by (task, condition), in first-seen order."""
    groups: dict[tuple[str, str], list[Cell]] = {}
    for c in cells:
        groups.setdefault((c.task, c.condition), []).append(c)
    return list(groups.values())


__all__ = ["KNOBS", "SweepResult", "point_name", "run_sweep"]
