"""A run's tables, built from its cells and setups: the frames and their Markdown.

Pure functions over :class:`~circuitlens.experiments.cell.Cell` lists, setups and frames;
:class:`~circuitlens.experiments.result.ExperimentResult` calls them (``table()``,
``markdown()``, ...) with what it read from disk, so nothing here reads a run directory.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from circuitlens.ablation.result import AblationResult
from circuitlens.core.io import json_ready
from circuitlens.core.types import Head
from circuitlens.distill.conditions import BASELINE
from circuitlens.distill.setup import Setup
from circuitlens.experiments.cell import Cell
from circuitlens.experiments.config import LABELS

#: the name of the pooled McNemar table: what it pools, and that it is no test of the seeds
MCNEMAR_POOLED = "McNemar (pooled prompts; not seed-level)"
#: its p-value column as the tables show it
MCNEMAR_P = "p (pooled prompts; not seed-level)"
#: McNemar comparisons: (A, B), the method against each baseline and control
MCNEMAR_COMPARISONS = (
    ("ce+align", "ce"),
    ("ce+align", "ce+rand"),
    ("ce+align", "ce+shuffled"),
    ("ce+align", "full-ce"),
)
#: what :func:`markdown` says of a run with no finished cell
NO_CELLS = "(no finished cells yet)\n"


# -- frames ----------------------------------------------------------------------------------
def cells_frame(
    cells: Sequence[Cell],
    setups: dict[str, Setup],
    conditions: Sequence[str],
    targets: dict[str, float | None],
) -> Any:
    """One row per (task, condition, seed), the untrained references (of ``conditions``)
    first; ``targets``: per task, the accuracy the steps to target are counted to."""
    import pandas as pd

    rows = []
    for t, setup in setups.items():
        for c in ("student", "teacher"):
            if c in conditions:
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
    rows += [_cell_row(cell, targets[cell.task]) for cell in cells]
    return pd.DataFrame(rows)


def _mean_sd(x: Any) -> tuple[float, float]:
    import pandas as pd

    x = pd.to_numeric(x, errors="coerce").dropna()
    if x.empty:
        return float("nan"), float("nan")
    return float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else float("nan")


def main_table(
    df: Any, tasks: Sequence[str], conditions: Sequence[str], targets: dict[str, float | None]
) -> Any:
    """The paper's table from :func:`cells_frame` ``df``: per task and condition, mean and sd
    over seeds."""
    import pandas as pd

    rows = []
    for t in tasks:
        ce = df[(df.task == t) & (df.condition == BASELINE)]["accuracy"]
        for c in conditions:
            sub = df[(df.task == t) & (df.condition == c)]
            if sub.empty:
                continue
            acc = sub["accuracy"].astype(float)
            circ = _mean_sd(sub["circuit_accuracy"]) if "circuit_accuracy" in sub else None
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
                row |= _trained_columns(sub, targets[t] is not None)
            rows.append(row)
    return pd.DataFrame(rows)


def _trained_columns(sub: Any, has_target: bool) -> dict[str, Any]:
    """A trained condition's extra columns of :func:`main_table` (``sub``: its cells)."""
    reached = sub["steps_to_target"].dropna()
    return {
        "head_fraction": sub["head_fraction"].mean(),
        "param_fraction": sub["param_fraction"].mean(),
        "cka_before": sub["mean_cka_before"].astype(float).mean(),
        "cka_after": sub["mean_cka_after"].astype(float).mean(),
        "cka_after_std": _mean_sd(sub["mean_cka_after"])[1],
        "cka_null_mean": _mean_sd(sub.get("cka_null_mean"))[0]
        if "cka_null_mean" in sub
        else float("nan"),
        "cka_null_sd": _mean_sd(sub.get("cka_null_sd"))[0]
        if "cka_null_sd" in sub
        else float("nan"),
        "steps_to_target": reached.mean() if len(reached) else float("nan"),
        "reached_target": f"{len(reached)}/{len(sub)}" if has_target else "",
    } | _fair_training_columns(sub)


def _fair_training_columns(sub: Any) -> dict[str, Any]:
    """How a trained condition was trained and learned (``sub``: its cells): its learning
    rate (one per condition when chosen on a grid: the mean otherwise), the mean kept step,
    and the area under the validation-accuracy curve (:attr:`Cell.val_auc`), mean and sd over
    seeds; NaN where the cells do not record them (written before they were)."""
    auc = _mean_sd(sub["val_auc"]) if "val_auc" in sub else (float("nan"), float("nan"))
    return {
        "lr": _mean_sd(sub["lr"])[0] if "lr" in sub else float("nan"),
        "kept_step": _mean_sd(sub["kept_step"])[0] if "kept_step" in sub else float("nan"),
        "val_auc_mean": auc[0],
        "val_auc_std": auc[1],
    }


