"""Benchmark: do the correspondence methods find the partners that descent fixes? (issue 42)

On the real same-family pairs the answer is known by construction: the student keeps layers
0-3 and 12-29 of SmolLM2-135M (``circuitlens.models.real.STUDENT_LAYERS``) and was healed with
a LoRA adapter; the teacher is the same base fine-tuned with another LoRA adapter. Student head
``(l, h)`` descends from teacher head ``(STUDENT_LAYERS[l], h)``. The recovery of a map is the
fraction of its student heads sent to that head (``same_layer``: to the right teacher layer).

Pairs: entity tracking and theory of mind (SmolLM2 student and teacher each). Student heads:
the budget's chosen 26 of 198 (0.13, the most important by the committed exact student sweep,
as every committed setup chose them) and all 198. Many-to-one and one-to-one, over all 270
teacher heads.

- Weight methods (``weights-*``): weights only, independent of prompts (one row per pair).
- Functional methods (``cka``, ``cka-positions``, ``cka-positions-mean``, ``cka-tokens``,
  ``pattern``): one forward pass per model on 32 and 128 ``train`` prompts (the tasks have no
  ``probe`` split here; never ``test``), task seeds 0 and 1.
- Impact methods (``impact``, ``impact-rank``, ``profile``, ``combined``): an exact sweep of
  both models costs ~75 min per pair at 32 prompts on this machine, so they read the committed
  exact sweeps (``reproduce-real-map-profile.json``: 32 ``test`` prompts of task seed 0,
  metric prob, the teacher against the student's baseline, with per-prompt impacts). They are
  reported at that one size and seed (``combined``'s CKA half reads the unit's ``train`` z).

Results: ``benchmarks/results/descent.json`` (each row carries its config; saved after every
unit, resumable), the figure ``descent.html`` and the table in ``docs/correspondence.md``
(between its ``descent-table`` markers).

    .venv/bin/python benchmarks/descent.py [--n 32 128] [--seeds 0 1]
    .venv/bin/python benchmarks/descent.py --figure   # figure and table from the saved rows
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import time
from collections import defaultdict
from pathlib import Path
from statistics import mean
from typing import Any

from bench_models import RESULTS, results_dir

from circuitlens.core.types import Head

OUT = results_dir() / "descent.json"
DOC = Path(__file__).resolve().parents[1] / "docs" / "correspondence.md"
SWEEPS = RESULTS / "reproduce-real-map-profile.json"
PAIRS = {
    "entity-tracking": (
        "real:smollm2-entity-tracking-student",
        "real:smollm2-entity-tracking-teacher",
        "entity_tracking",
    ),
    "theory-of-mind": (
        "real:smollm2-theory-of-mind-student",
        "real:smollm2-theory-of-mind-teacher",
        "theory_of_mind",
    ),
}
WEIGHT_METHODS = ("weights-ov-qk", "weights-ov", "weights-qk")
FUNCTIONAL = ("cka", "cka-positions", "cka-positions-mean", "cka-tokens", "pattern")
IMPACT = ("impact", "impact-rank", "profile", "combined")
BUDGETS = {"chosen": 0.13, "all": 1.0}
SPLIT = "train"


def atomic_save(rows: list[dict], config: dict, out: Path | None = None) -> None:
    from circuitlens.core.io import atomic_write_text

    doc = {
        "benchmark": "descent known answer (issue 42)",
        "config": config,
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "rows": rows,
    }
    atomic_write_text(out or Path(config.get("out", OUT)), json.dumps(doc, indent=1))


def truth_map(n_layers: int, n_heads: int) -> dict:
    from circuitlens.core.types import Head
    from circuitlens.models.real import STUDENT_LAYERS

    return {
        Head(layer, h): Head(STUDENT_LAYERS[layer], h)
        for layer in range(n_layers)
        for h in range(n_heads)
    }


def score(hm: Any, truth: dict) -> dict[str, Any]:
    from circuitlens.mapping.known_answer import recovery

    same = sum(truth[s].layer == t.layer for s, t in hm.pairs) / len(hm)
    return {
        "pairs": len(hm),
        "recovery": round(recovery(hm, truth), 4),
        "hits": sum(truth[s] == t for s, t in hm.pairs),
        "same_layer": round(same, 4),
    }


def saved_sweeps(task_name: str) -> tuple[Any, Any, dict]:
    from circuitlens.ablation.result import AblationResult

    setup = json.loads(SWEEPS.read_text())["setups"][task_name]
    s = AblationResult.from_dict(setup["student_sweep"])
    t = AblationResult.from_dict(setup["teacher_sweep"])
    return s, t, setup["fingerprints"]


def maps(
    features: Any,
    methods: tuple[str, ...],
    truth: dict,
    base: dict[str, Any],
    rows: list[dict],
) -> None:
    """Every method x heads x assignment on ``features``, appended to ``rows``.

    Each method's cost is computed once, over all student heads and all teacher heads, by its
    registered ``cost_fn``; the chosen heads' rows are sliced from it and assigned as
    ``correspond_features`` assigns (:func:`~circuitlens.mapping.map.assign`), which
    is the same map without recomputing the cost four times (the warnings are not produced).
    Methods of one kind share one ``CostInputs`` (the weight cosines are computed once)."""
    from circuitlens.core.types import HeadMap
    from circuitlens.mapping.map import assign, choose_student_heads
    from circuitlens.mapping.methods import CostInputs, get_method

    s_sweep = features.student_sweep
    everyone = list(truth)
    n_layers, n_heads = features.teacher_shape()
    cands = [Head(layer, h) for layer in range(n_layers) for h in range(n_heads)]
    inputs = CostInputs(features, everyone, cands, {"n_perm": 10, "seed": 0})
    chosen = choose_student_heads(s_sweep, BUDGETS["chosen"])
    for method in methods:
        t0 = time.perf_counter()
        cost = get_method(method).cost_fn(inputs).float()
        cost_s = round(time.perf_counter() - t0, 2)
        for heads, students in (("chosen", chosen), ("all", everyone)):
            sub = cost[[everyone.index(h) for h in students]]
            for one_to_one in (False, True):
                pick = assign(sub, one_to_one)
                hm = HeadMap(
                    pairs=[(s, cands[j]) for s, j in zip(students, pick, strict=True)],
                    distances=[float(sub[i, j]) for i, j in enumerate(pick)],
                    kind=method,
                    config={"warnings": []},
                )
                true_cost = sub[range(len(students)), [cands.index(truth[s]) for s in students]]
                rows.append(
                    base
                    | {
                        "method": method,
                        "heads": heads,
                        "budget": BUDGETS[heads],
                        "one_to_one": one_to_one,
                        "cost_seconds": cost_s,
                        # how far the true partner is from each row's best: 0 where it wins
                        "true_rank_median": float(
                            (sub < true_cost[:, None]).sum(1).float().median()
                        ),
                    }
                    | score(hm, truth)
                )


def run_pair(label: str, args: argparse.Namespace, rows: list[dict], config: dict) -> None:
    import torch

    import circuitlens as cl
    from circuitlens.mapping.features import MoreSettings, gather_more, head_z
    from circuitlens.mapping.methods import CorrespondenceFeatures
    from circuitlens.models.real import real_fingerprint

    s_spec, t_spec, task_name = PAIRS[label]
    done = {(r["pair"], r["unit"]) for r in rows}
    student, teacher = cl.load_model(s_spec), cl.load_model(t_spec)
    s_sweep, t_sweep, fps = saved_sweeps(task_name)
    now = {"student": real_fingerprint(s_spec[5:]), "teacher": real_fingerprint(t_spec[5:])}
    if now != fps:
        raise SystemExit(f"{label}: the committed sweeps were measured on other weights: {fps}")
    truth = truth_map(*s_sweep.delta.shape)
    common = {"pair": label, "student": s_spec, "teacher": t_spec, "task": task_name}

    if (label, "weights") not in done:
        t0 = time.perf_counter()
        more = gather_more(student, teacher, None, ("weights",))
        feats = CorrespondenceFeatures(s_sweep, more=more)
        base = common | {
            "unit": "weights",
            "n_prompts": None,
            "split": None,
            "task_seed": None,
            "features": "weights (norm folded)",
        }
        maps(feats, WEIGHT_METHODS, truth, base, rows)
        for r in rows[-len(WEIGHT_METHODS) * 4 :]:
            r["seconds"] = round(time.perf_counter() - t0, 1)
        atomic_save(rows, config)
        print(f"{label} weights: {time.perf_counter() - t0:.0f} s", flush=True)

    tasks = {seed: cl.get_task(task_name, model=student, seed=seed) for seed in args.seeds}
    for n in args.n:  # every seed at the smaller size first
        for seed in args.seeds:
            task = tasks[seed]
            unit = f"functional seed {seed} n {n}"
            if (label, unit) in done:
                continue
            t0 = time.perf_counter()
            with torch.no_grad():
                zs, zt = head_z(student, task, SPLIT, n), head_z(teacher, task, SPLIT, n)
                more = gather_more(
                    student,
                    teacher,
                    task,
                    ("z_positions", "z_tokens", "pattern"),
                    MoreSettings(split=SPLIT, n=n, seed=seed),
                )
            feature_s = round(time.perf_counter() - t0, 1)
            feats = CorrespondenceFeatures(s_sweep, None, zs, zt, more)
            base = common | {
                "unit": unit,
                "n_prompts": n,
                "split": SPLIT,
                "task_seed": seed,
                "features": "forward passes",
                "feature_seconds": feature_s,
                "positions": list(more["z_positions"][0].positions),
                "token_rows": int(more["z_tokens"][0].rows.shape[0]),
            }
            maps(feats, FUNCTIONAL, truth, base, rows)
            if seed == 0 and n == 32:  # the impact methods: the committed sweeps
                feats = CorrespondenceFeatures(s_sweep, t_sweep, zs, zt)
                sweep_base = base | {
                    "unit": "impact (committed sweeps)",
                    "features": "committed exact sweeps: 32 test prompts, task seed 0, "
                    "metric prob; combined's CKA half on this unit's train z",
                    "sweep_split": "test",
                }
                maps(feats, IMPACT, truth, sweep_base, rows)
            atomic_save(rows, config)
            print(f"{label} {unit}: {time.perf_counter() - t0:.0f} s", flush=True)


# --- summary, table, figure ----------------------------------------------------------------


def summarise(rows: list[dict]) -> list[dict]:
    """Mean recovery over task seeds per pair, method, prompts, heads and assignment."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        key = (r["pair"], r["method"], r["n_prompts"], r["heads"], r["one_to_one"])
        groups[key].append(r)
    out = []
    for (pair, method, n, heads, o2o), rs in groups.items():
        rec = [r["recovery"] for r in rs]
        out.append(
            {
                "pair": pair,
                "method": method,
                "n_prompts": n,
                "heads": heads,
                "one_to_one": o2o,
                "pairs": rs[0]["pairs"],
                "seeds": len(rs),
                "recovery_mean": round(mean(rec), 3),
                "recovery_min": round(min(rec), 3),
                "same_layer_mean": round(mean(r["same_layer"] for r in rs), 3),
            }
        )
    return out


