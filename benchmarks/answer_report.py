"""The answer's page, from its committed runs: ``docs/results/answer.md``.

    python benchmarks/answer_report.py     # reads benchmarks/results/answer-<task>.json

Every number is recomputed from the exported per-seed cells with the design committed in each
run's config (``[design]``: the primary contrasts, alpha, the effect of interest). Until every
cell of a task's design is in, its section gives the progress, the learning rates chosen on
validation and the measured cell times, and no test-set number: the design's seeds are fixed
before the runs, and the verdict is read once, on all of them.
"""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path
from typing import Any

from export_run import load  # benchmarks/ (this script's folder, or pytest's pythonpath)

from circuitlens.core.io import atomic_write_text
from circuitlens.experiments import ExperimentConfig, ExperimentResult
from circuitlens.experiments.config import UNTRAINED
from circuitlens.experiments.lr_choice import LRChoice
from circuitlens.experiments.tables import curves

RESULTS = Path(__file__).resolve().parent / "results"
PAGE = Path(__file__).resolve().parents[1] / "docs" / "results" / "answer.md"
TASKS = ("entity-tracking", "theory-of-mind")
REGIME = (0.70, 0.85)  # the pilot's rule for CE's accuracy (benchmarks/answer_pilot.py)
ROLE_NOTES = {
    "primary": "the declared contrasts: p Holm-adjusted over them",
    "exploratory": "against CE, p unadjusted: not a test of the claim",
}


def _trained(cfg: ExperimentConfig) -> list[str]:
    return [c for c in cfg.conditions if c not in UNTRAINED]


def missing_cells(result: ExperimentResult) -> dict[str, list[int]]:
    """Per trained condition of the design, the seeds whose cell is not in yet."""
    cfg = result.config
    have = {(c.condition, int(c.seed)) for c in result.cells}
    return {
        c: [s for s in cfg.seeds if (c, s) not in have]
        for c in _trained(cfg)
        if any((c, s) not in have for s in cfg.seeds)
    }


def _minutes(xs: list[float]) -> str:
    if not xs:
        return "–"
    mean, median = statistics.mean(xs) / 60, statistics.median(xs) / 60
    return f"{mean:.1f} (median {median:.1f}, max {max(xs) / 60:.1f})"


def _lr_lines(doc: dict[str, Any], task: str) -> list[str]:
    """Each condition's grid (``lr.json``, kept in the export): validation accuracy and kept
    step at each point, and the lr chosen (… where a point is still to train)."""
    choices = [LRChoice.from_dict(c, d) for c, d in doc.get("lr_choices", {}).get(task, {}).items()]
    if not choices:
        return []
    grid = " / ".join(f"{g:g}" for g in choices[0].grid)
    lines = [
        f"| condition | val acc at {grid} (seed {choices[0].seed}) | chosen lr "
        "| kept step at each |",
        "|---|---|---|---|",
    ]
    for ch in choices:
        vals = " / ".join(
            f"{ch.val_accuracy[g]:.2f}" if g in ch.val_accuracy else "…" for g in ch.grid
        )
        kept = " / ".join(str(ch.kept_step.get(g, "…")) for g in ch.grid)
        lr = "…" if ch.lr is None else f"{ch.lr:g}"
        lines.append(f"| {ch.condition} | {vals} | {lr} | {kept} |")
    return [*lines, ""]


def _progress_lines(result: ExperimentResult) -> list[str]:
    cfg = result.config
    lines = ["| condition | cells in | cell minutes: mean (median, max) |", "|---|---|---|"]
    for c in _trained(cfg):
        secs = [cell.seconds for cell in result.cells if cell.condition == c]
        lines.append(f"| {c} | {len(secs)} of {len(cfg.seeds)} | {_minutes(secs)} |")
    return [*lines, ""]


def _curve_lines(result: ExperimentResult) -> list[str]:
    """Mean validation accuracy over seeds at each evaluation step, per condition (the run's
    curves, :func:`~circuitlens.experiments.tables.curves`; step 0 is the untrained student;
    cells counted in brackets: a cell that stopped earlier stops counting)."""
    df = curves(result.cells, result.setups)
    at = df.groupby(["condition", "step"]).val_accuracy.agg(["mean", "count"])
    steps = sorted(df.step.unique())
    lines = ["| condition | " + " | ".join(str(s) for s in steps) + " |"]
    lines.append("|---|" + "---|" * len(steps))
    for c in _trained(result.config):
        row = [
            f"{at.loc[(c, s), 'mean']:.3f} ({at.loc[(c, s), 'count']})"
            if (c, s) in at.index
            else ""
            for s in steps
        ]
        lines.append(f"| {c} | " + " | ".join(row) + " |")
    return [*lines, ""]


