"""The HTML report of an experiment: presentation only, built from an ExperimentResult.

One page, ``report.html``, and plotly.js beside it (``plotly.min.js``, one copy per directory:
a page stays small, and opens from disk with no network). It leads with the answer: after the
title, per task a forest plot of each trained condition's paired difference in test accuracy
to CE (the seed as the unit) and under it each comparison's verdict sentence (a run whose
design cannot reject is labelled exploratory there, with why). Then the run
(models, tasks, conditions, seeds, training options, circuitlens version); the paper's table
with mean ± sd and no empty cells (narrow enough for a 1200 px window); the seed-level
comparisons, the accuracy per prompt format, the pooled McNemar table (labelled as no test of
the seeds) and the CKA of each pair; then per task the teacher's circuit as a labelled layer x
head grid, the head mapping as a student -> teacher diagram (the aligned map, and each seed's
random control) with each pair's impacts and their bootstrap intervals, the mean-ablation
heatmaps and the training curves. Every section has an ``id`` (``summary``, ``answer``,
``run``, ``results-table``, ``seed-comparisons``, ``formats-table``, ``mcnemar-table``,
``cka-table``, ``<task>-circuit``, ``<task>-mapping``, ``<task>-ablation``,
``<task>-curves``; the forest plot's figure is ``<task>-forest-figure``) so that tests and
links can find it.

The page reads a result; nothing that computes one writes it. From a notebook::

    result = cl.run_experiment(config, "results/mine")   # or ExperimentResult.load(directory)
    cl.write_report(result)                              # -> results/mine/report.html
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from circuitlens.core.io import atomic_write_bytes, atomic_write_text
from circuitlens.core.version import __version__
from circuitlens.distill.conditions import BASELINE, LABELS, get_condition
from circuitlens.distill.setup import Setup
from circuitlens.experiments.result import MCNEMAR_P, MCNEMAR_POOLED, ExperimentResult
from circuitlens.report.figures import (
    plot_ablation,
    plot_forest,
    plot_learning_curves,
    plot_training_curves,
)
from circuitlens.report.html import (
    DASH,
    auto_num,
    circuit_grid_html,
    esc,
    is_missing,
    mapping_svg,
    num,
    pairs_table_html,
    table_html,
)

#: the file of plotly.js that a page loads from its own directory (:func:`write_plotly_js`)
PLOTLY_JS = "plotly.min.js"

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 1100px; color: #222; line-height: 1.45; padding: 0 1rem; }
h1 { margin-bottom: .2rem; } h2 { border-bottom: 2px solid #ddd; padding-bottom: .2rem;
       margin-top: 2.5rem; } h3 { margin-top: 1.8rem; }
table.data { border-collapse: collapse; margin: .8rem 0; font-size: .88rem; }
table.data th, table.data td { border-bottom: 1px solid #e3e3e3; padding: .3rem .5rem;
       text-align: right; white-space: nowrap; }
table.data th { background: #f4f6f8; text-align: center; white-space: normal;
       vertical-align: bottom; }
.scroll { overflow-x: auto; }
table.data td.text { text-align: left; white-space: normal; }
table.data tr.reference td { color: #555; font-style: italic; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: .15rem 1rem; }
dl.meta dt { font-weight: 600; } dl.meta dd { margin: 0; }
table.grid { border-collapse: separate; border-spacing: 3px; font-size: .8rem; }
table.grid td { width: 3.2rem; height: 2rem; text-align: center; border-radius: 4px;
       background: #eef0f2; color: #889; }
table.grid td.member { color: white; font-weight: 700; }
table.grid th { font-weight: 500; color: #555; padding: 0 .3rem; }
.legend span.swatch { display: inline-block; width: .9rem; height: .9rem; border-radius: 3px;
       vertical-align: middle; margin-right: .3rem; }
.legend li { list-style: none; margin: .15rem 0; } .legend { padding-left: 0; }
.note { color: #666; font-size: .9rem; }
.exploratory { background: #fff4e0; border-left: 4px solid #E69F00; padding: .4rem .6rem; }
"""


