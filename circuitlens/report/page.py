"""The HTML report of an experiment: presentation only, built from an ExperimentResult.

One page, ``report.html``, and plotly.js beside it (``plotly.min.js``, one copy per directory:
a page stays small, and opens from disk with no network). It leads with the answer: after the
title, per task a forest plot of each trained condition's paired difference in test accuracy
to CE (the seed as the unit) and under it each comparison's verdict sentence. Then the run
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
import html
import math
import time
from pathlib import Path
from typing import Any

from circuitlens.analysis.ablation import AblationResult
from circuitlens.core.io import atomic_write_bytes, atomic_write_text
from circuitlens.core.types import Circuit, Head, HeadMap
from circuitlens.core.version import __version__
from circuitlens.distill.conditions import BASELINE, LABELS, get_condition
from circuitlens.distill.setup import Setup
from circuitlens.experiments.result import MCNEMAR_P, MCNEMAR_POOLED, ExperimentResult
from circuitlens.report.figures import plot_ablation, plot_forest, plot_training_curves

#: column names of the results table as the page shows them
COLUMN_NAMES = {
    "task": "task",
    "condition": "condition",
    "accuracy": "test accuracy (mean ± sd)",
    "circuit_accuracy": "circuit-only accuracy",
    "cka_null": "CKA null (mean ± sd)",
    "null": "CKA null (mean ± sd)",
    "null_mean": "null mean",
    "null_sd": "null sd",
    "n_perm": "permutations",
    "acc_a": "accuracy A",
    "acc_b": "accuracy B",
    "b": "A right, B wrong",
    "c": "A wrong, B right",
    "n_seeds": "seeds",
    "points_vs_ce": "vs CE (points)",
    "head_fraction": "heads trained",
    "param_fraction": "params trained",
    "cka_before": "CKA before",
    "cka_after": "CKA after (mean ± sd)",
    "steps_to_target": "steps to target",
    "reached_target": "reached target",
    "trained": "heads / params trained",
    "cka": "CKA before → after (mean ± sd)",
    "steps": "steps to target (seeds reaching it)",
    "mean_diff": "A − B (mean over seeds)",
    "ci": "95% CI (seeds × prompts bootstrap)",
    "p_sign_flip": "p (sign-flip)",
    "p_t": "p (paired t)",
    "p_holm": "p (sign-flip, Holm)",
    "mdd": "smallest detectable (80% power)",
    "per_seed_mcnemar": "McNemar p per seed",
}
#: columns of numbers that the page's tables hold as strings (right-aligned, never wrapped)
NUMBER_TEXT = frozenset({"trained", "cka", "steps", "ci", "per_seed_mcnemar"})
#: colours of circuit groups (colour-blind-safe, Okabe-Ito)
GROUP_COLOURS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442")
DASH = "—"
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
"""


def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _missing(x: Any) -> bool:
    if x is None or x == "":
        return True
    try:
        return bool(isinstance(x, float) and math.isnan(x))
    except TypeError:
        return False


def _num(x: Any, fmt: str = ".3f") -> str:
    return DASH if _missing(x) else format(float(x), fmt)


def _auto(x: Any) -> str:
    """A number shown with the digits it needs (small p-values stay readable)."""
    if _missing(x):
        return DASH
    v = float(x)
    if v != 0 and abs(v) < 1e-3:
        return f"{v:.2g}"
    if float(v).is_integer() and abs(v) >= 1:
        return f"{v:.0f}"
    return f"{v:.3f}"


def _pairs(cols: list[str]) -> tuple[list[str], dict[str, tuple[str, str | None]]]:
    """Columns to show, each with its (mean column, sd column or None): ``X_mean``/``X``
    with ``X_std``/``X_sd`` become one column ``X``."""
    shown: list[str] = []
    source: dict[str, tuple[str, str | None]] = {}
    used: set[str] = set()
    for c in cols:
        base = c[: -len("_mean")] if c.endswith("_mean") else c
        sd = next((base + suf for suf in ("_std", "_sd") if base + suf in cols), None)
        if sd is not None and sd != c:
            used.add(sd)
        source[base] = (c, sd if sd != c else None)
        shown.append(base)
    shown = [b for b in shown if source[b][0] not in used]
    return shown, source