ORDER = (*WEIGHT_METHODS, *FUNCTIONAL, *IMPACT)


def table(summary: list[dict]) -> str:
    """Markdown: rows method x prompts; columns pair x heads x assignment (mean over seeds,
    the worst seed in brackets when it differs)."""
    cols = [(p, h, o) for p in PAIRS for h in BUDGETS for o in (False, True)]
    head = "| method | prompts | " + " | ".join(
        f"{'ET' if p.startswith('entity') else 'ToM'} {h} {'1:1' if o else 'n:1'}"
        for p, h, o in cols
    )
    lines = [head + " |", "|---|---|" + "---|" * len(cols)]
    cell = {
        (s["pair"], s["method"], s["n_prompts"], s["heads"], s["one_to_one"]): s for s in summary
    }
    keys = sorted(
        {(s["method"], s["n_prompts"]) for s in summary},
        key=lambda k: (ORDER.index(k[0]) if k[0] in ORDER else 99, k[1] or 0),
    )
    for method, n in keys:
        vals = []
        for p, h, o in cols:
            s = cell.get((p, method, n, h, o))
            if s is None:
                vals.append("")
                continue
            v = f"{s['recovery_mean']:.2f}"
            if f"{s['recovery_min']:.2f}" != f"{s['recovery_mean']:.2f}":
                v += f" ({s['recovery_min']:.2f})"
            vals.append(v)
        label = "weights" if n is None else (f"{n} (sweeps: test)" if method in IMPACT else str(n))
        lines.append(f"| `{method}` | {label} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def figure(summary: list[dict]) -> Any:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    titles = [f"{p}, {h} heads" for p in PAIRS for h in BUDGETS]
    fig = make_subplots(rows=len(PAIRS), cols=len(BUDGETS), subplot_titles=titles)
    styles = {
        (32, False): ("32 prompts, many-to-one", "#9ecae1"),
        (32, True): ("32 prompts, one-to-one", "#3182bd"),
        (128, False): ("128 prompts, many-to-one", "#fdae6b"),
        (128, True): ("128 prompts, one-to-one", "#e6550d"),
        (None, False): ("weights, many-to-one", "#a1d99b"),
        (None, True): ("weights, one-to-one", "#31a354"),
    }
    for (n, o2o), (name, colour) in styles.items():
        for i, p in enumerate(PAIRS):
            for j, h in enumerate(BUDGETS):
                pts = [
                    s
                    for s in summary
                    if s["pair"] == p
                    and s["heads"] == h
                    and s["n_prompts"] == n
                    and s["one_to_one"] == o2o
                ]
                pts.sort(key=lambda s: ORDER.index(s["method"]) if s["method"] in ORDER else 99)
                fig.add_trace(
                    go.Bar(
                        x=[s["method"] for s in pts],
                        y=[s["recovery_mean"] for s in pts],
                        name=name,
                        marker_color=colour,
                        legendgroup=name,
                        showlegend=(i, j) == (0, 0),
                        hovertemplate="%{x}: %{y:.2f} (" + name + ")<extra></extra>",
                    ),
                    row=i + 1,
                    col=j + 1,
                )
    fig.update_yaxes(range=[0, 1.05], title_text="recovery")
    fig.update_layout(
        barmode="group",
        height=800,
        title="Descent known answer: fraction of student heads mapped to the teacher head they "
        "descend from (mean over task seeds; impact methods: committed sweeps, 32 test prompts)",
    )
    return fig


def write_outputs(rows: list[dict], out: Path = OUT) -> None:
    from circuitlens.report.page import PLOTLY_JS, write_plotly_js

    summary = summarise(rows)
    write_plotly_js(out.parent)
    figure(summary).write_html(out.with_suffix(".html"), include_plotlyjs=PLOTLY_JS)
    if DOC.is_file() and out == RESULTS / "descent.json":
        text = DOC.read_text()
        block = f"<!-- descent-table -->\n{table(summary)}\n<!-- /descent-table -->"
        if "<!-- descent-table -->" in text:
            text = re.sub(
                r"<!-- descent-table -->.*?<!-- /descent-table -->",
                lambda _: block,
                text,
                flags=re.S,
            )
            DOC.write_text(text)
    print(table(summary))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, nargs="+", default=[32, 128])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--pairs", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    p.add_argument("--figure", action="store_true", help="only the figure and table")
    p.add_argument("--out", type=Path, default=OUT, help="where this run's rows go")
    p.add_argument("--merge", type=Path, nargs="*", default=[], help="rows to add to --out")
    args = p.parse_args()
    rows = json.loads(args.out.read_text())["rows"] if args.out.is_file() else []
    if args.merge:
        have = {(r["pair"], r["unit"]) for r in rows}
        for f in args.merge:
            rows += [
                r for r in json.loads(f.read_text())["rows"] if (r["pair"], r["unit"]) not in have
            ]
        first = args.out if args.out.is_file() else args.merge[0]
        atomic_save(rows, json.loads(first.read_text())["config"], args.out)
    if not args.figure:
        import torch

        torch.set_num_threads(1)
        config = {
            "n": args.n,
            "seeds": args.seeds,
            "split": SPLIT,
            "budgets": BUDGETS,
            "truth": "student (l, h) -> teacher (STUDENT_LAYERS[l], h)",
            "impact_sweeps": str(SWEEPS.relative_to(RESULTS.parent.parent)),
            "out": str(args.out),
        }
        for label in args.pairs:
            run_pair(label, args, rows, config)
    write_outputs(rows, args.out)


if __name__ == "__main__":
    main()