def _meta_html(result: ExperimentResult) -> str:
    cfg = result.config
    d = cfg.distill
    t = d.train
    items = [
        ("run", f"<code>{esc(result.directory)}</code> (config in <code>config.json</code>)"),
        ("tasks", esc(", ".join(x.replace("_", " ") for x in cfg.tasks))),
        ("conditions", esc(", ".join(cfg.conditions))),
        ("seeds", esc(", ".join(map(str, cfg.seeds))) + f" (task seed {cfg.task_seed})"),
        (
            "training",
            esc(
                f"{t.steps} steps, batch {t.batch_size}, lr {t.lr:g}, λ = {t.lam:g} "
                f"({t.cka} CKA at {t.positions}), budget {d.map.budget} of the student's heads"
            ),
        ),
        ("evaluation", esc(f"{d.test_n} test prompts; sweeps on {d.sweep.n}")),
        ("circuitlens", esc(__version__)),
        ("generated", esc(time.strftime("%Y-%m-%d %H:%M %Z"))),
    ]
    models = ["<table class='data'><thead><tr><th>task</th><th>teacher</th><th>student</th>"]
    models.append("<th>teacher L×H (K/V)</th><th>student L×H (K/V)</th></tr></thead><tbody>")
    for task in cfg.tasks:
        m = cfg.models[task]
        setup = result.setups.get(task)

        def shape(s: tuple[int, ...] | None) -> str:
            return DASH if not s else f"{s[0]}×{s[1]} ({s[2]})"

        models.append(
            f"<tr><td class=text>{esc(task.replace('_', ' '))}</td>"
            f"<td class=text><code>{esc(m['teacher'])}</code></td>"
            f"<td class=text><code>{esc(m['student'])}</code></td>"
            f"<td>{shape(None if setup is None else setup.teacher_shape)}</td>"
            f"<td>{shape(None if setup is None else setup.student_shape)}</td></tr>"
        )
    models.append("</tbody></table>")
    dl = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items)
    return f"<dl class='meta'>{dl}</dl>{''.join(models)}"


def write_plotly_js(directory: Path | str) -> Path:
    """Write :data:`PLOTLY_JS` (the installed plotly's bundle) into ``directory``, atomically,
    unless the same file is there already: every report of a directory loads this one copy.

    Returns:
        The path of the file.
    """
    import plotly.offline

    out = Path(directory) / PLOTLY_JS
    js = plotly.offline.get_plotlyjs().encode("utf-8")
    if not out.is_file() or out.stat().st_size != len(js) or out.read_bytes() != js:
        atomic_write_bytes(out, js)
    return out


def write_report(result: ExperimentResult, path: Path | str | None = None) -> Path:
    """Write the report page of ``result`` (default: ``report.html`` in its run directory) and
    :data:`PLOTLY_JS` beside it (the page loads it by that relative name: it opens from disk
    with no network; keep the two together when copying it).

    Returns:
        The path written (atomically: a reader never sees half a page).
    """
    out = Path(path) if path is not None else result.directory / "report.html"
    write_plotly_js(out.parent)
    atomic_write_text(out, render_report(result))
    return out


def _figure(fig: Any, div_id: str) -> str:
    """A figure's ``<div>`` and its script; plotly.js itself is loaded once, in the head."""
    return fig.to_html(
        full_html=False,
        include_plotlyjs=False,
        div_id=div_id,
        config={"displaylogo": False, "responsive": True},
    )