def format_table(df: Any) -> tuple[list[str], list[list[str]], list[bool]]:
    """A results table as display strings: ``X_mean``/``X`` with ``X_std``/``X_sd`` become one
    "mean ± sd" column, fractions percentages, missing values a dash; unknown columns are
    shown too. Returns the header, the rows, and which rows are references (no training)."""
    cols = list(df.columns)
    shown, source = _pairs(cols)

    def integral(col: str) -> bool:  # counts and seeds (a float column where one is missing)
        vals = [x for x in df[col] if not _missing(x)]
        return bool(vals) and all(
            isinstance(x, int | float) and not isinstance(x, bool) and float(x).is_integer()
            for x in vals
        )

    counts = {c for c in shown if source[c][1] is None and integral(source[c][0])}
    rows, refs = [], []
    for _, r in df.iterrows():
        row = []
        for c in shown:
            mean_col, sd_col = source[c]
            v = r[mean_col]
            if sd_col is not None:
                s = r[sd_col]
                row.append(_num(v) + ("" if _missing(s) or _missing(v) else f" ± {float(s):.3f}"))
            elif c == "points_vs_ce":
                row.append(_num(v, "+.1f"))
            elif "fraction" in c:
                row.append(DASH if _missing(v) else f"{100 * float(v):.1f}%")
            elif c == "steps_to_target":
                reached = "" if _missing(r.get("reached_target")) else str(r["reached_target"])
                row.append(DASH if not reached else ("never" if _missing(v) else f"{v:.0f}"))
            elif isinstance(v, bool):
                row.append("yes" if v else "no")
            elif c in counts:
                row.append(_num(v, ".0f"))
            elif isinstance(v, int | float) or _missing(v):
                row.append(_auto(v))
            else:
                text = str(v)
                row.append(esc(text.replace("_", " ") if c == "task" else text))
        rows.append(row)
        refs.append(r.get("condition") in (LABELS["student"], LABELS["teacher"]))
    header = [COLUMN_NAMES.get(c, c.replace("_", " ")) for c in shown]
    return header, rows, refs


def _text_columns(df: Any) -> list[bool]:
    """Which shown columns are words (left-aligned, wrapped where the page is narrow); the
    columns of numbers made into strings (:data:`NUMBER_TEXT`) are not."""
    shown, source = _pairs(list(df.columns))
    return [
        bool(len(df))
        and c not in NUMBER_TEXT
        and all(isinstance(x, str) for x in df[source[c][0]] if not _missing(x))
        for c in shown
    ]


