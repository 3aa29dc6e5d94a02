"""The GPU path in one command: the exact and the screened mean-ablation sweep, evaluation and
activation patching of a SmolLM2-135M-shaped model on a CUDA device, many heads per pass.

Every entry point exercised takes the device and precision: ``load_model(..., device, dtype)``;
the sweeps, ``evaluate`` and patching run where the model is. On CUDA the exact sweep puts
``--heads-per-pass`` heads (default: a whole layer, 9) in one pass, each in its own copy of the
batch. Checks on the device: logits at the scored position equal the full logits' (1e-5 in
float32), the screened sweep's measured heads equal the exact sweep's, and the batched sweep
equals one head per pass on a few heads.

    python benchmarks/gpu.py                       # CUDA, SmolLM2 GGUF, float32, 64 prompts
    python benchmarks/gpu.py --dtype bfloat16 --n 256
    python benchmarks/gpu.py --device cpu --model zoo --n 8   # the tiny CPU check (tests run it)
    python benchmarks/gpu.py --model random --config-dir DIR --baselines   # no GGUF needed

``--baselines`` also times the slow obvious paths and compares values: the naive sweep (one
full forward per head) and TransformerLens' activation-patching loop.

Results: ``$OUT/gpu.json`` when ``$OUT`` is set, else ``benchmarks/results/gpu_<device>.json``.
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
from screened import build  # screened.py's model builder


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(device: str, fn: Any) -> tuple[Any, float]:
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return out, round(time.perf_counter() - t0, 3)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import torch

    import circuitlens as cl
    from circuitlens.tasks.metrics import logits_at

    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--model", default="smollm2", choices=["smollm2", "random", "zoo"])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--boxes", type=int, default=3)
    ap.add_argument("--metric", default="prob")
    ap.add_argument("--heads-per-pass", type=int, default=9)
    ap.add_argument("--top", type=float, default=0.15)
    ap.add_argument("--out", default=None)
    ap.add_argument(
        "--config-dir",
        default=None,
        help="--model random from this Hugging Face directory's config.json and tokenizer "
        "(no weights: where the GGUF is not installed, e.g. the GPU machine)",
    )
    ap.add_argument(
        "--baselines",
        action="store_true",
        help="also time the slow obvious paths: the naive sweep (one full forward per head) "
        "and TransformerLens' activation-patching loop, and compare their values",
    )
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: pass --device cpu (and a small --model zoo)")
    dtype = getattr(torch, args.dtype)
    facts: dict[str, Any] = {
        "args": vars(args),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    if args.device.startswith("cuda"):
        facts["gpu"] = torch.cuda.get_device_name()
        torch.cuda.reset_peak_memory_stats()
    model, facts["load_s"] = timed(
        args.device, lambda: build(args.model, args.device, dtype, args.config_dir)
    )
    task = cl.get_task("entity_tracking", n_boxes=args.boxes, seed=0, n_test=args.n)
    batch = task.batch(model, "test")
    tokens, last = batch.tokens.to(args.device), batch.positions["last"].to(args.device)
    with torch.no_grad():
        full = model(tokens)[torch.arange(len(batch), device=args.device), last]
        part = logits_at(model, tokens, last)
    facts["scored_logits_max_abs_diff"] = float((full.float() - part.float()).abs().max())
    p, facts["evaluate_s"] = timed(
        args.device, lambda: cl.evaluate(model, task, "test", args.n, args.metric)
    )
    facts["p"] = p
    # the test prompts, as the naive loops below read them (a timing, not a choice of heads)
    sweep = cl.AblationConfig(
        metric=args.metric, n=args.n, heads_per_pass=args.heads_per_pass, split="test"
    )
    exact, facts["exact_sweep_s"] = timed(
        args.device,
        lambda: cl.ablation_sweep(
            model, task, sweep.with_overrides(method="exact"), progress=False
        ),
    )
    screened, facts["screened_sweep_s"] = timed(
        args.device,
        lambda: cl.ablation_sweep(
            model, task, sweep.with_overrides(method="screened", top=args.top), progress=False
        ),
    )
    m = screened.exact
    facts["screened_heads_measured"] = int(m.sum())
    facts["screened_vs_exact_max_abs_diff"] = float(
        (screened.p_ablated[m] - exact.p_ablated[m]).abs().max()
    )
    # the measured heads' bootstrap intervals (the same resamples) against the exact sweep's
    facts["screened_vs_exact_ci_max_abs_diff"] = float(
        (screened.delta_ci[:, m] - exact.delta_ci[:, m]).abs().max()
    )
    one, facts["exact_sweep_1_head_per_pass_s"] = timed(
        args.device,
        lambda: cl.ablation_sweep(
            model, task, sweep.with_overrides(method="exact", heads_per_pass=1), progress=False
        ),
    )
    facts["batched_vs_1_head_max_abs_diff"] = float((one.p_ablated - exact.p_ablated).abs().max())
    if args.baselines:
        naive, facts["naive_sweep_s"] = timed(args.device, lambda: naive_sweep(model, batch))
        facts["exact_vs_naive_max_abs_diff"] = float(
            (exact.p_ablated.flatten() - naive).abs().max()
        )
        facts["exact_sweep_speedup_vs_naive"] = round(
            facts["naive_sweep_s"] / facts["exact_sweep_s"], 2
        )
    metric = cl.make_metric("logit_diff", batch)
    if args.baselines:
        facts.update(patching_vs_tl(model, batch, metric, args))
    _, facts["activation_patch_s"] = timed(
        args.device,
        lambda: cl.activation_patch(
            model,
            batch.tokens,
            batch.corrupted_tokens,
            metric,
            patches_per_pass=args.heads_per_pass,
            progress=False,
            positions=batch.positions["last"],
        ),
    )
    if args.device.startswith("cuda"):
        facts["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    out = args.out or (
        Path(os.environ["OUT"]) / "gpu.json"
        if os.environ.get("OUT")
        else results_dir() / f"gpu_{args.device.split(':')[0]}.json"
    )
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(facts, indent=1))
    print(json.dumps(facts, indent=1))
    return facts


def naive_sweep(model: Any, batch: Any) -> Any:
    """The slow obvious sweep: for each head, a full forward pass (logits at every position)
    with that head mean-ablated; the answer's mean probability."""
    import torch

    from circuitlens.ablation.means import compute_means, mean_ablated
    from circuitlens.core.types import Head
    from circuitlens.models.registry import model_facts
    from circuitlens.tasks.metrics import answer_prob, model_device

    f = model_facts(model)
    means = compute_means(model, batch.ablation_tokens)
    tokens = batch.tokens.to(model_device(model))
    out = []
    with torch.no_grad():
        for layer in range(f.n_layers):
            for h in range(f.n_heads):
                with mean_ablated(model, [Head(layer, h)], means):
                    out.append(answer_prob(model(tokens).float(), batch).mean().cpu())
    return torch.stack(out)


