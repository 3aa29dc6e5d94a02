"""A finished (or partial) experiment read back from disk: tables, curves, statistics.

The HTML page is presentation: :func:`circuitlens.report.write_report` reads this object.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from circuitlens.ablation import AblationResult
from circuitlens.conditions import BASELINE
from circuitlens.distill_setup import Setup
from circuitlens.experiments.cell import Cell, curve_points  # noqa: F401 (re-exported)
from circuitlens.experiments.config import LABELS, ExperimentConfig
from circuitlens.io import atomic_write_text, json_ready
from circuitlens.rundir import read_json
from circuitlens.types import Head

#: the columns of :meth:`ExperimentResult.comparisons`, in order
COMPARISON_COLUMNS = (
    "task", "A", "B", "n_seeds", "mean_diff", "ci_low", "ci_high", "p_sign_flip", "p_t",
    "p_holm", "mdd", "verdict", "per_seed_mcnemar", "seeds", "diffs", "condition",
)  # fmt: skip
#: the name of the pooled McNemar table: what it pools, and that it is no test of the seeds
MCNEMAR_POOLED = "McNemar (pooled prompts; not seed-level)"
#: its p-value column as the tables show it
MCNEMAR_P = "p (pooled prompts; not seed-level)"


@dataclass
class ExperimentResult:
    """A run's results, read back from its directory (complete or not).

    Attributes:
        directory: ``results/<run>``.
        config: the run's :class:`ExperimentConfig`.
        setups: per task, the :class:`~circuitlens.distill_setup.Setup` (circuit, sweeps,
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

    # -- tables ------------------------------------------------------------------------------
    def cells_frame(self) -> Any:
        """One row per (task, condition, seed), the untrained references included."""
        import pandas as pd

        rows = []
        targets = {t: self.target(t) for t in self.config.tasks}
        for t, setup in self.setups.items():
            for c in ("student", "teacher"):
                if c in self.config.conditions:
                    ref = setup.reference(c)
                    rows.append(
                        {
                            "task": t,
                            "condition": c,
                            "seed": None,
                            "accuracy": ref.accuracy,
                            "circuit_accuracy": ref.circuit_accuracy,
                        }
                        | {f"accuracy[{f}]": a for f, a in ref.format_accuracy.items()}
                    )
        rows += [_cell_row(cell, targets[cell.task]) for cell in self.cells]
        return pd.DataFrame(rows)

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
        import pandas as pd

        df = self.cells_frame()
        rows = []

        def mean_sd(x: Any) -> tuple[float, float]:
            x = pd.to_numeric(x, errors="coerce").dropna()
            if x.empty:
                return float("nan"), float("nan")
            return float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else float("nan")

        for t in self.config.tasks:
            ce = df[(df.task == t) & (df.condition == BASELINE)]["accuracy"]
            for c in self.config.conditions:
                sub = df[(df.task == t) & (df.condition == c)]
                if sub.empty:
                    continue
                acc = sub["accuracy"].astype(float)
                circ = mean_sd(sub["circuit_accuracy"]) if "circuit_accuracy" in sub else None
                row: dict[str, Any] = {
                    "task": t,
                    "condition": LABELS[c],
                    "accuracy_mean": acc.mean(),
                    "accuracy_std": acc.std(ddof=1) if len(acc) > 1 else float("nan"),
                    "circuit_accuracy_mean": circ[0] if circ else float("nan"),
                    "circuit_accuracy_std": circ[1] if circ else float("nan"),
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
                        "cka_after_std": mean_sd(sub["mean_cka_after"])[1],
                        "cka_null_mean": mean_sd(sub.get("cka_null_mean"))[0]
                        if "cka_null_mean" in sub
                        else float("nan"),
                        "cka_null_sd": mean_sd(sub.get("cka_null_sd"))[0]
                        if "cka_null_sd" in sub
                        else float("nan"),
                        "steps_to_target": reached.mean() if len(reached) else float("nan"),
                        "reached_target": f"{len(reached)}/{len(sub)}"
                        if self.target(t) is not None
                        else "",
                    }
                rows.append(row)
        return pd.DataFrame(rows)

    def format_table(self) -> Any:
        """Accuracy in every prompt format the task offers: task, condition, format, mean, sd,
        points against the same format's CE."""
        import pandas as pd

        df = self.cells_frame()
        cols = [c for c in df.columns if c.startswith("accuracy[")]
        rows = []
        for t in self.config.tasks:
            for c in self.config.conditions:
                sub = df[(df.task == t) & (df.condition == c)]
                for col in cols:
                    if sub.empty or sub[col].isna().all():
                        continue
                    x = sub[col].astype(float).dropna()
                    ce = df[(df.task == t) & (df.condition == BASELINE)][col].astype(float).dropna()
                    vs_ce = 100 * (x.mean() - ce.mean()) if len(ce) else float("nan")
                    rows.append(
                        {
                            "task": t,
                            "condition": LABELS[c],
                            "format": col[len("accuracy[") : -1],
                            "accuracy_mean": x.mean(),
                            "accuracy_std": x.std(ddof=1) if len(x) > 1 else float("nan"),
                            "points_vs_ce": vs_ce,
                        }
                    )
        return pd.DataFrame(rows)

    #: McNemar comparisons: (A, B), the method against each baseline and control
    COMPARISONS = (
        ("ce+align", "ce"),
        ("ce+align", "ce+rand"),
        ("ce+align", "ce+shuffled"),
        ("ce+align", "full-ce"),
    )

    def mcnemar_table(self) -> Any:
        """McNemar's exact test of CE + Align against each baseline, per task, on per-prompt
        test correctness pooled over the seeds both conditions have (:data:`MCNEMAR_POOLED`).

        The test prompts are the same in every seed, so with several seeds this counts each
        prompt once per seed and ignores the seed, the unit that varies training: it is not a
        valid test of the conditions (:meth:`comparisons` is). Kept for the record."""
        import pandas as pd

        from circuitlens.experiments.stats import mcnemar

        rows = []
        by = {(c.task, c.condition, c.seed): c for c in self.cells}
        for t in self.config.tasks:
            for a, b in self.COMPARISONS:
                seeds = [s for s in self.config.seeds if (t, a, s) in by and (t, b, s) in by]
                if not seeds:
                    continue
                xa = [v for s in seeds for v in by[(t, a, s)].test_correct]
                xb = [v for s in seeds for v in by[(t, b, s)].test_correct]
                m = mcnemar(xa, xb)
                rows.append(
                    {"task": t, "A": LABELS[a], "B": LABELS[b], "seeds": len(seeds)} | m.to_dict()
                )
        return pd.DataFrame(rows)

    def cka_table(self) -> Any:
        """Held-out CKA of every mapped pair after training, with its permutation null."""
        import pandas as pd

        rows = []
        for cell in self.cells:
            before, after = cell.cka_before, cell.cka_after
            columns = zip(
                cell.pairs,
                before.value.tolist(),
                after.value.tolist(),
                after.null_mean.tolist(),
                after.null_sd.tolist(),
                strict=True,
            )
            for (s, t), value_before, value, null_mean, null_sd in columns:
                rows.append(
                    {
                        "task": cell.task,
                        "condition": LABELS[cell.condition],
                        "seed": cell.seed,
                        "pair": f"{s} → {t}",
                        "cka_before": value_before,
                        "cka_after": value,
                        "null_mean": null_mean,
                        "null_sd": null_sd,
                        "n_perm": after.n_perm,
                        "estimator": after.estimator,
                    }
                )
        return pd.DataFrame(rows)

    def comparisons(self, n_boot: int = 2000) -> Any:
        """Each trained condition against CE with the seed as the unit, per task.

        For every task and every trained condition of the config (the baseline
        :data:`~circuitlens.conditions.BASELINE` and the untrained references excepted) that
        shares seeds with CE, :func:`~circuitlens.experiments.stats.compare_seeds` of its
        per-prompt test correctness (``test_correct`` of its cells) against CE's over those
        seeds; the sign-flip p's of a task are Holm-adjusted together
        (:func:`~circuitlens.experiments.stats.compare_family`). Only the cells are read, so
        every number can be recomputed from the run's ``cell.json`` files.

        Args:
            n_boot: replicates of the two-way (seeds x prompts) bootstrap interval (its seed is
                fixed: the same cells give the same table).

        Returns:
            A pandas frame, one row per comparison: ``task``, ``A``, ``B`` (labels),
            ``n_seeds``, ``mean_diff`` (mean over seeds of A's accuracy minus B's),
            ``ci_low``/``ci_high`` (95% interval), ``p_sign_flip`` (the primary p), ``p_t``,
            ``p_holm``, ``mdd`` (smallest difference detectable at 80% power), ``verdict`` (the
            sentence of :meth:`~circuitlens.experiments.stats.SeedComparison.verdict`), and
            per seed (sorted): ``per_seed_mcnemar`` (McNemar's exact p within the seed),
            ``seeds``, ``diffs``; ``condition`` is A's name. With one shared seed no
            seed-level test exists: the row has the seed's difference, NaN intervals and p's
            and a verdict saying so.
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
        """The rows of :meth:`comparisons` for one task (its Holm family)."""
        from circuitlens.experiments.stats import compare_family, compare_seeds, mcnemar

        base = self._scores(task, BASELINE)
        shared: list[tuple[str, list[int], dict[int, list[int]]]] = []
        for c in self.config.conditions:
            if c in ("student", "teacher", BASELINE):
                continue
            scores = self._scores(task, c)
            seeds = sorted(set(scores) & set(base))
            if seeds:
                shared.append((c, seeds, scores))
        tested = compare_family(
            [
                compare_seeds(
                    {s: a[s] for s in seeds},
                    {s: base[s] for s in seeds},
                    LABELS[c],
                    LABELS[BASELINE],
                    n_boot=n_boot,
                )
                for c, seeds, a in shared
                if len(seeds) > 1
            ]
        )
        rows, done = [], iter(tested)
        for c, seeds, a in shared:
            if len(seeds) > 1:
                comp = next(done)
                d = comp.to_dict()
                row = {k: v for k, v in d.items() if k not in ("a", "b")}
                row |= {"A": comp.a, "B": comp.b, "verdict": comp.verdict()}
            else:
                (s,) = seeds
                diff = sum(a[s]) / len(a[s]) - sum(base[s]) / len(base[s])
                nan = float("nan")
                row = dict.fromkeys(("ci_low", "ci_high", "p_sign_flip", "p_t", "p_holm"), nan)
                row |= {
                    "A": LABELS[c],
                    "B": LABELS[BASELINE],
                    "n_seeds": 1,
                    "mean_diff": diff,
                    "mdd": nan,
                    "diffs": [diff],
                    "per_seed_mcnemar": [mcnemar(a[s], base[s]).p],
                    "verdict": f"{LABELS[c]} \u2212 {LABELS[BASELINE]} = {_signed(diff)} on "
                    "the one seed both have (1 seed: no seed-level test)",
                }
            rows.append(row | {"task": task, "seeds": seeds, "condition": c})
        return rows

    def markdown(self, table: Any = None) -> str:
        """The tables as Markdown, with what each column means; first the seed-level
        comparison of each condition with CE (:meth:`comparisons`), its verdicts leading."""
        df = self.table() if table is None else table
        if df.empty:
            return "(no finished cells yet)\n"
        lines = self._comparisons_markdown()
        lines += [_main_markdown(df), ""]
        for t in self.config.tasks:
            target = self.target(t)
            if target is not None:
                lines.append(f"- {t}: convergence target (CE's final val accuracy) {target:.3f}")
        lines += self._formats_markdown()
        lines += self._mcnemar_markdown()
        lines += self._head_maps_markdown()
        return "\n".join(lines) + "\n"

    def _comparisons_markdown(self) -> list[str]:
        comp = self.comparisons()
        if comp.empty:
            return []
        lines = [
            f"Seed-level comparison with {LABELS[BASELINE]} (the seed is the unit: per seed, test "
            f"accuracy of A minus that of {LABELS[BASELINE]} on the same test prompts; 95% "
            "interval from a two-way seed x prompt bootstrap; p: exact sign-flip test over "
            "seeds, Holm-adjusted per task; MDD: the smallest difference a paired t-test over "
            "these seeds detects at 80% power):",
            "",
        ]
        for t, sub in comp.groupby("task", sort=False):
            lines.append(f"- {t}:")
            lines += [f"  - {v}" for v in sub.verdict]
        show = comp.assign(
            **{
                "mean diff": [_signed(x) for x in comp.mean_diff],
                "95% CI": [
                    _interval(lo, hi) for lo, hi in zip(comp.ci_low, comp.ci_high, strict=True)
                ],
                "p sign-flip": [_p(x) for x in comp.p_sign_flip],
                "p t-test": [_p(x) for x in comp.p_t],
                "p Holm": [_p(x) for x in comp.p_holm],
                "MDD": [_p(x) for x in comp.mdd],
                "per-seed McNemar p": [", ".join(map(_p, p)) for p in comp.per_seed_mcnemar],
            }
        )
        cols = ["task", "A", "B", "n_seeds", "mean diff", "95% CI", "p sign-flip", "p t-test"]
        cols += ["p Holm", "MDD", "per-seed McNemar p"]
        return [*lines, "", show[cols].to_markdown(index=False), ""]

    def _formats_markdown(self) -> list[str]:
        fmt = self.format_table()
        several = fmt.groupby("task")["format"].nunique() if not fmt.empty else None
        if several is not None:
            fmt = fmt[fmt.task.isin(several[several > 1].index)]  # one format: the main table
        if fmt.empty:
            return []
        wide = fmt.assign(
            acc=[
                _pm(m, s) + ("" if _isna(p) else f" ({p:+.1f})")
                for m, s, p in zip(
                    fmt.accuracy_mean, fmt.accuracy_std, fmt.points_vs_ce, strict=True
                )
            ]
        ).pivot_table(
            index=["task", "condition"],
            columns="format",
            values="acc",
            aggfunc="first",
            sort=False,
        )
        lines = ["", "Accuracy by prompt format (points vs CE in the same format):", ""]
        return [*lines, wide.fillna("").reset_index().to_markdown(index=False)]

    def _mcnemar_markdown(self) -> list[str]:
        mc = self.mcnemar_table()
        if mc.empty:
            return []
        lines = [
            "",
            f"{MCNEMAR_POOLED}: McNemar's exact test on each seed's test prompts concatenated "
            "(b: A right and B wrong; c: A wrong and B right). The test prompts are the same in "
            "every seed, so with several seeds each prompt counts once per seed and the seed, "
            "which varies training, is ignored: not a valid test of the conditions (the "
            "seed-level comparison above is).",
            "",
        ]
        mc = mc.assign(**{MCNEMAR_P: [f"{p:.3g}" for p in mc.p]})
        cols = ["task", "A", "B", "seeds", "n", "b", "c", MCNEMAR_P]
        return [*lines, mc[cols].to_markdown(index=False)]

    def _head_maps_markdown(self) -> list[str]:
        maps = []
        for t, setup in self.setups.items():
            hm, s_sweep, t_sweep = setup.head_map, setup.student_sweep, setup.teacher_sweep
            metric = hm.config.get("metric", "?")
            level = f"{100 * s_sweep.config.ci_level:g}%"
            maps.append(f"- {t} (P = {metric}; {level} bootstrap intervals over prompts):")
            for (s_, t_), d in zip(hm.pairs, hm.distances, strict=True):
                maps.append(
                    f"  - {s_} → {t_}: {_impact(s_sweep, 's', s_)}, "
                    f"{_impact(t_sweep, 't', t_)}, |ΔP_s − ΔP_t| = {d:.4f}"
                )
            for w in hm.config.get("warnings", []):
                maps.append(f"  - warning: {w}")
        return ["", "Head maps:", "", *maps] if maps else []

    def curves(self) -> Any:
        """Long table of the training curves: task, condition, seed, step, val accuracy/CKA
        (step 0 is the untrained student)."""
        import pandas as pd

        rows = []
        for cell in self.cells:
            setup = self.setups[cell.task]
            start = {"step": 0, "val_accuracy": setup.student_val_accuracy}
            if cell.mean_cka_before is not None:
                start["val_cka"] = cell.mean_cka_before
            for row in [start, *cell.curve]:
                rows.append(
                    {"task": cell.task, "condition": cell.condition, "seed": cell.seed} | row
                )
        return pd.DataFrame(rows)

    def write_tables(self) -> dict[str, Path]:
        """``table.md``, ``table.csv``, ``cells.csv``, ``comparisons.csv`` (:meth:`comparisons`),
        ``mcnemar.csv`` and ``cka.csv`` in the run's directory (the HTML page:
        :func:`circuitlens.report.write_report`)."""
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


def _cell_row(cell: Cell, target: float | None) -> dict[str, Any]:
    """A cell's row of :meth:`ExperimentResult.cells_frame`: its scalar measures (the
    mechanism check as its dict), the pairs as text, the accuracy per format, the CKA null
    and the steps to ``target``."""
    row: dict[str, Any] = {
        "task": cell.task,
        "condition": cell.condition,
        "seed": cell.seed,
        "accuracy": cell.accuracy,
        "circuit_accuracy": cell.circuit_accuracy,
        "mean_cka_before": cell.mean_cka_before,
        "mean_cka_after": cell.mean_cka_after,
        "heads_trained": cell.heads_trained,
        "head_fraction": cell.head_fraction,
        "param_fraction": cell.param_fraction,
        "steps": cell.steps,
        "final_loss": cell.final_loss,
        "seconds": cell.seconds,
        "resumed": cell.resumed,
    }
    if cell.mechanism is not None:
        row["mechanism"] = json_ready(cell.mechanism.to_dict())
    after = cell.cka_after
    return (
        row
        | {"pairs": " ".join(f"{s}->{t}" for s, t in cell.pairs)}
        | {f"accuracy[{f}]": a for f, a in cell.format_accuracy.items()}
        | {
            "cka_null_mean": _mean(after.null_mean.tolist()),
            "cka_null_sd": _mean(after.null_sd.tolist()),
            "steps_to_target": cell.steps_to(target),
        }
    )


def _mean(x: Any) -> float:
    if not x:
        return float("nan")
    return sum(x) / len(x)


def _isna(x: Any) -> bool:
    import pandas as pd

    return bool(pd.isna(x))


def _pct(x: Any) -> str:
    return "" if _isna(x) else f"{100 * x:.1f}%"


def _pm(m: Any, s: Any) -> str:
    return "" if _isna(m) else f"{m:.3f}" + ("" if _isna(s) else f" ± {s:.3f}")


def _signed(x: Any) -> str:
    """``+0.012`` / ``−0.004`` (a true minus sign), empty for a missing value."""
    return "" if _isna(x) else f"{x:+.3f}".replace("-", "\u2212")


def _interval(low: Any, high: Any) -> str:
    return "" if _isna(low) or _isna(high) else f"{_signed(low)} to {_signed(high)}"


def _p(x: Any) -> str:
    return "" if _isna(x) else f"{x:.2g}"


def _impact(sweep: AblationResult, side: str, head: Head | str) -> str:
    """``ΔP_s = 0.1234 [0.1, 0.2]``: a mapped head's impact, with its interval where exact."""
    h = Head.parse(head)
    d = f"ΔP_{side} = {float(sweep.delta[h.layer, h.head]):.4f}"
    if sweep.exact is not None and not bool(sweep.exact[h.layer, h.head]):
        return d + " (estimated)"
    if sweep.delta_ci is None:
        return d
    lo, hi = sweep.delta_ci[:, h.layer, h.head].tolist()
    if lo != lo or hi != hi:  # NaN: no interval
        return d
    return d + f" [{lo:.4f}, {hi:.4f}]"