def table_html(df: Any) -> str:
    if df.empty:
        return "<p class='note'>No finished cells yet.</p>"
    header, rows, refs = format_table(df)
    text_cols = {i for i, t in enumerate(_text_columns(df)) if t}
    out = ["<div class='scroll'><table class='data'><thead><tr>"]
    out += [f"<th>{esc(h)}</th>" for h in header]
    out.append("</tr></thead><tbody>")
    for row, ref in zip(rows, refs, strict=True):
        out.append(f"<tr{' class=reference' if ref else ''}>")
        out += [f"<td{' class=text' if i in text_cols else ''}>{v}</td>" for i, v in enumerate(row)]
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def circuit_grid_html(circuit: Circuit, n_layers: int, n_heads: int) -> str:
    """The circuit's heads on a layer x head grid, each labelled with its group."""
    colour = {g: GROUP_COLOURS[i % len(GROUP_COLOURS)] for i, g in enumerate(circuit.groups)}
    where: dict[Head, str] = {}
    for g, heads in circuit.groups.items():
        for h in heads:
            where.setdefault(h, g)
    out = ["<table class='grid' aria-label='circuit heads by layer and head'><tr><th></th>"]
    out += [f"<th>H{h}</th>" for h in range(n_heads)]
    out.append("</tr>")
    for layer in range(n_layers):
        out.append(f"<tr><th>L{layer}</th>")
        for h in range(n_heads):
            head = Head(layer, h)
            g = where.get(head)
            if g is None:
                out.append(f"<td title='{head}: not in the circuit'>·</td>")
            else:
                pos = circuit.positions.get(g, "last")
                out.append(
                    f"<td class='member' style='background:{colour[g]}' "
                    f"title='{head}: group {esc(g)} at {esc(pos)}'>{esc(g)}</td>"
                )
        out.append("</tr>")
    out.append("</table><ul class='legend'>")
    for g, heads in circuit.groups.items():
        pos = circuit.positions.get(g, "last")
        names = " ".join(str(h) for h in heads) or "(none)"
        out.append(
            f"<li><span class='swatch' style='background:{colour[g]}'></span>"
            f"<b>group {esc(g)}</b> at position <code>{esc(pos)}</code>: {esc(names)}</li>"
        )
    out.append("</ul>")
    return "".join(out)


def _impact(sweep: AblationResult, head: Head) -> str:
    """A head's ΔP with its bootstrap interval (a dash where there is none: a sweep without
    intervals, or a head that a screened sweep only estimated)."""
    value = _num(float(sweep.delta[head.layer, head.head]), ".4f")
    exact = sweep.exact is None or bool(sweep.exact[head.layer, head.head])
    if not exact:
        return f"{value} (estimated)"
    if sweep.delta_ci is None:
        return value
    lo, hi = (float(x) for x in sweep.delta_ci[:, head.layer, head.head])
    if _missing(lo) or _missing(hi):
        return f"{value} [{DASH}]"
    return f"{value} [{lo:.4f}, {hi:.4f}]"


def pairs_table_html(head_map: HeadMap, student: AblationResult, teacher: AblationResult) -> str:
    """Each mapped pair with both heads' impact ΔP and its bootstrap interval over prompts,
    and the impact distance that chose the pair."""
    level = f"{100 * student.config.ci_level:g}%"
    header = [
        "student head",
        f"ΔP student [{level} interval]",
        "teacher head",
        f"ΔP teacher [{level} interval]",
        "|ΔP_s − ΔP_t|",
    ]
    distances = head_map.distances or [math.nan] * len(head_map)
    out = ["<div class='scroll'><table class='data pairs'><thead><tr>"]
    out += [f"<th>{esc(h)}</th>" for h in header]
    out.append("</tr></thead><tbody>")
    for (s, t), d in zip(head_map.pairs, distances, strict=True):
        cells = [
            f"<td class=text>{esc(s)}</td>",
            f"<td>{esc(_impact(student, s))}</td>",
            f"<td class=text>{esc(t)}</td>",
            f"<td>{esc(_impact(teacher, t))}</td>",
            f"<td>{_num(d, '.4f')}</td>",
        ]
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table></div>")
    metric = head_map.config.get("metric") or student.config.metric
    n_boot = student.config.n_boot
    note = (
        f"ΔP: the drop in P ({metric}) when the head alone is mean-ablated; the interval is a "
        f"percentile bootstrap over prompts ({n_boot} resamples)"
        if student.delta_ci is not None or teacher.delta_ci is not None
        else f"ΔP: the drop in P ({metric}) when the head alone is mean-ablated (this run's "
        "sweeps have no bootstrap intervals)"
    )
    return "".join(out) + f"<p class='note'>{esc(note)}.</p>"