def render_report(result: ExperimentResult, table: Any = None) -> str:
    """The report page of an :class:`~circuitlens.experiments.ExperimentResult` as HTML
    (``table``: its :meth:`~circuitlens.experiments.ExperimentResult.table`, if already made).
    The page loads :data:`PLOTLY_JS` from its own directory (:func:`write_plotly_js`).

    It leads with the answer: per task the forest plot of each condition against CE and the
    verdict of each comparison (:func:`answer_html`), before any table; then the run, the
    results table, the seed-level comparisons and the other tables, and each task's details."""
    if table is None:
        table = result.table()
    comparisons = result.comparisons()
    title = "Circuit distillation: " + ", ".join(t.replace("_", " ") for t in result.config.tasks)
    parts = [
        f"<header id='summary'><h1>{esc(title)}</h1>",
        "<p class='note'>Teacher circuit → head mapping by mean-ablation impact → training of "
        "the mapped student heads (Wadhwa, Amir, Wallace 2025).</p></header>",
        answer_html(result, comparisons),
        f"<section id='run'><h2>The run</h2>{_meta_html(result)}</section>",
        "<section id='results-table'><h2>Results</h2>",
        "<p class='note'>First-token accuracy on held-out test prompts, mean ± sd over "
        "seeds; the student before training and the teacher are references (italic). "
        "“vs CE” is in accuracy points.</p>",
        table_html(results_display(table)),
    ]
    targets = [
        f"{t.replace('_', ' ')}: {result.target(t):.3f}"
        for t in result.config.tasks
        if result.target(t) is not None
    ]
    if targets:
        parts.append(
            "<p class='note'>“Steps to target”: the first evaluation whose validation accuracy "
            f"reaches the target ({esc('; '.join(targets))}).</p>"
        )
    parts.append("</section>")
    parts += _extra_tables(result, comparisons)
    for task, setup in result.setups.items():
        parts.extend(_task_section(result, task, setup))
    body = "\n".join(parts)
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{esc(title)}</title><style>{CSS}</style>"
        "<script>window.PlotlyConfig = {MathJaxConfig: 'local'};</script>"
        f'<script src="{PLOTLY_JS}"></script></head>'
        f"<body>{body}</body></html>\n"
    )


def answer_html(result: ExperimentResult, comparisons: Any) -> str:
    """The page's first section (``id='answer'``): per task the forest plot of each condition's
    paired difference to CE and, under it, each comparison's verdict sentence.

    Args:
        result: the experiment.
        comparisons: its :meth:`~circuitlens.experiments.ExperimentResult.comparisons`.
    """
    ce = LABELS[BASELINE]
    note = result.design_note()
    out = [
        f"<section id='answer'><h2>The answer: each condition against {esc(ce)}</h2>",
        f"<p class='exploratory'><b>Exploratory run.</b> {esc(note)}</p>" if note else "",
        "<p class='note'>The seed is the unit: per seed, the test accuracy of A minus that of "
        f"B ({esc(ce)} unless named) on the same test prompts (dots); the diamond is their "
        "mean, the line its 95% interval from a two-way bootstrap over seeds and prompts; p is "
        "the exact sign-flip test over seeds, Holm-adjusted over the declared primary "
        "contrasts of a task (p_Holm), unadjusted for the rows marked exploratory. Each verdict "
        "says whether the interval holds 0 and the design's effect of interest "
        f"({result.config.design.effect:+g}).</p>",
    ]
    for task in result.config.tasks:
        name = task.replace("_", " ")
        comp = comparisons[comparisons.task == task]
        out.append(f"<div class='answer' id='{esc(task)}-answer'><h3>{esc(name)}</h3>")
        if comp.empty:
            out.append(f"<p class='note'>No trained condition shares a seed with {esc(ce)} "
                       "yet: nothing to compare.</p></div>")  # fmt: skip
            continue
        fig = plot_forest(result, task, comparisons=comparisons, title=f"{name}: against {ce}")
        out.append(_figure(fig, f"{task}-forest-figure"))
        out.append("<ul class='verdicts'>")
        out += [f"<li>{esc(v)}</li>" for v in comp.verdict]
        out.append("</ul></div>")
    out.append("</section>")
    return "".join(out)