def format_table(df: Any, tasks: Sequence[str], conditions: Sequence[str]) -> Any:
    """Accuracy in every prompt format of :func:`cells_frame` ``df``: task, condition, format,
    mean, sd, points against the same format's CE."""
    import pandas as pd

    cols = [c for c in df.columns if c.startswith("accuracy[")]
    rows = []
    for t in tasks:
        for c in conditions:
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


def mcnemar_table(
    cells: Sequence[Cell],
    tasks: Sequence[str],
    seeds: Sequence[int],
    comparisons: Iterable[tuple[str, str]] = MCNEMAR_COMPARISONS,
) -> Any:
    """McNemar's exact test of each (A, B) of ``comparisons``, per task, on per-prompt test
    correctness pooled over the seeds both conditions have (:data:`MCNEMAR_POOLED`: no valid
    test of the conditions, see :meth:`ExperimentResult.mcnemar_table`)."""
    import pandas as pd

    from circuitlens.experiments.stats import mcnemar

    rows = []
    by = {(c.task, c.condition, c.seed): c for c in cells}
    for t in tasks:
        for a, b in comparisons:
            shared = [s for s in seeds if (t, a, s) in by and (t, b, s) in by]
            if not shared:
                continue
            xa = [v for s in shared for v in by[(t, a, s)].test_correct]
            xb = [v for s in shared for v in by[(t, b, s)].test_correct]
            m = mcnemar(xa, xb)
            rows.append(
                {"task": t, "A": LABELS[a], "B": LABELS[b], "seeds": len(shared)} | m.to_dict()
            )
    return pd.DataFrame(rows)


def cka_table(cells: Sequence[Cell]) -> Any:
    """Held-out CKA of every mapped pair after training, with its permutation null."""
    import pandas as pd

    rows = []
    for cell in cells:
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


def curves(cells: Sequence[Cell], setups: dict[str, Setup]) -> Any:
    """Long table of the training curves: task, condition, seed, step, val accuracy/CKA
    (step 0 is the untrained student)."""
    import pandas as pd

    rows = []
    for cell in cells:
        setup = setups[cell.task]
        start = {"step": 0, "val_accuracy": setup.student_val_accuracy}
        if cell.mean_cka_before is not None:
            start["val_cka"] = cell.mean_cka_before
        for row in [start, *cell.curve]:
            rows.append({"task": cell.task, "condition": cell.condition, "seed": cell.seed} | row)
    return pd.DataFrame(rows)


def _cell_row(cell: Cell, target: float | None) -> dict[str, Any]:
    """A cell's row of :func:`cells_frame`: its scalar measures (the mechanism check as its
    dict), the pairs as text, the accuracy per format, the CKA null and the steps to
    ``target``."""
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
            "lr": cell.lr,
            "kept_step": cell.kept_step,
            "val_auc": cell.val_auc,
        }
    )


# -- Markdown --------------------------------------------------------------------------------
def markdown(
    table: Any,
    *,
    comparisons: Any,
    formats: Any,
    mcnemar: Any,
    setups: dict[str, Setup],
    targets: dict[str, float | None],
    design_note: str | None = None,
) -> str:
    """The tables as Markdown, with what each column means; first the seed-level
    comparisons (``comparisons``), their verdicts leading.

    Args:
        table: :func:`main_table`; empty: :data:`NO_CELLS`.
        comparisons: :meth:`ExperimentResult.comparisons`.
        formats: :func:`format_table`.
        mcnemar: :func:`mcnemar_table`.
        setups: per task, its setup (the head maps).
        targets: per task of the run, in order, its convergence target (None: none).
        design_note: why the run is exploratory
            (:func:`~circuitlens.experiments.design.design_note`), said first; None: its
            design can reject.
    """
    if table.empty:
        return NO_CELLS
    lines = _comparisons_markdown(comparisons, design_note)
    lines += [_main_markdown(table), ""]
    for t, target in targets.items():
        if target is not None:
            lines.append(f"- {t}: convergence target (CE's final val accuracy) {target:.3f}")
    if "val_auc_mean" in table and table.val_auc_mean.notna().any():
        lines.append(
            "- val AUC: the area under the validation-accuracy curve over the steps trained, "
            "divided by them (the mean validation accuracy while training); lr: the "
            "condition's learning rate; kept step: the step whose weights were measured"
        )
    lines += _formats_markdown(formats)
    lines += _mcnemar_markdown(mcnemar)
    lines += _head_maps_markdown(setups)
    return "\n".join(lines) + "\n"