def mapping_svg(head_map: HeadMap, controls: dict[int, list[tuple[str, str]]]) -> str:
    """Student heads (left) joined to their teacher heads (right): the aligned map as solid
    lines labelled with the impact distance, each seed's random control dashed."""
    students = sorted(
        {s for s, _ in head_map.pairs} | {Head.parse(s) for c in controls.values() for s, _ in c}
    )
    teachers = sorted(
        {t for _, t in head_map.pairs} | {Head.parse(t) for c in controls.values() for _, t in c}
    )
    row_h, top, width = 34, 50, 560
    height = top + row_h * max(len(students), len(teachers), 1) + 20
    xs, xt = 130, width - 130
    ys = {h: top + row_h * i + row_h / 2 for i, h in enumerate(students)}
    yt = {h: top + row_h * i + row_h / 2 for i, h in enumerate(teachers)}
    out = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
        f"role='img' aria-label='head mapping: student heads to teacher heads' "
        "font-family='system-ui, sans-serif' font-size='13'>",
        f"<text x='{xs}' y='22' text-anchor='middle' font-weight='700'>student</text>",
        f"<text x='{xt}' y='22' text-anchor='middle' font-weight='700'>teacher</text>",
    ]
    for k, (seed, pairs) in enumerate(sorted(controls.items())):
        for s, t in pairs:
            s, t = Head.parse(s), Head.parse(t)
            out.append(
                f"<line x1='{xs + 34}' y1='{ys[s] + 3 * k}' x2='{xt - 34}' y2='{yt[t] + 3 * k}' "
                "stroke='#E69F00' stroke-width='1.6' stroke-dasharray='5 4'>"
                f"<title>random control, seed {seed}: {s} → {t}</title></line>"
            )
    distances = head_map.distances or [math.nan] * len(head_map)
    for (s, t), d in zip(head_map.pairs, distances, strict=True):
        out.append(
            f"<line x1='{xs + 34}' y1='{ys[s]}' x2='{xt - 34}' y2='{yt[t]}' stroke='#0072B2' "
            f"stroke-width='2.5'><title>{s} → {t}, |ΔP_s − ΔP_t| = {_num(d)}</title></line>"
        )
        if not _missing(d):
            mx, my = (xs + xt) / 2, (ys[s] + yt[t]) / 2 - 5
            out.append(
                f"<text x='{mx}' y='{my}' text-anchor='middle' fill='#0072B2' "
                f"font-size='11'>|ΔP diff| {_num(d)}</text>"
            )
    for h, y in ys.items():
        out.append(
            f"<rect x='{xs - 34}' y='{y - 12}' width='68' height='24' rx='5' fill='#eef4fa' "
            f"stroke='#0072B2'/><text x='{xs}' y='{y + 4.5}' text-anchor='middle'>{h}</text>"
        )
    for h, y in yt.items():
        out.append(
            f"<rect x='{xt - 34}' y='{y - 12}' width='68' height='24' rx='5' fill='#f6f1e9' "
            f"stroke='#555'/><text x='{xt}' y='{y + 4.5}' text-anchor='middle'>{h}</text>"
        )
    out.append("</svg>")
    legend = (
        "<p class='note'><span style='color:#0072B2'>━━</span> aligned map (closest "
        "mean-ablation impact; the label is the impact distance)"
        + (
            "; <span style='color:#E69F00'>╌╌</span> random control of each seed (the same "
            "student heads, never their aligned partner)"
            if controls
            else ""
        )
        + "</p>"
    )
    return "".join(out) + legend


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
    out = [
        f"<section id='answer'><h2>The answer: each condition against {esc(ce)}</h2>",
        f"<p class='note'>The seed is the unit: per seed, the test accuracy of a condition "
        f"minus that of {esc(ce)} on the same test prompts (dots); the diamond is their mean, "
        "the line its 95% interval from a two-way bootstrap over seeds and prompts; p is the "
        "exact sign-flip test over seeds, Holm-adjusted over the comparisons of a task.</p>",
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
                DASH if _missing(h) else f"{_percent(h)} / {_percent(p)}"
                for h, p in zip(show.head_fraction, show.param_fraction, strict=True)
            ],
        )
        show = show.drop(columns=["head_fraction", "param_fraction"])
    if "cka_after" in show:

        def cka(before: Any, after: Any, sd: Any) -> str:
            if _missing(after):
                return DASH
            start = "" if _missing(before) else f"{_num(before)} → "
            return start + _num(after) + ("" if _missing(sd) else f" ± {float(sd):.3f}")

        show["cka_after"] = [
            cka(b, a, s)
            for b, a, s in zip(show.cka_before, show.cka_after, show.cka_after_std, strict=True)
        ]
        show = show.drop(columns=["cka_before", "cka_after_std"])
        show = show.rename(columns={"cka_after": "cka"})
    if "steps_to_target" in show:

        def steps(s: Any, reached: Any) -> str:
            if _missing(reached):
                return DASH
            return ("never" if _missing(s) else f"{float(s):.0f}") + f" ({reached})"

        show["steps_to_target"] = [
            steps(s, r) for s, r in zip(show.steps_to_target, show.reached_target, strict=True)
        ]
        show = show.drop(columns=["reached_target"]).rename(columns={"steps_to_target": "steps"})
    return show