def _percent(x: Any) -> str:
    """``12.5%``; the whole model ``100%`` (one decimal there adds width and nothing else)."""
    return "100%" if float(x) == 1 else f"{100 * float(x):.1f}%"


def results_display(table: Any) -> Any:
    """The results table (:meth:`~circuitlens.experiments.ExperimentResult.table`) as the page
    shows it, narrow enough for the page: the fractions of heads and parameters trained in one
    column (``trained``), CKA before and after in one (``cka``), the steps to the target with
    how many seeds reach it in another (``steps``)."""
    show = table.copy()
    if "head_fraction" in show:
        show.insert(
            list(show.columns).index("head_fraction"),
            "trained",
            [
                DASH if is_missing(h) else f"{_percent(h)} / {_percent(p)}"
                for h, p in zip(show.head_fraction, show.param_fraction, strict=True)
            ],
        )
        show = show.drop(columns=["head_fraction", "param_fraction"])
    if "cka_after" in show:

        def cka(before: Any, after: Any, sd: Any) -> str:
            if is_missing(after):
                return DASH
            start = "" if is_missing(before) else f"{num(before)} → "
            return start + num(after) + ("" if is_missing(sd) else f" ± {float(sd):.3f}")

        show["cka_after"] = [
            cka(b, a, s)
            for b, a, s in zip(show.cka_before, show.cka_after, show.cka_after_std, strict=True)
        ]
        show = show.drop(columns=["cka_before", "cka_after_std"])
        show = show.rename(columns={"cka_after": "cka"})
    if "steps_to_target" in show:

        def steps(s: Any, reached: Any) -> str:
            if is_missing(reached):
                return DASH
            return ("never" if is_missing(s) else f"{float(s):.0f}") + f" ({reached})"

        show["steps_to_target"] = [
            steps(s, r) for s, r in zip(show.steps_to_target, show.reached_target, strict=True)
        ]
        show = show.drop(columns=["reached_target"]).rename(columns={"steps_to_target": "steps"})
    return _fair_training_display(show)


def _fair_training_display(show: Any) -> Any:
    """The results table without the learning-curve columns (``val_auc``, ``lr``,
    ``kept_step``): the page's table is already as wide as a page holds; they are in
    ``table.md``/``table.csv`` and each condition's learning-curve panel names its lr and val
    AUC (:func:`circuitlens.report.figures.plot_learning_curves`)."""
    drop = ("val_auc_mean", "val_auc_std", "lr", "kept_step")
    return show.drop(columns=[c for c in drop if c in show])


def comparisons_display(comparisons: Any) -> Any:
    """The seed-level comparisons as the page's table shows them: the interval in one column,
    the per-seed McNemar p's as a secondary column, no verdict (it is in the answer)."""
    show = comparisons.copy()
    show["ci"] = [
        DASH if is_missing(lo) or is_missing(hi) else f"{lo:+.3f} to {hi:+.3f}"
        for lo, hi in zip(show.ci_low, show.ci_high, strict=True)
    ]
    show["per_seed_mcnemar"] = [", ".join(auto_num(p) for p in ps) for ps in show.per_seed_mcnemar]
    cols = ["task", "A", "B", "role", "n_seeds", "mean_diff", "ci", "p_sign_flip", "p_t"]
    return show[[*cols, "p_holm", "power", "per_seed_mcnemar"]]