def _verdict_lines(comp: Any, design: Any) -> list[str]:
    """The seed-level comparisons (``ExperimentResult.comparisons``) as one table per role,
    with whether 0 and the paper's +0.05 lie inside each interval (their verdict sentences
    lead the run's tables below)."""
    lines = []
    for role in ("primary", "exploratory"):
        sub = comp[comp.role == role]
        if sub.empty:
            continue
        lines += [f"**{role.capitalize()}** ({ROLE_NOTES[role]}):", ""]
        lines.append(
            "| contrast | seeds | mean diff | 95% CI | p sign-flip | p Holm | 0 inside | "
            f"+0.05 inside | power at +{design.effect:g} |"
        )
        lines.append("|---|---|---|---|---|---|---|---|---|")
        for r in sub.itertuples():
            lines.append(
                f"| {r.contrast} | {r.n_seeds} | {r.mean_diff:+.3f} | "
                f"[{r.ci_low:+.3f}, {r.ci_high:+.3f}] | "
                f"{r.p_sign_flip:.3g} | {'' if math.isnan(r.p_holm) else f'{r.p_holm:.3g}'} | "
                f"{'yes' if r.ci_low <= 0 <= r.ci_high else 'no'} | "
                f"{'yes' if r.ci_low <= 0.05 <= r.ci_high else 'no'} | {r.power:.2f} |"
            )
        lines.append("")
    return lines


def task_section(name: str, doc: dict[str, Any], result: ExperimentResult) -> list[str]:
    cfg = result.config
    (task,) = cfg.tasks
    setup = result.setups[task]
    missing = missing_cells(result)
    n_cells = len(_trained(cfg)) * len(cfg.seeds)
    n_in = n_cells - sum(len(v) for v in missing.values())
    design, primary = cfg.design, cfg.primary_contrasts()
    lines = [
        f"## {task}",
        "",
        f"Design (`configs/answer/{name}.toml`, committed before its first confirmatory cell): "
        f"{len(cfg.seeds)} seeds, conditions {', '.join(_trained(cfg))}; primary "
        f"{' and '.join(primary)}, Holm over the {len(primary)}, alpha "
        f"{design.alpha:g}, effect of interest +{design.effect:g}; {cfg.distill.test_n} test "
        "prompts, disjoint from the probe prompts that chose the heads.",
        "",
        f"Untrained: student {setup.student_accuracy:.3f}, teacher {setup.teacher_accuracy:.3f} "
        f"(test). Setup {doc['setup_seconds'][task] / 60:.1f} min. Map "
        f"(`{setup.head_map.kind}`): "
        + ", ".join(f"{s}→{t}" for s, t in setup.head_map.pairs)
        + ".",
        "",
        "Learning rate per condition, chosen on validation at the first seed:",
        "",
        *_lr_lines(doc, task),
        f"Cells in: {n_in} of {n_cells}.",
        "",
        *_progress_lines(result),
        "A cell's minutes are its wall time on one core of a 2-core machine running both tasks: "
        "a seed's first cell includes the teacher's pass over that seed's step batches; a "
        "resumed cell counts its last part only (the first seed's cells resume from the lr "
        "grid's trial at the chosen lr, so theirs is the measurement alone); a cell that ran "
        "while the runs were paused counts the pause.",
        "",
    ]
    if missing:
        lines += [
            "**In progress: no test-set number is shown until every cell of the design is "
            "in** (the seeds were fixed before the runs; the verdict is read once, on all of "
            "them).",
            "",
        ]
        return lines
    ce_mean = statistics.mean(c.accuracy for c in result.cells if c.condition == "ce")
    inside = REGIME[0] <= ce_mean <= REGIME[1]
    comp = result.comparisons()  # the bootstrap, once for both tables
    lines += [
        *_verdict_lines(comp, design),
        f"CE's mean test accuracy {ce_mean:.3f}: {'inside' if inside else 'outside'} the "
        f"regime the pilot chose ({REGIME[0]:.2f}–{REGIME[1]:.2f}).",
        "",
        "Learning curves: mean validation accuracy over seeds at each evaluation (cells "
        "counted in brackets; a cell stops after 3 evaluations without a gain):",
        "",
        *_curve_lines(result),
        "The run's tables, as `circuitlens run` writes them (per condition: test accuracy, lr, "
        "kept step, CKA; the verdicts):",
        "",
        result.markdown(comparisons=comp),
    ]
    return lines


def page(names: tuple[str, ...] = TASKS, directory: Path = RESULTS) -> str:
    lines = [
        "# The answer on the real same-family pairs",
        "",
        "Written by `python benchmarks/answer_report.py` from "
        "`benchmarks/results/answer-<task>.json` "
        "(the exported per-seed cells, with the design each run's config carries). "
        "The design, the pilot and the run procedure: "
        "[docs/real_models.md](../real_models.md#the-answer-a-design-written-before-its-runs).",
        "",
    ]
    for name in names:
        doc, result = load(f"answer-{name}", directory)
        lines += task_section(name, doc, result)
    return "\n".join(lines).rstrip() + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=PAGE)
    args = ap.parse_args()
    atomic_write_text(args.out, page())
    print(args.out)


if __name__ == "__main__":
    main()