def comparisons_display(comparisons: Any) -> Any:
    """The seed-level comparisons as the page's table shows them: the interval in one column,
    the per-seed McNemar p's as a secondary column, no verdict (it is in the answer)."""
    show = comparisons.copy()
    show["ci"] = [
        DASH if _missing(lo) or _missing(hi) else f"{lo:+.3f} to {hi:+.3f}"
        for lo, hi in zip(show.ci_low, show.ci_high, strict=True)
    ]
    show["per_seed_mcnemar"] = [", ".join(_auto(p) for p in ps) for ps in show.per_seed_mcnemar]
    cols = ["task", "A", "B", "n_seeds", "mean_diff", "ci", "p_sign_flip", "p_t", "p_holm"]
    return show[[*cols, "mdd", "per_seed_mcnemar"]]


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
            "Per task, each condition (A) against CE (B) over the seeds both have: the mean of "
            "the per-seed accuracy differences, its 95% two-way (seeds × prompts) bootstrap "
            "interval, the exact sign-flip p over seeds (Holm-adjusted within the task), the "
            "paired t-test p, the smallest difference the t-test detects at 80% power, and "
            "McNemar's exact p within each seed (valid per seed: one seed's prompts).",
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
        if not _missing(faith):
            facts.append(f"faithfulness {_num(faith)}")
        if not _missing(acc):
            facts.append(f"accuracy with only the circuit {_num(acc)}")
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
    parts.append(
        f"<p>{len(head_map)} student head(s) of <code>{esc(student_spec)}</code> trained, "
        f"each aligned with the teacher head of closest ablation impact.</p>"
    )
    parts.append(mapping_svg(head_map, controls))
    # copies named for the page: the result's setup is left as it was read
    t_sweep = dataclasses.replace(setup.teacher_sweep, model_name=teacher_spec)
    s_sweep = dataclasses.replace(setup.student_sweep, model_name=student_spec)
    parts.append(pairs_table_html(head_map, s_sweep, t_sweep))
    for warning in head_map.config.get("warnings", []):
        parts.append(f"<p class='note'>⚠ {esc(warning)}</p>")
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
    # curves
    if any(c.task == task for c in result.cells):
        parts.append(f"<section id='{esc(task)}-curves'><h3>Training curves</h3>")
        parts.append(
            _figure(
                plot_training_curves(result, task, title=f"{name}: training curves"),
                f"{task}-curves-figure",
            )
        )
        parts.append("</section>")
    parts.append("</section>")
    return parts


def write_sweep_page(result: Any, path: Path | str | None = None) -> Path:
    """The page of a sweep (:class:`~circuitlens.experiments.sweep.SweepResult`): per task
    the curves (:func:`circuitlens.report.figures.plot_sweep`) and the table of points, with a link
    to each point's own report. Default: ``sweep.html`` in the sweep's directory.

    Returns:
        The path written (atomically).
    """
    from circuitlens.experiments.sweep import point_name
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
