"""Benchmark: how often each correspondence method finds a known answer.

The known answer: a model against its own relabelled copy (``permuted_copy``: query heads
permuted inside their K/V group and the groups as wholes, the same function), with seeded
Gaussian weight noise of relative size 0, 0.01, 0.03 and 0.1 on every weight of the copy. The
recovery of a map is the fraction of its student heads sent to their own copy. Every method,
many-to-one and one-to-one, at the default budget (0.13 of the heads, the most important by
impact) and at budget 1.0 (every head, the unimportant ones included).

Models: the zoo teachers (entity tracking, theory of mind; 4 layers x 8 heads, 4 K/V heads);
``--real``: also SmolLM2 entity-tracking student (22 x 9 heads, 3 K/V heads), fewer prompts.
The student side (the original model) is swept once per model; each copy is swept against the
student's baseline (the distillation default), on the same prompts, metric prob.
Results: benchmarks/results/correspondence.json, the figure correspondence.html (recovery over
noise, one panel per model and budget) and the table in docs/correspondence.md (between its
``correspondence-table`` markers).

    .venv/bin/python benchmarks/correspondence.py [--n 64] [--seeds 0 1 2] [--real]
    .venv/bin/python benchmarks/correspondence.py --figure   # the figure from the saved rows
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from statistics import mean

from bench_models import results_dir

OUT = results_dir() / "correspondence.json"
DOC = Path(__file__).resolve().parents[1] / "docs" / "correspondence.md"
MODELS = {
    "zoo-entity-tracking": ("zoo:entity-tracking-teacher", "entity_tracking"),
    "zoo-theory-of-mind": ("zoo:theory-of-mind-teacher", "theory_of_mind"),
}
REAL = {
    "smollm2-entity-tracking-student": ("real:smollm2-entity-tracking-student", "entity_tracking")
}
NOISES = (0.0, 0.01, 0.03, 0.1)
BUDGETS = (0.13, 1.0)


def run_model(
    label: str,
    spec: str,
    task_name: str,
    args: argparse.Namespace,
    rows: list[dict],
    save: Callable[[], None],
) -> None:
    """Measure one model against its copies, appending to ``rows`` and saving after each copy
    (a long run that is stopped keeps what it measured)."""
    import circuitlens as cl
    from circuitlens.analysis.correspondence import (
        METHODS,
        CorrespondenceFeatures,
        correspond_features,
        head_z,
    )
    from circuitlens.analysis.known_answer import permuted_copy, recovery

    model = cl.load_model(spec)
    task = cl.get_task(task_name, model=model)
    sweep = cl.AblationConfig(
        metric="prob",
        n=args.n,
        n_boot=args.n_boot,
        method="exact",
        heads_per_pass=args.heads_per_pass,
    )
    t0 = time.perf_counter()
    s_sweep = cl.ablation_sweep(model, task, sweep, progress=False).named("student")
    s_z = head_z(model, task, "test", args.n)
    print(f"{label}: student side {time.perf_counter() - t0:.0f} s", flush=True)
    for noise in args.noise:
        for seed in args.seeds:
            t1 = time.perf_counter()
            copy, perm = permuted_copy(model, seed=seed, noise=noise)
            t_sweep = cl.ablation_sweep(
                copy, task, sweep, baseline_from=model, progress=False
            ).named("teacher")
            print(f"{label} noise {noise} seed {seed}: swept", flush=True)
            features = CorrespondenceFeatures(
                s_sweep, t_sweep, s_z, head_z(copy, task, "test", args.n)
            )
            for budget in BUDGETS:
                for one_to_one in (False, True):
                    for method in METHODS:
                        hm = correspond_features(features, method, budget, one_to_one)
                        rows.append(
                            {
                                "model": label,
                                "n_prompts": args.n,
                                "task": task_name,
                                "noise": noise,
                                "seed": seed,
                                "budget": budget,
                                "one_to_one": one_to_one,
                                "method": method,
                                "pairs": len(hm),
                                "recovery": recovery(hm, perm),
                                "warnings": len(hm.config["warnings"]),
                            }
                        )
            print(
                f"{label} noise {noise} seed {seed}: {time.perf_counter() - t1:.0f} s",
                flush=True,
            )
            del copy
            save()


def summarise(rows: list[dict]) -> list[dict]:
    """Mean recovery over seeds for each model, noise, budget, assignment and method."""
    groups: dict[tuple, list[float]] = defaultdict(list)
    for r in rows:
        key = (r["model"], r["noise"], r["budget"], r["one_to_one"], r["method"], r["pairs"])
        groups[key].append(r["recovery"])
    return [
        {
            "model": m,
            "noise": noise,
            "budget": b,
            "one_to_one": o,
            "method": meth,
            "pairs": pairs,
            "seeds": len(v),
            "recovery_mean": round(mean(v), 3),
            "recovery_min": round(min(v), 3),
        }
        for (m, noise, b, o, meth, pairs), v in groups.items()
    ]


def table(summary: list[dict], methods: list[str]) -> str:
    """Markdown: one row per model, budget, assignment and noise; one column per method (mean
    recovery over seeds, the worst seed in brackets when it differs)."""
    cells: dict[tuple, dict[str, str]] = defaultdict(dict)
    for s in summary:
        key = (s["model"], s["budget"], s["one_to_one"], s["noise"], s["pairs"], s["seeds"])
        v = f"{s['recovery_mean']:.2f}"
        if s["recovery_min"] != s["recovery_mean"]:
            v += f" ({s['recovery_min']:.2f})"
        cells[key][s["method"]] = v
    head = "| model | budget (pairs) | assignment | noise | seeds | " + " | ".join(methods) + " |"
    lines = [head, "|" + "---|" * (5 + len(methods))]
    for (m, b, o, noise, pairs, seeds), c in sorted(cells.items()):
        row = [m, f"{b} ({pairs})", "one-to-one" if o else "many-to-one", str(noise), str(seeds)]
        lines.append("| " + " | ".join(row + [c.get(x, "") for x in methods]) + " |")
    return "\n".join(lines)


#: one colour per method (Okabe-Ito, colour-blind-safe), in the registry's order
COLOURS = ("#000000", "#E69F00", "#0072B2", "#009E73", "#CC79A7", "#D55E00", "#56B4E9")


def figure(summary: list[dict], methods: list[str]) -> object:
    """Recovery over noise: one panel per model (rows) and budget (columns), one colour per
    method, solid many-to-one and dotted one-to-one; a point is the mean over seeds (its hover
    gives the worst seed)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    models = sorted({s["model"] for s in summary})
    budgets = sorted({s["budget"] for s in summary})
    pairs = {(s["model"], s["budget"]): s["pairs"] for s in summary}
    titles = [f"{m}, budget {b} ({pairs.get((m, b), '?')} heads)" for m in models for b in budgets]
    fig = make_subplots(rows=len(models), cols=len(budgets), subplot_titles=titles,
                        shared_yaxes=True, vertical_spacing=0.12)  # fmt: skip
    shown = set()
    for i, m in enumerate(models, 1):
        for j, b in enumerate(budgets, 1):
            for k, method in enumerate(methods):
                for one in (False, True):
                    pts = sorted((s["noise"], s) for s in summary if (s["model"], s["budget"],
                                 s["method"], s["one_to_one"]) == (m, b, method, one))  # fmt: skip
                    if not pts:
                        continue
                    name = f"{method}, {'one-to-one' if one else 'many-to-one'}"
                    fig.add_trace(
                        go.Scatter(
                            x=[str(n) for n, _ in pts], y=[s["recovery_mean"] for _, s in pts],
                            mode="lines+markers", name=name, legendgroup=name,
                            showlegend=name not in shown,
                            line={"color": COLOURS[k % len(COLOURS)],
                                  "dash": "dot" if one else "solid"},
                            hovertext=[f"{name}: noise {n}, recovery {s['recovery_mean']:.2f} "
                                       f"(worst of {s['seeds']} seeds {s['recovery_min']:.2f})"
                                       for n, s in pts],
                            hoverinfo="text",
                        ),
                        row=i, col=j,
                    )  # fmt: skip
                    shown.add(name)
            fig.update_xaxes(title_text="weight noise (x each parameter's RMS)", type="category",
                             row=i, col=j)  # fmt: skip
        fig.update_yaxes(title_text="recovery", range=[0, 1.05], row=i, col=1)
    fig.update_layout(
        title="Which method finds the known answer? Each model against its relabelled copy",
        height=330 * len(models), legend={"orientation": "h", "y": -0.08},
    )  # fmt: skip
    return fig