def patching_vs_tl(model: Any, batch: Any, metric: Any, args: argparse.Namespace) -> dict:
    """Activation patching of every head's z (all positions) with ``activation_patch`` (many
    heads per pass) against TransformerLens' ``get_act_patch_attn_head_out_all_pos`` (one
    forward per head, with the clean run's cache)."""
    import torch
    import transformer_lens.patching as tlp

    from circuitlens.circuits import activation_patch

    facts: dict[str, Any] = {}
    tokens = batch.tokens.to(args.device)
    corrupted = batch.corrupted_tokens.to(args.device)

    def tl_loop() -> Any:
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens)
            return tlp.get_act_patch_attn_head_out_all_pos(model, corrupted, cache, metric)

    ref, facts["tl_patching_loop_s"] = timed(args.device, tl_loop)
    ours, facts["activation_patch_all_pos_s"] = timed(
        args.device,
        lambda: activation_patch(
            model, tokens, corrupted, metric, patches_per_pass=args.heads_per_pass, progress=False
        ),
    )
    facts["patching_vs_tl_max_abs_diff"] = float(
        (ours.scores.float().cpu() - ref.float().cpu()).abs().max()
    )
    facts["patching_speedup_vs_tl"] = round(
        facts["tl_patching_loop_s"] / facts["activation_patch_all_pos_s"], 2
    )
    return facts


if __name__ == "__main__":
    main()
