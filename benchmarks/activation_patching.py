"""Benchmark: the batched head sweep of ``activation_patch`` against TransformerLens' own
``get_act_patch_attn_head_out_all_pos`` (one forward pass per head), on the zoo
entity-tracking teacher and a 12-layer random Llama; 7-box prompts, logit-difference metric.
Results: benchmarks/results/activation_patching.json

    .venv/bin/python benchmarks/activation_patching.py [--n 64]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
from bench_models import MODELS, bench_model, results_dir

OUT = results_dir() / "activation_patching.json"


def main() -> None:
    import transformer_lens.patching as tlp

    from circuitlens import get_task, make_metric
    from circuitlens.circuits import activation_patch

    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for which in MODELS:
        model = bench_model(which)
        batch = get_task("entity_tracking", n_boxes=7, seed=0, n_test=args.n).batch(model, "test")
        metric = make_metric("logit_diff", batch)
        t0 = time.perf_counter()
        _, cache = model.run_with_cache(batch.tokens)
        ref = tlp.get_act_patch_attn_head_out_all_pos(model, batch.corrupted_tokens, cache, metric)
        t_tl = time.perf_counter() - t0
        row = {"model": which, "n_heads": int(ref.numel()), "tl_seconds": round(t_tl, 3)}
        for ppp in (1, 8):
            t0 = time.perf_counter()
            ours = activation_patch(
                model,
                batch.tokens,
                batch.corrupted_tokens,
                metric,
                patches_per_pass=ppp,
                progress=False,
            )
            dt = time.perf_counter() - t0
            row[f"ours_{ppp}_per_pass_seconds"] = round(dt, 3)
            row[f"speedup_{ppp}"] = round(t_tl / dt, 2)
            row[f"max_abs_diff_{ppp}"] = float((ours.scores - ref.float()).abs().max())
        rows.append(row)
        print(row)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(
        json.dumps(
            {
                "benchmark": "activation_patching",
                "n_prompts": args.n,
                "torch_threads": 1,
                "machine": platform.platform(),
                "date": time.strftime("%Y-%m-%d %H:%M"),
                "rows": rows,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