def write_figure(summary: list[dict], methods: list[str]) -> Path:
    """``correspondence.html`` beside the results (it loads the directory's plotly.min.js)."""
    from circuitlens.report.page import PLOTLY_JS, write_plotly_js

    out = OUT.parent / "correspondence.html"
    write_plotly_js(out.parent)
    figure(summary, methods).write_html(out, include_plotlyjs=PLOTLY_JS)
    return out


def write_doc(text: str) -> None:
    """Put the table between the doc's markers (not for a side-by-side run into
    ``$CIRCUITLENS_BENCH_OUT``, which leaves the committed files alone)."""
    if not DOC.exists() or os.environ.get("CIRCUITLENS_BENCH_OUT"):
        return
    doc = DOC.read_text()
    start, end = "<!-- correspondence-table -->", "<!-- /correspondence-table -->"
    if start in doc and end in doc:
        pattern = re.escape(start) + ".*?" + re.escape(end)
        DOC.write_text(re.sub(pattern, lambda _: f"{start}\n{text}\n{end}", doc, flags=re.S))


def kept_rows(rerun: set[str]) -> list[dict]:
    """The saved rows of the models not measured again (``--only-real`` keeps the zoo's)."""
    if not OUT.exists():
        return []
    return [r for r in json.loads(OUT.read_text()).get("rows", []) if r["model"] not in rerun]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=64, help="prompts (the sweeps and the z)")
    ap.add_argument("--n-boot", type=int, default=200)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--noise", type=float, nargs="+", default=list(NOISES))
    ap.add_argument("--real", action="store_true", help="also SmolLM2 (slow on a CPU)")
    ap.add_argument(
        "--only-real", action="store_true", help="SmolLM2 only; the zoo rows already saved stay"
    )
    ap.add_argument("--real-n", type=int, default=32)
    ap.add_argument("--real-seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--real-noise", type=float, nargs="+", default=[0.0, 0.03])
    ap.add_argument(
        "--real-heads-per-pass", type=int, default=9, help="heads ablated per forward (SmolLM2)"
    )
    ap.add_argument("--figure", action="store_true", help="only the figure, from the saved rows")
    args = ap.parse_args()
    if args.figure:
        from circuitlens.analysis.correspondence import METHODS

        print(write_figure(json.loads(OUT.read_text())["summary"], list(METHODS)))
        return
    args.heads_per_pass = None
    real = argparse.Namespace(
        n=args.real_n,
        n_boot=args.n_boot,
        seeds=args.real_seeds,
        noise=args.real_noise,
        heads_per_pass=args.real_heads_per_pass,
    )
    runs = [] if args.only_real else [(label, *m, args) for label, m in MODELS.items()]
    if args.real or args.only_real:
        runs += [(label, *m, real) for label, m in REAL.items()]
    t0 = time.perf_counter()
    rows = kept_rows({r[0] for r in runs})
    for label, spec, task_name, run_args in runs:
        run_model(label, spec, task_name, run_args, rows, lambda: save(rows, t0))
    print(save(rows, t0))


def save(rows: list[dict], t0: float) -> str:
    """Write the results and the doc's table from ``rows``; returns the table."""
    from circuitlens.analysis.correspondence import METHODS

    summary = summarise(rows)
    md = table(summary, list(METHODS))
    result = {
        "benchmark": "correspondence",
        "what": "recovery of a permuted copy (permuted_copy) by each correspondence method",
        "n_prompts": {r["model"]: r["n_prompts"] for r in rows},
        "metric": "prob",
        "teacher_baseline": "student",
        "machine": platform.platform(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "seconds": round(time.perf_counter() - t0, 1),
        "summary": summary,
        "rows": rows,
    }
    OUT.write_text(json.dumps(result, indent=1))
    write_figure(summary, list(METHODS))
    write_doc(md)
    return md


if __name__ == "__main__":
    main()