def _comparisons_markdown(comp: Any, design_note: str | None = None) -> list[str]:
    lines = [f"**Exploratory run.** {design_note}", ""] if design_note else []
    if comp.empty:
        return lines
    lines += [
        "Seed-level comparisons (the seed is the unit: per seed, test accuracy of A minus that "
        "of B on the same test prompts; interval: 95%, from a two-way seed x prompt bootstrap; "
        "p: exact sign-flip test over seeds, Holm-adjusted over the declared primary contrasts "
        "of a task (p Holm), unadjusted for the exploratory rows; power: the test's power at "
        "the design's effect of interest, at these seeds and the observed sd of the per-seed "
        "differences):",
        "",
    ]
    for t, sub in comp.groupby("task", sort=False):
        lines.append(f"- {t}:")
        lines += [f"  - {v}" for v in sub.verdict]
    show = comp.assign(
        **{
            "mean diff": [signed(x) for x in comp.mean_diff],
            "95% CI": [_interval(lo, hi) for lo, hi in zip(comp.ci_low, comp.ci_high, strict=True)],
            "p sign-flip": [_p(x) for x in comp.p_sign_flip],
            "p t-test": [_p(x) for x in comp.p_t],
            "p Holm": [_p(x) for x in comp.p_holm],
            "power": [_p(x) for x in comp.power],
            "per-seed McNemar p": [", ".join(map(_p, p)) for p in comp.per_seed_mcnemar],
        }
    )
    cols = ["task", "A", "B", "role", "n_seeds", "mean diff", "95% CI", "p sign-flip"]
    cols += ["p t-test", "p Holm", "power", "per-seed McNemar p"]
    return [*lines, "", show[cols].to_markdown(index=False), ""]


def _formats_markdown(fmt: Any) -> list[str]:
    several = fmt.groupby("task")["format"].nunique() if not fmt.empty else None
    if several is not None:
        fmt = fmt[fmt.task.isin(several[several > 1].index)]  # one format: the main table
    if fmt.empty:
        return []
    wide = fmt.assign(
        acc=[
            _pm(m, s) + ("" if _isna(p) else f" ({p:+.1f})")
            for m, s, p in zip(fmt.accuracy_mean, fmt.accuracy_std, fmt.points_vs_ce, strict=True)
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


def _mcnemar_markdown(mc: Any) -> list[str]:
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


def _head_maps_markdown(setups: dict[str, Setup]) -> list[str]:
    maps = []
    for t, setup in setups.items():
        hm, s_sweep, t_sweep = setup.head_map, setup.student_sweep, setup.teacher_sweep
        metric = hm.config.get("metric", "?")
        level = f"{100 * s_sweep.config.ci_level:g}%"
        maps.append(f"- {t} (P = {metric}; {level} bootstrap intervals over prompts):")
        for (s_, t_), d in zip(hm.pairs, hm.distances, strict=True):
            maps.append(
                f"  - {s_} → {t_}: {_impact(s_sweep, 's', s_)}, "
                f"{_impact(t_sweep, 't', t_)}, {hm.distance_label} = {d:.4f}"
            )
        for w in hm.config.get("warnings", []):
            maps.append(f"  - warning: {w}")
    return ["", "Head maps:", "", *maps] if maps else []


def _main_markdown(df: Any) -> str:
    """The main table (:func:`main_table`) as Markdown, mean ± sd columns."""
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
        cols += _fair_training_markdown(df, show)
    return show[cols].fillna("").to_markdown(index=False)


def _fair_training_markdown(df: Any, show: Any) -> list[str]:
    """The main table's learning-curve columns, where any cell records them: ``val AUC``
    (mean ± sd of :attr:`Cell.val_auc`), ``lr`` and ``kept step``; their names in ``show``."""
    cols = []
    if "val_auc_mean" in df and df.val_auc_mean.notna().any():
        show["val AUC"] = [_pm(m, s) for m, s in zip(df.val_auc_mean, df.val_auc_std, strict=True)]
        cols.append("val AUC")
    if "lr" in df and df.lr.notna().any():
        show["lr"] = ["" if _isna(x) else f"{x:.3g}" for x in df.lr]
        show["kept step"] = ["" if _isna(x) else f"{x:.0f}" for x in df.kept_step]
        cols += ["lr", "kept step"]
    return cols


# -- cell formatting -------------------------------------------------------------------------
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


def signed(x: Any) -> str:
    """``+0.012`` / ``−0.004`` (a true minus sign), empty for a missing value."""
    return "" if _isna(x) else f"{x:+.3f}".replace("-", "\u2212")


def _interval(low: Any, high: Any) -> str:
    return "" if _isna(low) or _isna(high) else f"{signed(low)} to {signed(high)}"


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