def _extra_tables(result: ExperimentResult, comparisons: Any) -> list[str]:
    """The sections of the tables after the main one: seed-level comparisons, formats, the
    pooled McNemar (labelled as no test of the seeds), the CKA of each pair."""
    mcnemar = result.mcnemar_table()
    if not mcnemar.empty:
        mcnemar = mcnemar.rename(columns={"p": MCNEMAR_P})
    parts = []
    for section_id, heading, extra, note in (
        (
            "seed-comparisons",
            "Each condition against CE, the seed as the unit",
            comparisons_display(comparisons) if not comparisons.empty else comparisons,
            "Per task, the declared primary contrasts, then each other condition (A) against CE "
            "(B, exploratory), over the seeds both have: the mean of the per-seed accuracy "
            "differences, its 95% two-way (seeds × prompts) bootstrap interval, the exact "
            "sign-flip p over seeds (unadjusted, and Holm-adjusted over the primary contrasts), "
            "the paired t-test p, the power of the sign-flip test at the design's effect of "
            "interest (these seeds, the observed sd of the per-seed differences, Holm's first "
            "level for a primary contrast), and McNemar's exact p within each seed (valid per "
            "seed: one seed's prompts).",
        ),
        (
            "formats-table",
            "Accuracy by prompt format",
            result.format_table(),
            "The same stories in every prompt format the task offers; “vs CE” against the "
            "same format's CE.",
        ),
        (
            "mcnemar-table",
            MCNEMAR_POOLED,
            mcnemar,
            "CE + Align CKA (A) against each baseline (B) on per-prompt test correctness, each "
            "seed's prompts concatenated; b and c are the discordant prompts, p the exact "
            "two-sided p-value. The test prompts are the same in every seed, so with several "
            "seeds each prompt counts once per seed and the seed, which varies training, is "
            "ignored: this is not a valid test of the conditions (the seed-level table above "
            "is).",
        ),
        (
            "cka-table",
            "Held-out CKA of each mapped pair, with its permutation null",
            result.cka_table(),
            "CKA on held-out prompts before and after training; the null permutes the "
            "teacher's examples (mean ± sd over permutations).",
        ),
    ):
        if extra is not None and not extra.empty:
            parts.append(f"<section id='{section_id}'><h2>{esc(heading)}</h2>")
            parts.append(f"<p class='note'>{esc(note)}</p>{table_html(extra)}</section>")
    return parts


def _task_section(result: ExperimentResult, task: str, setup: Setup) -> list[str]:
    """One task's part of the page: its circuit, head mapping, ablation heatmaps, curves."""
    parts: list[str] = []
    name = task.replace("_", " ")
    parts.append(f"<section id='{esc(task)}'><h2>{esc(name)}</h2>")
    teacher_spec = result.config.models[task]["teacher"]
    student_spec = result.config.models[task]["student"]
    # circuit
    parts.append(f"<section id='{esc(task)}-circuit'><h3>Teacher circuit</h3>")
    if setup.circuit is None:
        parts.append(
            "<p class='note'>No circuit search in this run (use_circuit = false): "
            "the map may use any teacher head.</p>"
        )
    else:
        circuit = setup.circuit
        faith = circuit.meta.get("faithfulness")
        acc = circuit.meta.get("circuit_accuracy")
        facts = [f"{len(circuit.heads)} heads"]
        if not is_missing(faith):
            facts.append(f"faithfulness {num(faith)}")
        if not is_missing(acc):
            facts.append(f"accuracy with only the circuit {num(acc)}")
        parts.append(f"<p>{esc(', '.join(facts))} in <code>{esc(teacher_spec)}</code>.</p>")
        if setup.circuit_note:
            parts.append(f"<p class='note'>{esc(setup.circuit_note)}</p>")
        n_layers, n_heads = setup.teacher_shape[:2]
        parts.append(circuit_grid_html(circuit, n_layers, n_heads))
    parts.append("</section>")
    # mapping
    head_map = setup.head_map
    controls = {
        c.seed: [(str(s), str(t)) for s, t in c.pairs]
        for c in result.cells
        if c.task == task and get_condition(c.condition).partners == "random"
    }
    parts.append(f"<section id='{esc(task)}-mapping'><h3>Head mapping</h3>")
    method = head_map.config.get("method", "impact")
    how = f"its partner by the <code>{esc(method)}</code> map"
    how = "the teacher head of closest ablation impact" if method == "impact" else how
    parts.append(
        f"<p>{len(head_map)} student head(s) of <code>{esc(student_spec)}</code> trained, "
        f"each aligned with {how}.</p>"
    )
    parts.append(mapping_svg(head_map, controls))
    # copies named for the page: the result's setup is left as it was read
    t_sweep = dataclasses.replace(setup.teacher_sweep, model_name=teacher_spec)
    s_sweep = dataclasses.replace(setup.student_sweep, model_name=student_spec)
    parts.append(pairs_table_html(head_map, s_sweep, t_sweep))
    for w in sorted(head_map.warnings, key=lambda w: "degenerate" not in w):  # it qualifies all
        text = f"⚠ {esc(w)}"
        parts.append(f"<p class='note'>{f'<b>{text}</b>' if 'degenerate' in w else text}</p>")
    parts.append("</section>")
    # ablation
    parts.append(f"<section id='{esc(task)}-ablation'><h3>Mean-ablation impact</h3>")
    parts.append(
        _figure(
            plot_ablation(
                t_sweep, s_sweep, head_map, title=f"{name}: impact ΔP of ablating each head"
            ),
            f"{task}-ablation-figure",
        )
    )
    parts.append("</section>")
    parts += _curve_sections(result, task, name)
    parts.append("</section>")
    return parts


