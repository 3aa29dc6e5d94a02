"""Does a better map distil better? CE + Align with each correspondence method's map, against CE
and CE + Rand, with the seed as the unit (issue 26, item 3).

Each method's run (``reproduce --map-method M --conditions ce+align``, seeded with the reference
run's exact sweeps by ``benchmarks/seed_sweeps.py``) trains the *same* student heads as the
reference run (the budget's top impacts whatever the method) with the same seeds, batches and
test prompts; only the teacher partners differ. So CE and CE + Rand come from the reference run
(the paper's impact map; neither reads the partners for its loss: CE has no CKA term, CE + Rand
draws random partners), and each method's CE + Align is compared with them seed by seed.

    python benchmarks/map_methods.py REF_RUN impact-rank=DIR cka=DIR ... [--name map-methods]

writes ``benchmarks/results/<name>.json`` (per method and seed: accuracy, held-out CKA before
and after with its null, the mechanism check's |dP_s - dP_t| before -> after; the seed-level
comparisons, Holm-adjusted per task across the methods), ``<name>.md`` and the figure
``<name>.html`` (per task: each condition's accuracy minus CE's, seed by seed, with the mean and
its interval; the pairs' held-out CKA before and after training). ``--figure`` redraws the
figure from the saved JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path
from typing import Any

from circuitlens.core.io import atomic_write_text
from circuitlens.experiments.result import ExperimentResult
from circuitlens.experiments.stats import compare_family, compare_seeds

OUT = Path(__file__).resolve().parent / "results"


def _mean(xs: list[float]) -> float:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return statistics.fmean(xs) if xs else float("nan")


def _mechanism_gap(cell: Any) -> tuple[float, float]:
    """The mean over trained pairs of |dP_s - dP_t| before and after training (NaN: none)."""
    m = cell.mechanism
    if m is None or not m.student_heads:
        return float("nan"), float("nan")
    return _mean(m.gap_before), _mean(m.gap_after)


def _cell_row(cell: Any, method: str) -> dict[str, Any]:
    gap_before, gap_after = _mechanism_gap(cell)
    return {
        "task": cell.task,
        "method": method,
        "condition": cell.condition,
        "seed": cell.seed,
        "accuracy": cell.accuracy,
        "circuit_accuracy": cell.circuit_accuracy,
        "cka_before": cell.mean_cka_before,
        "cka_after": cell.mean_cka_after,
        "cka_null_after": float(cell.cka_after.null_mean.mean()) if cell.cka_after else None,
        "mechanism_gap_before": gap_before,
        "mechanism_gap_after": gap_after,
        "pairs": [[str(s), str(t)] for s, t in cell.pairs],
    }


def _by_seed(result: ExperimentResult, task: str, condition: str) -> dict[int, Any]:
    return {c.seed: c for c in result.cells if c.task == task and c.condition == condition}


def _compare(a: dict[int, Any], b: dict[int, Any], name_a: str, name_b: str = "ce") -> Any:
    seeds = sorted(set(a) & set(b))
    return compare_seeds(
        {s: list(a[s].test_correct) for s in seeds},
        {s: list(b[s].test_correct) for s in seeds},
        name_a,
        name_b,
    )


def collect(ref: Path, methods: dict[str, Path]) -> dict[str, Any]:
    """Rows per cell, the seed-level comparisons of each method's CE + Align with CE, and of
    each other method's CE + Align with the impact map's (the question itself: does another
    map distil better than the paper's?), each family Holm-adjusted per task."""
    base = ExperimentResult.load(ref)
    runs = {"impact": base} | {m: ExperimentResult.load(d) for m, d in methods.items()}
    tasks = sorted({c.task for r in runs.values() for c in r.cells if c.condition == "ce+align"})
    rows, comparisons, against_impact = [], [], []
    for task in tasks:
        ce, rand = _by_seed(base, task, "ce"), _by_seed(base, task, "ce+rand")
        rows += [_cell_row(c, "-") for c in [*ce.values(), *rand.values()]]
        family, versus = [], []
        impact = _by_seed(base, task, "ce+align")
        for method, result in runs.items():
            cells = _by_seed(result, task, "ce+align")
            if cells:
                rows += [_cell_row(c, method) for c in cells.values()]
                if len(set(cells) & set(ce)) < 2:  # a run still going: its rows, no test yet
                    continue
                family.append(_compare(cells, ce, f"ce+align ({method})"))
                if method != "impact" and impact:
                    versus.append(
                        _compare(cells, impact, f"ce+align ({method})", "ce+align (impact)")
                    )
        if rand:
            family.append(_compare(rand, ce, "ce+rand"))
        comparisons += [{"task": task, **vars(c)} for c in compare_family(family)]
        if versus:
            against_impact += [{"task": task, **vars(c)} for c in compare_family(versus)]
    return {"rows": rows, "comparisons": comparisons, "against_impact": against_impact}


def summary(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Per task and method (CE + Align) or reference condition: seed means."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in doc["rows"]:
        groups.setdefault((r["task"], r["condition"], r["method"]), []).append(r)
    out = []
    for (task, cond, method), rs in groups.items():
        accs = [r["accuracy"] for r in rs]
        out.append(
            {
                "task": task,
                "condition": cond if method == "-" else f"{cond} ({method})",
                "seeds": len(rs),
                "accuracy": _mean(accs),
                "accuracy_sd": statistics.stdev(accs) if len(accs) > 1 else float("nan"),
                "cka_before": _mean([r["cka_before"] for r in rs]),
                "cka_after": _mean([r["cka_after"] for r in rs]),
                "cka_null_after": _mean([r["cka_null_after"] for r in rs]),
                "mechanism_gap_before": _mean([r["mechanism_gap_before"] for r in rs]),
                "mechanism_gap_after": _mean([r["mechanism_gap_after"] for r in rs]),
            }
        )
    return out


def markdown(doc: dict[str, Any]) -> str:
    import pandas as pd

    parts = ["Per method (CE + Align with that method's map) and the reference conditions, "
             "mean over seeds:", "",
             pd.DataFrame(doc["summary"]).to_markdown(index=False, floatfmt=".3f"), "",
             "Seed-level comparisons with CE (sign-flip p over seeds, Holm-adjusted per task "
             "across the rows; 95% CI from the two-way seed x prompt bootstrap):", ""]  # fmt: skip
    cols = ["task", "a", "b", "n_seeds", "mean_diff", "ci_low", "ci_high", "p_sign_flip",
            "p_holm", "mdd"]  # fmt: skip
    parts.append(pd.DataFrame(doc["comparisons"])[cols].to_markdown(index=False, floatfmt=".3f"))
    if doc.get("against_impact"):
        parts += ["", "Each other method's map against the paper's (impact) map, CE + Align both "
                  "(same heads, seeds, batches and test prompts; Holm per task):", "",
                  pd.DataFrame(doc["against_impact"])[cols].to_markdown(
                      index=False, floatfmt=".3f")]  # fmt: skip
    return "\n".join(parts) + "\n"


def _seeds(doc: dict[str, Any], task: str, label: str) -> list[int]:
    """The seeds of a comparison's condition label (``"ce+align (cka)"``, ``"ce+rand"``)."""
    cond, _, method = label.partition(" (")
    method = method.rstrip(")") or "-"
    return sorted(r["seed"] for r in doc["rows"] if (r["task"], r["condition"], r["method"])
                  == (task, cond, method))  # fmt: skip


def figure(doc: dict[str, Any]) -> Any:
    """Per task (columns): each condition's accuracy minus CE's seed by seed (grey), the mean
    with its 95% interval (two-way seed x prompt bootstrap) and Holm p in the hover (row 1);
    the pairs' held-out CKA before (open) and after training (filled), seed means (row 2)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    tasks = list(dict.fromkeys(r["task"] for r in doc["rows"]))
    titles = [f"{t.replace('_', ' ')}: accuracy − CE, per seed" for t in tasks]
    titles += [f"{t.replace('_', ' ')}: held-out CKA of the pairs" for t in tasks]
    fig = make_subplots(rows=2, cols=len(tasks), subplot_titles=titles, vertical_spacing=0.2)
    first = True
    for j, task in enumerate(tasks, 1):
        for c in (c for c in doc["comparisons"] if c["task"] == task):
            seeds = _seeds(doc, task, c["a"])
            x = [c["a"]] * len(c["diffs"])
            fig.add_trace(go.Scatter(
                x=x, y=c["diffs"], mode="markers", name="one seed", legendgroup="seed",
                showlegend=first, marker={"color": "#888", "size": 7, "opacity": 0.7},
                hovertext=[f"seed {s}: {d:+.3f}" for s, d in zip(seeds, c["diffs"], strict=False)],
                hoverinfo="text"), row=1, col=j)  # fmt: skip
            m, lo, hi = c["mean_diff"], c["ci_low"], c["ci_high"]
            fig.add_trace(go.Scatter(
                x=[c["a"]], y=[m], mode="markers", name="mean over seeds (95% CI)",
                legendgroup="mean", showlegend=first,
                marker={"color": "#000", "symbol": "diamond", "size": 11},
                error_y={"type": "data", "symmetric": False, "array": [hi - m],
                         "arrayminus": [m - lo]},
                hovertext=f"{c['a']} − CE: {m:+.3f} ({lo:+.3f} to {hi:+.3f}), "
                          f"{c['n_seeds']} seeds, sign-flip p {c['p_sign_flip']:.3f} "
                          f"(Holm {c['p_holm']:.3f})",
                hoverinfo="text"), row=1, col=j)  # fmt: skip
            first = False
        fig.add_hline(y=0, line_dash="dot", line_color="#444", row=1, col=j)
        for k, s in enumerate(x for x in doc["summary"] if x["task"] == task):
            fig.add_trace(go.Scatter(
                x=[s["condition"]] * 2, y=[s["cka_before"], s["cka_after"]],
                mode="lines+markers", name="CKA before → after training",
                legendgroup="cka", showlegend=j == 1 and k == 0,
                line={"color": "#0072B2"},
                marker={"color": "#0072B2", "symbol": ["circle-open", "circle"], "size": 10},
                hovertext=[f"{s['condition']}: before {s['cka_before']:.3f}",
                           f"after {s['cka_after']:.3f} (null {s['cka_null_after']:.3f})"],
                hoverinfo="text"), row=2, col=j)  # fmt: skip
        fig.update_yaxes(title_text="accuracy − CE", row=1, col=j)
        fig.update_yaxes(title_text="held-out CKA (mean over seeds)", row=2, col=j)
    fig.update_layout(
        title="Does a better map distil better? CE + Align per map method, real SmolLM2 pair",
        height=900,
        legend={"orientation": "h", "y": -0.15},
    )
    return fig  # fmt: skip


def save(name: str, doc: dict[str, Any], md: str) -> None:
    """``benchmarks/results/<name>.json``, ``.md`` and ``.html`` (atomically), and the
    markdown printed."""
    atomic_write_text(OUT / f"{name}.json", json.dumps(doc, indent=1, default=str))
    atomic_write_text(OUT / f"{name}.md", md)
    write_figure(name, doc)
    print(md)


def write_figure(name: str, doc: dict[str, Any]) -> Path:
    """``benchmarks/results/<name>.html`` (it loads the directory's plotly.min.js)."""
    from circuitlens.report.page import PLOTLY_JS, write_plotly_js

    out = OUT / f"{name}.html"
    write_plotly_js(OUT)
    figure(doc).write_html(out, include_plotlyjs=PLOTLY_JS)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "ref", type=Path, nargs="?", help="the reference run (ce, ce+align, ce+rand; impact map)"
    )
    ap.add_argument("methods", nargs="*", metavar="METHOD=DIR")
    ap.add_argument("--name", default="map-methods")
    ap.add_argument("--figure", action="store_true", help="only redraw <name>.html")
    args = ap.parse_args()
    if args.figure:
        print(write_figure(args.name, json.loads((OUT / f"{args.name}.json").read_text())))
        return
    if args.ref is None or not args.methods:
        ap.error("give the reference run and at least one METHOD=DIR (or --figure)")
    methods = dict(m.split("=", 1) for m in args.methods)
    doc = collect(args.ref, {k: Path(v) for k, v in methods.items()})
    doc["summary"] = summary(doc)
    doc = {"benchmark": "map methods (CE + Align per correspondence method)", **doc}
    save(args.name, doc, markdown(doc))


if __name__ == "__main__":
    main()
