"""Benchmark: ``find_circuit`` with screened activation patching against the exact search.

Theory of mind (the task whose circuit search is activation patching of z; entity tracking's
path patching is not screened). The same search twice, ``CircuitConfig(method="exact")`` and
``method="screened"`` (AtP estimates for every head, exact patching of every head whose effect
may pass the threshold), without support heads (``complete_to=0``: that stage is the same
mean-ablation search either way), then minimality pruning as usual. Reports each search's wall
time, the patching stage's heads (before pruning) and the final circuit, the recall of the
exact search's heads by the screened one, and the largest difference between the exact
scores of the heads both measured. Targets (issue 14): same recall, <= 20% of the time.

Models: ``real`` (the shipped SmolLM2 theory-of-mind teacher, 270 heads), ``random`` (a
random-weight model of SmolLM2-135M's shape: timing only, its circuit means nothing) or
``zoo`` (the zoo theory-of-mind teacher, 32 heads).

    python benchmarks/screened_circuit.py [--model real|random|zoo] [--n 16]
Results: ``benchmarks/results/screened_circuit_<model>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
from bench_models import results_dir

import circuitlens as cl


def model(which: str) -> object:
    if which == "real":
        return cl.load_model("real:smollm2-theory-of-mind-teacher")
    if which == "zoo":
        return cl.load_model("zoo:theory-of-mind-teacher")
    from screened import build

    return build("random")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="real", choices=["real", "random", "zoo"])
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    m = model(args.model)
    task = (
        cl.get_task("theory_of_mind", model=m, seed=0, n_test=args.n)
        if args.model != "random"
        else cl.get_task("theory_of_mind", seed=0, n_test=args.n, tokenizers=[m])
    )
    runs = {}
    for method in ("exact", "screened"):
        t0 = time.perf_counter()
        c = cl.find_circuit(
            m, task, cl.CircuitConfig(n=args.n, method=method, complete_to=0), progress=False
        )
        runs[method] = {
            "seconds": round(time.perf_counter() - t0, 2),
            "patched_heads": c.meta["before_pruning"].get("heads", []),
            "circuit": [str(h) for h in c.heads],
            "circuit_accuracy": c.meta.get("circuit_accuracy"),
            "full_accuracy": c.meta.get("full_accuracy"),
            "recovered": c.meta["scores"]["recovered"],
        }
        print(method, runs[method]["seconds"], "s:", runs[method]["patched_heads"], flush=True)
    ex, sc = runs["exact"], runs["screened"]
    want = set(ex["patched_heads"])
    n_layers = len(ex["recovered"])
    both = [
        abs(ex["recovered"][layer][h] - sc["recovered"][layer][h])
        for layer in range(n_layers)
        for h in range(len(ex["recovered"][layer]))
        if f"L{layer}H{h}" in set(sc["patched_heads"])
    ]
    result = {
        "benchmark": "find_circuit: screened vs exact activation patching (theory of mind)",
        "model": args.model,
        "n_heads": sum(len(r) for r in ex["recovered"]),
        "n_prompts": args.n,
        "runs": {k: {kk: vv for kk, vv in v.items() if kk != "recovered"} for k, v in runs.items()},
        "recall_of_exact_heads": len(want & set(sc["patched_heads"])) / len(want) if want else 1.0,
        "same_circuit": ex["circuit"] == sc["circuit"],
        "fraction_of_exact_time": round(sc["seconds"] / ex["seconds"], 3),
        "max_abs_diff_on_heads_both_found": max(both) if both else None,
        "targets": "recall 1.0 (same heads); <= 20% of the exact search's time",
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "load_avg_at_end": list(os.getloadavg()),
        },
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    out = Path(results_dir()) / f"screened_circuit_{args.model}.json"
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))


if __name__ == "__main__":
    main()