def _main_markdown(df: Any) -> str:
    """The main table (:meth:`ExperimentResult.table`) as Markdown, mean ± sd columns."""
    show = df.copy()
    show["accuracy"] = [_pm(m, s) for m, s in zip(df.accuracy_mean, df.accuracy_std, strict=True)]
    show["circuit-only"] = [
        _pm(m, s) for m, s in zip(df.circuit_accuracy_mean, df.circuit_accuracy_std, strict=True)
    ]
    show["vs CE (points)"] = ["" if _isna(x) else f"{x:+.1f}" for x in df.points_vs_ce]
    cols = ["task", "condition", "accuracy", "circuit-only", "n_seeds", "vs CE (points)"]
    if "head_fraction" in df:
        show["heads trained"] = [_pct(x) for x in df.head_fraction]
        show["params trained"] = [_pct(x) for x in df.param_fraction]
        show["CKA before → after (null)"] = [
            ""
            if _isna(a) and _isna(b)
            else f"{a:.3f} → {b:.3f}" + ("" if _isna(nm) else f" ({nm:+.3f} ± {ns:.3f})")
            for a, b, nm, ns in zip(
                df.cka_before, df.cka_after, df.cka_null_mean, df.cka_null_sd, strict=True
            )
        ]
        show["steps to CE final"] = [
            "" if _isna(r) or not r else ("never" if _isna(s) else f"{s:.0f}") + f" ({r})"
            for s, r in zip(df.steps_to_target, df.reached_target, strict=True)
        ]
        cols += ["heads trained", "params trained", "CKA before → after (null)"]
        cols.append("steps to CE final")
    return show[cols].fillna("").to_markdown(index=False)
