"""A finished (or partial) experiment read back from disk: tables, curves, statistics.

The tables themselves are built in :mod:`circuitlens.experiments.tables`; the HTML page is
presentation: :func:`circuitlens.report.page.write_report` reads this object.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from circuitlens.core.io import atomic_write_text
from circuitlens.core.rundir import read_json
from circuitlens.distill.conditions import BASELINE
from circuitlens.distill.setup import Setup
from circuitlens.experiments import tables
from circuitlens.experiments.cell import Cell, curve_points  # noqa: F401 (re-exported)
from circuitlens.experiments.config import LABELS, ExperimentConfig
from circuitlens.experiments.tables import MCNEMAR_P, MCNEMAR_POOLED, signed  # noqa: F401 (report)

#: the columns of :meth:`ExperimentResult.comparisons`, in order
COMPARISON_COLUMNS = (
    "task", "A", "B", "role", "n_seeds", "mean_diff", "ci_low", "ci_high", "p_sign_flip", "p_t",
    "p_holm", "power", "verdict", "per_seed_mcnemar", "seeds", "diffs", "condition", "contrast",
)  # fmt: skip


@dataclass
class ExperimentResult:
    """A run's results, read back from its directory (complete or not).

    Attributes:
        directory: ``results/<run>``.
        config: the run's :class:`ExperimentConfig`.
        setups: per task, the :class:`~circuitlens.distill.setup.Setup` (circuit, sweeps,
            head map, untrained accuracies).
        cells: one :class:`~circuitlens.experiments.cell.Cell` per finished (task, condition,
            seed) training cell.
    """

    directory: Path
    config: ExperimentConfig
    setups: dict[str, Setup]
    cells: list[Cell]

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
        cfg = ExperimentConfig.from_dict(read_json(directory / "config.json", "the run's config"))
        setups, cells = {}, []
        for t in cfg.tasks:
            f = directory / t / "setup.json"
            if f.is_file():
                setups[t] = Setup.from_dict(read_json(f, f"the {t} setup"))
            for c in cfg.conditions:
                for s in cfg.seeds:
                    f = directory / t / c / f"seed{s}" / "cell.json"
                    if f.is_file():
                        cells.append(Cell.from_dict(read_json(f, f"the {t} {c} seed {s} cell")))
        return cls(directory, cfg, setups, cells)

    # -- tables (built in :mod:`circuitlens.experiments.tables`) ------------------------------
    def _targets(self) -> dict[str, float | None]:
        """Per task of the config, in order, its :meth:`target`."""
        return {t: self.target(t) for t in self.config.tasks}

    def cells_frame(self) -> Any:
        """One row per (task, condition, seed), the untrained references included."""
        cfg = self.config
        return tables.cells_frame(self.cells, self.setups, cfg.conditions, self._targets())

    def target(self, task: str) -> float | None:
        """The validation accuracy convergence is measured against: the CE condition's final
        validation accuracy (mean over seeds), unless the config fixes ``target_accuracy``."""
        if self.config.target_accuracy is not None:
            return self.config.target_accuracy
        finals = [
            c.final_val_accuracy
            for c in self.cells
            if c.task == task and c.condition == BASELINE and c.final_val_accuracy is not None
        ]
        if task not in self.setups or not finals:
            return None
        return sum(finals) / len(finals)

    def steps_to_target(self, cell: Cell) -> int | None:
        """The first evaluated step whose validation accuracy reaches the target (None: never)."""
        return cell.steps_to(self.target(cell.task))

    def table(self) -> Any:
        """The paper's table: per task and condition, mean and sd over seeds."""
        cfg = self.config
        return tables.main_table(self.cells_frame(), cfg.tasks, cfg.conditions, self._targets())

    def format_table(self) -> Any:
        """Accuracy in every prompt format the task offers: task, condition, format, mean, sd,
        points against the same format's CE."""
        return tables.format_table(self.cells_frame(), self.config.tasks, self.config.conditions)

    #: McNemar comparisons: (A, B), the method against each baseline and control
    COMPARISONS = tables.MCNEMAR_COMPARISONS

    def mcnemar_table(self) -> Any:
        """McNemar's exact test of CE + Align against each baseline, per task, on per-prompt
        test correctness pooled over the seeds both conditions have (:data:`MCNEMAR_POOLED`).

        The test prompts are the same in every seed, so with several seeds this counts each
        prompt once per seed and ignores the seed, the unit that varies training: it is not a
        valid test of the conditions (:meth:`comparisons` is). Kept for the record."""
        cfg = self.config
        return tables.mcnemar_table(self.cells, cfg.tasks, cfg.seeds, self.COMPARISONS)

    def cka_table(self) -> Any:
        """Held-out CKA of every mapped pair after training, with its permutation null."""
        return tables.cka_table(self.cells)

    def comparisons(self, n_boot: int = 2000) -> Any:
        """The declared primary contrasts, then each other trained condition against CE, with
        the seed as the unit, per task.

        Per task, first every primary contrast of the design
        (:meth:`~circuitlens.experiments.config.ExperimentConfig.primary_contrasts`), then every
        other trained condition of the config against CE (the baseline
        :data:`~circuitlens.distill.conditions.BASELINE`), each over the seeds both conditions
        have: :func:`~circuitlens.experiments.stats.compare_seeds` of their per-prompt test
        correctness (``test_correct`` of their cells). The sign-flip p's of the primary family
        are Holm-adjusted together (a primary contrast not yet tested over 2 seeds counts as
        p = 1, so the family is the declared one); the other rows are exploratory, reported
        with their unadjusted p. Only the cells are read, so every number can be recomputed
        from the run's ``cell.json`` files.

        Args:
            n_boot: replicates of the two-way (seeds x prompts) bootstrap interval (its seed is
                fixed: the same cells give the same table).

        Returns:
            A pandas frame, one row per comparison: ``task``, ``A``, ``B`` (labels), ``role``
            (``"primary"`` or ``"exploratory"``), ``n_seeds``, ``mean_diff`` (mean over seeds
            of A's accuracy minus B's), ``ci_low``/``ci_high`` (95% two-way seed x prompt
            bootstrap interval), ``p_sign_flip`` (exact, unadjusted), ``p_t``, ``p_holm``
            (primary rows only), ``power`` (the test's power at the design's effect of
            interest, at these seeds and the observed sd of the per-seed differences, level
            alpha / family size for a primary row:
            :func:`~circuitlens.experiments.design.sign_flip_power`), ``verdict``
            (:func:`~circuitlens.experiments.design.contrast_verdict`), and per seed (sorted):
            ``per_seed_mcnemar`` (McNemar's exact p within the seed), ``seeds``, ``diffs``;
            ``condition`` is A's name and ``contrast`` the ``"A - B"`` of names. With one
            shared seed no seed-level test exists: the row has the seed's difference, NaN
            intervals, p's and power, and a verdict saying so.
        """
        import pandas as pd

        rows = [row for t in self.config.tasks for row in self._task_comparisons(t, n_boot)]
        return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)

    def _scores(self, task: str, condition: str) -> dict[int, list[int]]:
        """Per seed, the per-prompt test correctness of one condition's cells."""
        return {
            int(c.seed): list(c.test_correct)
            for c in self.cells
            if c.task == task and c.condition == condition
        }

    def _task_comparisons(self, task: str, n_boot: int) -> list[dict[str, Any]]:
        """The rows of :meth:`comparisons` for one task: the declared primary contrasts
        (Holm-adjusted together), then each other trained condition against CE
        (exploratory)."""
        from circuitlens.experiments.design import parse_contrast
        from circuitlens.experiments.stats import compare_seeds, holm, mcnemar

        cfg = self.config
        primary = [parse_contrast(c) for c in cfg.primary_contrasts()]
        others = [c for c in cfg.conditions if c not in ("student", "teacher", BASELINE)]
        pairs = primary + [(c, BASELINE) for c in others if (c, BASELINE) not in primary]
        rows = []
        for a, b in pairs:
            sa, sb = self._scores(task, a), self._scores(task, b)
            seeds = sorted(set(sa) & set(sb))
            if not seeds:
                continue
            role = "primary" if (a, b) in primary else "exploratory"
            if len(seeds) > 1:
                comp = compare_seeds(
                    {s: sa[s] for s in seeds}, {s: sb[s] for s in seeds}, LABELS[a], LABELS[b],
                    n_boot=n_boot,
                )  # fmt: skip
                d = comp.to_dict()
                row = {k: v for k, v in d.items() if k not in ("a", "b", "mdd")}
                row |= {"A": comp.a, "B": comp.b}
            else:
                (s,) = seeds
                diff = sum(sa[s]) / len(sa[s]) - sum(sb[s]) / len(sb[s])
                row = dict.fromkeys(("ci_low", "ci_high", "p_sign_flip", "p_t"), float("nan"))
                row |= {
                    "A": LABELS[a],
                    "B": LABELS[b],
                    "n_seeds": 1,
                    "mean_diff": diff,
                    "diffs": [diff],
                    "per_seed_mcnemar": [mcnemar(sa[s], sb[s]).p],
                }
            rows.append(
                row
                | {"task": task, "seeds": seeds, "condition": a, "contrast": f"{a} - {b}"}
                | {"role": role}
            )
        # Holm over the declared family: a contrast not yet tested over seeds counts as p = 1
        family = [r for r in rows if r["role"] == "primary" and r["n_seeds"] > 1]
        adjusted = holm([r["p_sign_flip"] for r in family] + [1.0] * (len(primary) - len(family)))
        for r in rows:
            r["p_holm"] = adjusted[family.index(r)] if r in family else float("nan")
            r |= {"power": self._power(r, len(primary)), "verdict": self._verdict(r)}
        return rows

    def _power(self, row: dict[str, Any], family: int) -> float:
        """The design's power at the effect of interest, at the row's seeds and the observed
        sd of its per-seed differences (Holm's first step for a primary contrast)."""
        from circuitlens.experiments.design import sign_flip_power

        if row["n_seeds"] < 2:
            return float("nan")
        d = self.config.design
        m = family if row["role"] == "primary" else 1
        sd = float(np.std(row["diffs"], ddof=1))
        return sign_flip_power(d.effect, sd, row["n_seeds"], m, d.alpha)

    def _verdict(self, row: dict[str, Any]) -> str:
        from circuitlens.experiments.design import ContrastEstimate, contrast_verdict

        a, b = row["A"], row["B"]
        if row["n_seeds"] < 2:
            return (f"{'' if row['role'] == 'primary' else '[exploratory] '}{a} \u2212 {b} = "
                    f"{signed(row['mean_diff'])} on the one seed both have (1 seed: no "
                    "seed-level test)")  # fmt: skip
        primary = row["role"] == "primary"
        estimate = ContrastEstimate(
            row["mean_diff"], row["ci_low"], row["ci_high"],
            row["p_holm"] if primary else row["p_sign_flip"], row["n_seeds"],
        )  # fmt: skip
        return contrast_verdict(a, b, estimate, self.config.design, primary)

    def markdown(self, table: Any = None, comparisons: Any = None) -> str:
        """The tables as Markdown, with what each column means; first the seed-level
        comparison of each condition with CE (:meth:`comparisons`, or ``comparisons`` where
        the caller has computed them: their bootstrap is the slow part), its verdicts leading."""
        df = self.table() if table is None else table
        if df.empty:
            return tables.NO_CELLS
        return tables.markdown(
            df,
            comparisons=self.comparisons() if comparisons is None else comparisons,
            formats=self.format_table(),
            mcnemar=self.mcnemar_table(),
            setups=self.setups,
            targets=self._targets(),
            design_note=self.design_note(),
        )

    def primary_paired_sds(self) -> list[tuple[str, float]]:
        """``(what, sd)`` per task and declared primary contrast with two seeds or more: the sd
        over seeds of the paired accuracy differences, what ``circuitlens plan --from`` plans
        the next design on.

        Raises:
            ValueError: the run declares no primary contrast, or none has two seeds yet.
        """
        primary = self.config.primary_contrasts()
        if not primary:
            raise ValueError(
                f"{self.directory}: the run declares no primary contrast (design.primary)"
            )
        comp = self.comparisons(n_boot=1)
        comp = comp[(comp.role == "primary") & (comp.n_seeds > 1)]
        sds = [
            (f"{t}: {c} ({n} seeds)", float(np.std(diffs, ddof=1)))
            for t, c, n, diffs in zip(
                comp.task, comp.contrast, comp.n_seeds, comp.diffs, strict=True
            )
        ]
        if not sds:
            raise ValueError(
                f"{self.directory}: no primary contrast ({', '.join(primary)}) has two seeds of "
                "both conditions yet: no paired sd to read"
            )
        return sds

    def design_note(self) -> str | None:
        """Why the run is exploratory, as said before it ran
        (:func:`~circuitlens.experiments.design.design_note`); None: its design can reject."""
        from circuitlens.experiments.design import design_note

        return design_note(self.config)

    def curves(self) -> Any:
        """Long table of the training curves: task, condition, seed, step, val accuracy/CKA
        (step 0 is the untrained student)."""
        return tables.curves(self.cells, self.setups)

    def write_tables(self) -> dict[str, Path]:
        """``table.md``, ``table.csv``, ``cells.csv``, ``comparisons.csv`` (:meth:`comparisons`),
        ``mcnemar.csv`` and ``cka.csv`` in the run's directory (the HTML page:
        :func:`circuitlens.report.page.write_report`)."""
        table = self.table()
        texts = {
            "table.md": self.markdown(table),
            "table.csv": table.to_csv(index=False),
            "cells.csv": self.cells_frame().to_csv(index=False),
            "comparisons.csv": self.comparisons().to_csv(index=False),
            "mcnemar.csv": self.mcnemar_table().to_csv(index=False),
            "cka.csv": self.cka_table().to_csv(index=False),
        }
        out = {}
        for name, text in texts.items():
            out[name] = self.directory / name
            atomic_write_text(out[name], text)
        return out
