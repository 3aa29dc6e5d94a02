"""Benchmark: how often each correspondence method finds a known answer.

The known answer: a model against its own relabelled copy (``permuted_copy``: query heads
permuted inside their K/V group and the groups as wholes, the same function), with seeded
Gaussian weight noise of relative size 0, 0.01, 0.03 and 0.1 on every weight of the copy. The
recovery of a map is the fraction of its student heads sent to their own copy. The ``own``
baseline maps the model to itself (the identity is the answer: each method's ceiling), and each
copy's behaviour on the task's prompts is recorded beside it (its accuracy, and the KL divergence
of its next-token distribution from the original's), so a noise level reads as a change of
behaviour; each row also says whether the map was degenerate. Every method,
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
from collections.abc import Callable, Iterator
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


def copies(
    model: object, args: argparse.Namespace
) -> Iterator[tuple[str, float, int, object, dict]]:
    """``(copy, noise, seed, teacher, answer)``: the ``own`` baseline (the model itself, the
    identity the answer), then each noise level's and seed's relabelled copy."""
    from circuitlens.mapping.known_answer import identity_permutation, permuted_copy

    if args.own:
        yield "own", 0.0, 0, model, identity_permutation(model)
    for noise in args.noise:
        for seed in args.seeds:
            copy, perm = permuted_copy(model, seed=seed, noise=noise)
            yield "permuted", noise, seed, copy, perm


def run_model(
    label: str,
    spec: str,
    task_name: str,
    args: argparse.Namespace,
    rows: list[dict],
    save: Callable[[], None],
    model: object | None = None,
) -> None:
    """Measure one model against itself (``own``) and its copies, appending to ``rows`` and
    saving after each copy (a long run that is stopped keeps what it measured). Each row
    carries the copy's behaviour on the task's prompts: its accuracy and the KL divergence of
    its next-token distribution from the original's (``model``: a ready model instead of
    ``spec``'s)."""
    import circuitlens as cl
    from circuitlens.mapping.features import MoreSettings, gather_more, head_z
    from circuitlens.mapping.known_answer import behaviour_change, recovery
    from circuitlens.mapping.map import map_heads
    from circuitlens.mapping.methods import METHODS, CorrespondenceFeatures, get_method

    model = cl.load_model(spec) if model is None else model
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
    s_z = head_z(model, task, "probe", args.n)  # what chooses reads probe, as the sweeps do
    needs = sorted({x for m in METHODS for x in get_method(m).needs})
    print(f"{label}: student side {time.perf_counter() - t0:.0f} s", flush=True)
    for kind, noise, seed, copy, perm in copies(model, args):
        t1 = time.perf_counter()
        t_sweep = cl.ablation_sweep(copy, task, sweep, baseline_from=model, progress=False).named(
            "teacher"
        )
        behaviour = behaviour_change(model, copy, task, "test", args.n)
        print(f"{label} {kind} noise {noise} seed {seed}: swept", flush=True)
        t_z = head_z(copy, task, "probe", args.n)
        more = gather_more(model, copy, task, needs, MoreSettings(split="probe", n=args.n))
        features = CorrespondenceFeatures(s_sweep, t_sweep, s_z, t_z, more)
        for budget in BUDGETS:
            for one_to_one in (False, True):
                for method in METHODS:
                    hm = map_heads(
                        s_sweep, t_sweep, budget=budget, one_to_one=one_to_one, method=method,
                        features=features,
                    )  # fmt: skip
                    rows.append(
                        {
                            "model": label,
                            "n_prompts": args.n,
                            "task": task_name,
                            "copy": kind,
                            "noise": noise,
                            "seed": seed,
                            "budget": budget,
                            "one_to_one": one_to_one,
                            "method": method,
                            "pairs": len(hm),
                            "recovery": recovery(hm, perm),
                            "warnings": len(hm.warnings),
                            "degenerate": any("degenerate" in w for w in hm.warnings),
                            "copy_accuracy": behaviour.accuracy,
                            "original_accuracy": behaviour.original_accuracy,
                            "copy_kl": behaviour.kl,
                        }
                    )
        print(
            f"{label} {kind} noise {noise} seed {seed}: {time.perf_counter() - t1:.0f} s, "
            f"accuracy {behaviour.accuracy:.3f} (original {behaviour.original_accuracy:.3f}), "
            f"KL {behaviour.kl:.4f}",
            flush=True,
        )
        del copy
        save()


def _copy(row: dict) -> str:
    """A row's copy: ``own`` or ``permuted`` (rows saved before ``own`` existed: permuted)."""
    return row.get("copy", "permuted")


