"""A finished (or partial) experiment read back from disk: tables, curves, the HTML report."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from circuitlens.experiments.config import LABELS, ExperimentConfig
from circuitlens.io import atomic_write_text


@dataclass
class ExperimentResult:
    """A run's results, read back from its directory (complete or not).

    Attributes:
        directory: ``results/<run>``.
        config: the run's :class:`ExperimentConfig`.
        setups: per task, the setup (circuit, sweeps, head map, untrained accuracies).
        cells: one dict per finished (task, condition, seed) training cell.
    """

    directory: Path
    config: ExperimentConfig
    setups: dict[str, dict[str, Any]]
    cells: list[dict[str, Any]]

    def __repr__(self) -> str:
        cfg = self.config
        trained = [c for c in cfg.conditions if c not in ("student", "teacher")]
        total = len(cfg.tasks) * len(cfg.seeds) * len(trained)
        return (
            f"ExperimentResult({str(self.directory)!r}: {len(self.cells)}/{total} cells done; "
            f"tasks {', '.join(cfg.tasks)}; conditions {', '.join(cfg.conditions)}; "
            f"seeds {', '.join(map(str, cfg.seeds))})"
        )

    @classmethod
    def load(cls, directory: str | Path) -> ExperimentResult:
        directory = Path(directory)
        if not (directory / "config.json").is_file():
            raise FileNotFoundError(f"{directory} holds no experiment (no config.json)")
        cfg = ExperimentConfig.from_dict(json.loads((directory / "config.json").read_text()))
        setups, cells = {}, []
        for t in cfg.tasks:
            f = directory / t / "setup.json"
            if f.is_file():
                setups[t] = json.loads(f.read_text())
            for c in cfg.conditions:
                for s in cfg.seeds:
                    f = directory / t / c / f"seed{s}" / "cell.json"
                    if f.is_file():
                        cells.append(json.loads(f.read_text()))
        return cls(directory, cfg, setups, cells)

    # -- tables ------------------------------------------------------------------------------
    def cells_frame(self) -> Any:
        """One row per (task, condition, seed), the untrained references included."""
        import pandas as pd

        rows = []
        targets = {t: self.target(t) for t in self.config.tasks}
        for t, setup in self.setups.items():
            for c, key in (("student", "student_accuracy"), ("teacher", "teacher_accuracy")):
                if c in self.config.conditions:
                    rows.append({"task": t, "condition": c, "seed": None, "accuracy": setup[key]})
        for cell in self.cells:
            rows.append(
                {k: v for k, v in cell.items() if k not in ("curve", "pairs")}
                | {"pairs": " ".join(f"{s}->{t}" for s, t in cell["pairs"])}
                | {"steps_to_target": _first_step(cell, targets[cell["task"]])}
            )
        return pd.DataFrame(rows)

    def target(self, task: str) -> float | None:
        """The validation accuracy "steps to target" asks for (see the config)."""
        if self.config.target_accuracy is not None:
            return self.config.target_accuracy
        setup = self.setups.get(task)
        finals = [
            c["curve"][-1]["val_accuracy"]
            for c in self.cells
            if c["task"] == task and c["condition"] == "ce" and c["curve"]
        ]
        if setup is None or not finals:
            return None
        before = setup["student_val_accuracy"]
        gain = sum(finals) / len(finals) - before
        return before + gain / 2 if gain > 0 else None

    def steps_to_target(self, cell: dict[str, Any]) -> int | None:
        """The first evaluated step whose validation accuracy reaches the target (None: never)."""
        return _first_step(cell, self.target(cell["task"]))

    def table(self) -> Any:
        """The paper's table: per task and condition, mean and std over seeds."""
        import pandas as pd

        df = self.cells_frame()
        rows = []
        for t in self.config.tasks:
            ce = df[(df.task == t) & (df.condition == "ce")]["accuracy"]
            for c in self.config.conditions:
                sub = df[(df.task == t) & (df.condition == c)]
                if sub.empty:
                    continue
                acc = sub["accuracy"].astype(float)
                row: dict[str, Any] = {
                    "task": t,
                    "condition": LABELS[c],
                    "accuracy_mean": acc.mean(),
                    "accuracy_std": acc.std(ddof=1) if len(acc) > 1 else float("nan"),
                    "n_seeds": len(acc),
                    "points_vs_ce": 100 * (acc.mean() - ce.mean()) if len(ce) else float("nan"),
                }
                if c not in ("student", "teacher"):
                    reached = sub["steps_to_target"].dropna()
                    row |= {
                        "head_fraction": sub["head_fraction"].mean(),
                        "param_fraction": sub["param_fraction"].mean(),
                        "cka_before": sub["mean_cka_before"].astype(float).mean(),
                        "cka_after": sub["mean_cka_after"].astype(float).mean(),
                        "steps_to_target": reached.mean() if len(reached) else float("nan"),
                        "reached_target": f"{len(reached)}/{len(sub)}"
                        if self.target(t) is not None
                        else "",
                    }
                rows.append(row)
        return pd.DataFrame(rows)

    def markdown(self, table: Any = None) -> str:
        """The table as Markdown, with what each column means."""
        df = self.table() if table is None else table
        if df.empty:
            return "(no finished cells yet)\n"
        show = df.copy()

        def pct(x: Any) -> str:
            return "" if _isna(x) else f"{100 * x:.1f}%"

        show["accuracy"] = [
            f"{m:.3f}" + ("" if _isna(s) else f" ± {s:.3f}")
            for m, s in zip(df.accuracy_mean, df.accuracy_std, strict=True)
        ]
        show["vs CE (points)"] = ["" if _isna(x) else f"{x:+.1f}" for x in df.points_vs_ce]
        cols = ["task", "condition", "accuracy", "n_seeds", "vs CE (points)"]
        if "head_fraction" in df:
            show["heads trained"] = [pct(x) for x in df.head_fraction]
            show["params trained"] = [pct(x) for x in df.param_fraction]
            show["CKA before → after"] = [
                "" if _isna(a) and _isna(b) else f"{a:.3f} → {b:.3f}"
                for a, b in zip(df.cka_before, df.cka_after, strict=True)
            ]
            show["steps to target"] = [
                "" if _isna(r) or not r else ("never" if _isna(s) else f"{s:.0f}") + f" ({r})"
                for s, r in zip(df.steps_to_target, df.reached_target, strict=True)
            ]
            cols += ["heads trained", "params trained", "CKA before → after", "steps to target"]
        lines = [show[cols].fillna("").to_markdown(index=False), ""]
        for t in self.config.tasks:
            target = self.target(t)
            if target is not None:
                lines.append(f"- {t}: target validation accuracy {target:.3f}")
        return "\n".join(lines) + "\n"

    def curves(self) -> Any:
        """Long table of the training curves: task, condition, seed, step, val accuracy/CKA
        (step 0 is the untrained student)."""
        import pandas as pd

        rows = []
        for cell in self.cells:
            setup = self.setups[cell["task"]]
            start = {"step": 0, "val_accuracy": setup["student_val_accuracy"]}
            if cell.get("mean_cka_before") is not None:
                start["val_cka"] = cell["mean_cka_before"]
            for row in [start, *cell["curve"]]:
                rows.append(
                    {"task": cell["task"], "condition": cell["condition"], "seed": cell["seed"]}
                    | row
                )
        return pd.DataFrame(rows)

    # -- report ------------------------------------------------------------------------------
    def write_report(self) -> dict[str, Path]:
        """``table.md``, ``table.csv``, ``cells.csv``, ``report.html`` in the run's directory."""
        out = {
            "table.md": self.directory / "table.md",
            "table.csv": self.directory / "table.csv",
            "cells.csv": self.directory / "cells.csv",
            "report.html": self.directory / "report.html",
        }
        table = self.table()
        md = self.markdown(table)
        atomic_write_text(out["table.md"], md)
        atomic_write_text(out["table.csv"], table.to_csv(index=False))
        atomic_write_text(out["cells.csv"], self.cells_frame().to_csv(index=False))
        from circuitlens.report import render_report

        html = render_report(self, table)
        atomic_write_text(out["report.html"], html)
        return out


def _first_step(cell: dict[str, Any], target: float | None) -> int | None:
    if target is None:
        return None
    for row in cell["curve"]:
        if row["val_accuracy"] >= target:
            return int(row["step"])
    return None


def _isna(x: Any) -> bool:
    import pandas as pd

    return bool(pd.isna(x))
