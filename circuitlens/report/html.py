"""The pieces of the report page that are plain HTML: tables of numbers (a pandas frame as the
page shows it, with readable column names and right-aligned numbers), the circuit as a
layer x head grid, the mapped pairs with their impacts and intervals, and the head mapping as a
student -> teacher diagram (SVG)."""

from __future__ import annotations

import html
import math
from typing import Any

from circuitlens.ablation.result import AblationResult
from circuitlens.core.types import Circuit, Head, HeadMap
from circuitlens.distill.conditions import LABELS

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
    "power": "power at the effect of interest",
    "role": "primary or exploratory",
    "per_seed_mcnemar": "McNemar p per seed",
}


#: columns of numbers that the page's tables hold as strings (right-aligned, never wrapped)
NUMBER_TEXT = frozenset({"trained", "cka", "steps", "ci", "per_seed_mcnemar"})


#: colours of circuit groups (colour-blind-safe, Okabe-Ito)
GROUP_COLOURS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442")


DASH = "—"


def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def is_missing(x: Any) -> bool:
    if x is None or x == "":
        return True
    try:
        return bool(isinstance(x, float) and math.isnan(x))
    except TypeError:
        return False


def num(x: Any, fmt: str = ".3f") -> str:
    return DASH if is_missing(x) else format(float(x), fmt)


def auto_num(x: Any) -> str:
    """A number shown with the digits it needs (small p-values stay readable)."""
    if is_missing(x):
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
        vals = [x for x in df[col] if not is_missing(x)]
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
                row.append(
                    num(v) + ("" if is_missing(s) or is_missing(v) else f" ± {float(s):.3f}")
                )
            elif c == "points_vs_ce":
                row.append(num(v, "+.1f"))
            elif "fraction" in c:
                row.append(DASH if is_missing(v) else f"{100 * float(v):.1f}%")
            elif c == "steps_to_target":
                reached = "" if is_missing(r.get("reached_target")) else str(r["reached_target"])
                row.append(DASH if not reached else ("never" if is_missing(v) else f"{v:.0f}"))
            elif isinstance(v, bool):
                row.append("yes" if v else "no")
            elif c in counts:
                row.append(num(v, ".0f"))
            elif isinstance(v, int | float) or is_missing(v):
                row.append(auto_num(v))
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
        and all(isinstance(x, str) for x in df[source[c][0]] if not is_missing(x))
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
    value = num(float(sweep.delta[head.layer, head.head]), ".4f")
    exact = sweep.exact is None or bool(sweep.exact[head.layer, head.head])
    if not exact:
        return f"{value} (estimated)"
    if sweep.delta_ci is None:
        return value
    lo, hi = (float(x) for x in sweep.delta_ci[:, head.layer, head.head])
    if is_missing(lo) or is_missing(hi):
        return f"{value} [{DASH}]"
    return f"{value} [{lo:.4f}, {hi:.4f}]"


def pairs_table_html(head_map: HeadMap, student: AblationResult, teacher: AblationResult) -> str:
    """Each mapped pair with both heads' impact ΔP and its bootstrap interval over prompts,
    and the cost that chose the pair (``HeadMap.distance_label``)."""
    level = f"{100 * student.config.ci_level:g}%"
    header = [
        "student head",
        f"ΔP student [{level} interval]",
        "teacher head",
        f"ΔP teacher [{level} interval]",
        head_map.distance_label,
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
            f"<td>{num(d, '.4f')}</td>",
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
            f"stroke-width='2.5'><title>{s} → {t}, {esc(head_map.distance_label)} = "
            f"{num(d)}</title></line>"
        )
        if not is_missing(d):
            mx, my = (xs + xt) / 2, (ys[s] + yt[t]) / 2 - 5
            out.append(
                f"<text x='{mx}' y='{my}' text-anchor='middle' fill='#0072B2' "
                f"font-size='11'>|ΔP diff| {num(d)}</text>"
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