def summarise(rows: list[dict]) -> list[dict]:
    """Mean recovery over seeds for each model, noise, budget, assignment and method."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        key = (r["model"], _copy(r), r["noise"], r["budget"], r["one_to_one"], r["method"])
        groups[key + (r["pairs"],)].append(r)
    out = []
    for (m, kind, noise, b, o, meth, pairs), rs in groups.items():
        v = [r["recovery"] for r in rs]
        row = {
            "model": m,
            "copy": kind,
            "noise": noise,
            "budget": b,
            "one_to_one": o,
            "method": meth,
            "pairs": pairs,
            "seeds": len(v),
            "recovery_mean": round(mean(v), 3),
            "recovery_min": round(min(v), 3),
        }
        if all("copy_kl" in r for r in rs):  # rows saved before behaviour was recorded lack it
            row["copy_accuracy"] = round(mean(r["copy_accuracy"] for r in rs), 4)
            row["original_accuracy"] = round(mean(r["original_accuracy"] for r in rs), 4)
            row["copy_kl"] = round(mean(r["copy_kl"] for r in rs), 6)
            row["degenerate"] = sum(bool(r.get("degenerate")) for r in rs)
        out.append(row)
    return out


def behaviour(summary: list[dict]) -> list[dict]:
    """What each copy's noise does to behaviour: per model, copy and noise, the copy's mean
    accuracy against the original's and its mean KL divergence (over seeds)."""
    seen: dict[tuple, dict] = {}
    for s in summary:
        if "copy_kl" in s:
            key = (s["model"], s.get("copy", "permuted"), s["noise"])
            seen.setdefault(key, {k: s[k] for k in ("model", "noise", "seeds", "copy_accuracy",
                                                    "original_accuracy", "copy_kl")}
                            | {"copy": key[1]})  # fmt: skip
    return sorted(seen.values(), key=lambda r: (r["model"], r["copy"] != "own", r["noise"]))


def table(summary: list[dict], methods: list[str]) -> str:
    """Markdown: one row per model, budget, assignment and noise; one column per method (mean
    recovery over seeds, the worst seed in brackets when it differs)."""
    cells: dict[tuple, dict[str, str]] = defaultdict(dict)
    for s in summary:
        own = s.get("copy", "permuted") == "own"
        key = (s["model"], s["budget"], s["one_to_one"], not own, s["noise"], s["pairs"],
               s["seeds"])  # fmt: skip
        v = f"{s['recovery_mean']:.2f}"
        if s["recovery_min"] != s["recovery_mean"]:
            v += f" ({s['recovery_min']:.2f})"
        cells[key][s["method"]] = v
        if "copy_kl" in s:
            cells[key]["behaviour"] = f"{s['copy_accuracy']:.3f} / {s['copy_kl']:.4f}"
    head = "| model | budget (pairs) | assignment | copy | seeds | accuracy / KL | "
    head += " | ".join(methods) + " |"
    lines = [head, "|" + "---|" * (6 + len(methods))]
    for (m, b, o, permuted, noise, pairs, seeds), c in sorted(cells.items()):
        copy = f"noise {noise}" if permuted else "own"
        row = [m, f"{b} ({pairs})", "one-to-one" if o else "many-to-one", copy, str(seeds)]
        row.append(c.get("behaviour", ""))
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
                    pts = sorted(((s.get("copy", "permuted") != "own", s["noise"]), s)
                                 for s in summary if (s["model"], s["budget"], s["method"],
                                 s["one_to_one"]) == (m, b, method, one))  # fmt: skip
                    pts = [(str(n) if p else "own", s) for (p, n), s in pts]
                    if not pts:
                        continue
                    name = f"{method}, {'one-to-one' if one else 'many-to-one'}"
                    fig.add_trace(
                        go.Scatter(
                            x=[n for n, _ in pts], y=[s["recovery_mean"] for _, s in pts],
                            mode="lines+markers", name=name, legendgroup=name,
                            showlegend=name not in shown,
                            line={"color": COLOURS[k % len(COLOURS)],
                                  "dash": "dot" if one else "solid"},
                            hovertext=[f"{name}: {n}, recovery {s['recovery_mean']:.2f} "
                                       f"(worst of {s['seeds']} seeds {s['recovery_min']:.2f})"
                                       for n, s in pts],
                            hoverinfo="text",
                        ),
                        row=i, col=j,
                    )  # fmt: skip
                    shown.add(name)
            fig.update_xaxes(title_text="own, or weight noise (x each parameter's RMS)",
                             type="category",
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
    ap.add_argument(
        "--no-own", dest="own", action="store_false", help="leave out the model against itself"
    )
    ap.add_argument("--figure", action="store_true", help="only the figure, from the saved rows")
    args = ap.parse_args()
    if args.figure:
        from circuitlens.mapping.methods import METHODS

        print(write_figure(json.loads(OUT.read_text())["summary"], list(METHODS)))
        return
    args.heads_per_pass = None
    real = argparse.Namespace(
        own=args.own,
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
    from circuitlens.mapping.methods import METHODS

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
        "behaviour": behaviour(summary),
        "rows": rows,
    }
    OUT.write_text(json.dumps(result, indent=1))
    write_figure(summary, list(METHODS))
    write_doc(md)
    return md


if __name__ == "__main__":
    main()