def _curve_sections(result: ExperimentResult, task: str, name: str) -> list[str]:
    """A task's training curves and per-condition learning curves (none without cells)."""
    parts: list[str] = []
    if any(c.task == task for c in result.cells):
        parts.append(f"<section id='{esc(task)}-curves'><h3>Training curves</h3>")
        parts.append(
            _figure(
                plot_training_curves(result, task, title=f"{name}: training curves"),
                f"{task}-curves-figure",
            )
        )
        parts.append("</section>")
    if any(c.task == task and c.curve for c in result.cells):
        parts.append(f"<section id='{esc(task)}-learning'><h3>Learning curves per condition</h3>")
        parts.append(
            "<p class='note'>Validation accuracy of each seed over steps; ◆ the kept step (the "
            "weights measured on test). Each panel names the condition's learning rate, the "
            "mean area under its validation curve (AUC, per step) and its test accuracy.</p>"
        )
        parts.append(
            _figure(
                plot_learning_curves(result, task, title=f"{name}: learning curves"),
                f"{task}-learning-figure",
            )
        )
        parts.append("</section>")
    return parts


def write_sweep_page(result: Any, path: Path | str | None = None) -> Path:
    """The page of a sweep (:class:`~circuitlens.experiments.curves.SweepResult`): per task
    the curves (:func:`circuitlens.report.figures.plot_sweep`) and the table of points, with a link
    to each point's own report. Default: ``sweep.html`` in the sweep's directory.

    Returns:
        The path written (atomically).
    """
    from circuitlens.experiments.curves import point_name
    from circuitlens.report.figures import plot_sweep

    out = Path(path) if path is not None else result.directory / "sweep.html"
    write_plotly_js(out.parent)
    df = result.frame()
    title = f"Circuit distillation: the curve over {result.knob}"
    parts = [f"<header><h1>{esc(title)}</h1></header>"]
    for task in dict.fromkeys(df.task):
        fig = plot_sweep(result, task)
        parts.append(f"<section><h2>{esc(task.replace('_', ' '))}</h2>")
        parts.append(_figure(fig, f"sweep-{task}"))
        parts.append(table_html(df[df.task == task].drop(columns="task")))
        parts.append("</section>")
    names = [esc(point_name(result.knob, v)) for v in result.points]
    links = " ".join(f"<a href='{n}/report.html'>{n}</a>" for n in names)
    parts.append(f"<p class='note'>each point's report: {links}</p>")
    atomic_write_text(
        out,
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{esc(title)}</title><style>{CSS}</style>"
        f'<script src="{PLOTLY_JS}"></script></head><body>{"".join(parts)}</body></html>\n',
    )
    return out
