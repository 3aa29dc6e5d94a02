"""Benchmark: the mean-ablation sweep (each pass starting at the ablated layer; optionally
several heads per pass) against the naive loop (one full forward pass per head).

Models: the zoo entity-tracking teacher and a 12-layer random Llama. Task: 7-box entity
tracking, 100 test prompts, metric accuracy. Each measurement runs in a fresh subprocess so
that its peak resident memory (ru_maxrss) is its own.
Results: benchmarks/results/ablation_sweep.json

    .venv/bin/python benchmarks/ablation_sweep.py [--n 100] [--heads-per-pass 1 8]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import resource
import time

from bench_models import MODELS, bench_model, results_dir

OUT = results_dir() / "ablation_sweep.json"


def _run(which: str, mode: str, n: int, hpp: int, q: mp.Queue) -> None:
    import torch

    from circuitlens import get_task
    from circuitlens.ablation.config import AblationConfig
    from circuitlens.ablation.means import compute_means, mean_ablated
    from circuitlens.ablation.sweep import ablated_scores
    from circuitlens.core.types import Head
    from circuitlens.models.registry import model_facts
    from circuitlens.tasks.metrics import accuracy

    torch.set_num_threads(1)
    model = bench_model(which)
    batch = get_task("entity_tracking", n_boxes=7, seed=0, n_test=n).batch(model, "test")
    means = compute_means(model, batch.ablation_tokens)
    f = model_facts(model)
    heads = [Head(layer, h) for layer in range(f.n_layers) for h in range(f.n_heads)]
    config = AblationConfig(metric="accuracy", heads_per_pass=hpp)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with torch.no_grad():
        if mode == "naive":
            scores = []
            for head in heads:
                with mean_ablated(model, [head], means):
                    scores.append(float(accuracy(model(batch.tokens), batch)))
        else:
            scores = ablated_scores(model, batch, heads, means, config, progress=False)
            scores = scores.tolist()
    dt = time.perf_counter() - t0
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    q.put(
        {
            "model": which,
            "mode": mode,
            "heads_per_pass": hpp if mode != "naive" else 1,
            "n_heads": len(heads),
            "seconds": round(dt, 3),
            "peak_rss_mb": round(rss1 / 1024, 1),
            "rss_growth_mb": round((rss1 - rss0) / 1024, 1),
            "scores": scores,
        }
    )


def measure(which: str, mode: str, n: int, hpp: int) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_run, args=(which, mode, n, hpp, q))
    p.start()
    out = q.get()
    p.join()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--heads-per-pass", type=int, nargs="+", default=[1, 8])
    args = ap.parse_args()
    rows = []
    for which in MODELS:
        naive = measure(which, "naive", args.n, 1)
        rows.append(naive)
        for hpp in args.heads_per_pass:
            r = measure(which, "batched", args.n, hpp)
            r["speedup_vs_naive"] = round(naive["seconds"] / r["seconds"], 2)
            r["max_abs_score_diff_vs_naive"] = max(
                abs(a - b) for a, b in zip(r["scores"], naive["scores"], strict=True)
            )
            rows.append(r)
    for r in rows:
        r.pop("scores")
    result = {
        "benchmark": "ablation_sweep",
        "n_prompts": args.n,
        "task": "entity_tracking 7 boxes",
        "torch_threads": 1,
        "machine": platform.platform(),
        "processor": platform.processor(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "rows": rows,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1))
    for r in rows:
        print(r)


if __name__ == "__main__":
    main()
