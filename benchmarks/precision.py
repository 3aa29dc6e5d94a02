"""bf16 against float32 on the real same-family pair, each path timed against the matmul floor.

On the real SmolLM2 entity-tracking pair, in one process (one thread, the paths interleaved so
that load falls on both precisions alike): a matmul of the model's shapes in float32 and in
bf16 (the floor: what the CPU's matrix units give), then each forward-heavy path in float32 and
under bf16 autocast (``torch.autocast("cpu", torch.bfloat16)``, what ``TrainConfig.dtype`` and
``AblationConfig.dtype`` switch on):

- a forward of the sweep's 32 ``probe`` prompts (the unit every sweep pass and evaluation is
  made of): its time, and its ratio to the floor's time for the forward's matmul FLOPs;
- a sweep pass: every head of one layer mean-ablated alone (``ablated_scores``), the per-head
  impacts in both precisions, their largest and mean difference against the float32
  bootstrap intervals' widths;
- an evaluation: accuracy on 100 ``val`` prompts, and the per-prompt agreement;
- a training step of CE + Align (float32 master weights, float32 CKA) at batch 8.

Results: ``benchmarks/results/precision.json``; the table in ``docs/benchmarks.md``.

    python benchmarks/precision.py [--layer 11] [--threads 1]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import circuitlens as cl
from circuitlens.ablation.config import AblationConfig
from circuitlens.ablation.means import compute_means
from circuitlens.ablation.sweep import ablated_scores
from circuitlens.core.devices import cpu_native_bf16
from circuitlens.core.io import atomic_write_text, json_ready
from circuitlens.core.types import Head, HeadMap
from circuitlens.distill.train_config import TrainConfig
from circuitlens.distill.trainer import CircuitTrainer, TrainRun
from circuitlens.models.registry import model_facts
from circuitlens.tasks import get_task
from circuitlens.tasks.metrics import prompt_scores

OUT = Path(__file__).parent / "results" / "precision.json"


def _autocast(bf16: bool) -> contextlib.AbstractContextManager:
    return torch.autocast("cpu", torch.bfloat16) if bf16 else contextlib.nullcontext()


def _best(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """The least wall time of ``repeat`` calls (after one warm-up call) and the last result."""
    out = fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def paired(fn: Callable[[], Any], bf16: bool, repeat: int) -> tuple[float, float, Any]:
    """``fn``'s least time (in bf16 autocast or not) and the floor's GFLOP/s in the same
    precision, measured alternately (the same load on both), and ``fn``'s last result."""
    a, b = torch.randn(1728, 576), torch.randn(576, 1536)
    if bf16:
        a, b = a.bfloat16(), b.bfloat16()
    flops = 2 * 1728 * 576 * 1536
    best, floor, out = float("inf"), float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        for _ in range(5):
            a @ b
        floor = min(floor, (time.perf_counter() - t) / 5)
        with _autocast(bf16):
            t = time.perf_counter()
            out = fn()
            best = min(best, time.perf_counter() - t)
    return best, flops / floor / 1e9, out


def matmul_floor(repeat: int = 10) -> dict[str, float]:
    """GFLOP/s of a ``[1728, 576] @ [576, 1536]`` matmul (32 prompts x 54 tokens into the
    MLP's width) in float32 and in bf16."""
    a, b = torch.randn(1728, 576), torch.randn(576, 1536)
    flops = 2 * 1728 * 576 * 1536
    t32, _ = _best(lambda: a @ b, repeat)
    a16, b16 = a.bfloat16(), b.bfloat16()
    t16, _ = _best(lambda: a16 @ b16, repeat)
    return {"float32_gflops": flops / t32 / 1e9, "bfloat16_gflops": flops / t16 / 1e9}


def forward_flops(model: Any, tokens: int) -> float:
    """Matmul FLOPs of one forward over ``tokens`` tokens: the attention's Q, K, V and O
    projections, the gated MLP's three matrices, and the unembedding at one position per
    prompt (logits at the scored positions only)."""
    cfg = model.cfg
    d, dh = cfg.d_model, cfg.d_head
    kv = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
    attn = d * cfg.n_heads * dh * 2 + d * kv * dh * 2
    mlp = 3 * d * cfg.d_mlp
    return 2.0 * tokens * cfg.n_layers * (attn + mlp)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layer", type=int, default=11, help="the layer whose heads a pass ablates")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    teacher = cl.load_model("real:smollm2-entity-tracking-teacher")
    student = cl.load_model("real:smollm2-entity-tracking-student")
    task = get_task("entity_tracking", tokenizers=[teacher, student], n_probe=32, n_val=100)
    doc: dict[str, Any] = {
        "benchmark": "bf16 against float32 (autocast), real SmolLM2 entity-tracking pair",
        "machine": {
            "platform": platform.platform(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "native_bf16": cpu_native_bf16(),
            "threads": args.threads,
            "torch": torch.__version__,
        },
    }
    floor = matmul_floor()
    doc["floor"] = floor
    print("floor", floor, flush=True)

    batch = task.batch(student, "probe", 32)
    tokens = batch.tokens
    flops = forward_flops(student, tokens.numel())
    fwd: dict[str, Any] = {"prompts": 32, "tokens": int(tokens.numel()), "gflop": flops / 1e9}
    for name, bf16 in (("float32", False), ("bfloat16", True)):
        with torch.no_grad():
            student(tokens[:2])  # warm-up
            t, gflops, _ = paired(lambda: student(tokens), bf16, args.repeat)
        fwd[name] = {"seconds": t, "floor_gflops": gflops,
                     "ratio_to_floor": t / (flops / gflops / 1e9)}  # fmt: skip
    fwd["bf16_speedup"] = fwd["float32"]["seconds"] / fwd["bfloat16"]["seconds"]
    doc["forward"] = fwd
    print("forward", fwd, flush=True)

    means = compute_means(student, batch.ablation_tokens)
    heads = [Head(args.layer, h) for h in range(model_facts(student).n_heads)]
    sweep: dict[str, Any] = {"layer": args.layer, "heads": len(heads), "prompts": 32}
    own = prompt_scores(student, task, "probe", 32, "prob")
    per: dict[str, torch.Tensor] = {}
    one_per_pass = AblationConfig(metric="prob", heads_per_pass=1)
    for name, bf16 in (("float32", False), ("bfloat16", True)):
        with torch.no_grad(), _autocast(bf16):
            t0 = time.perf_counter()
            per[name] = ablated_scores(student, batch, heads, means, one_per_pass, False, False)
            sweep[name] = {"seconds_per_head": (time.perf_counter() - t0) / len(heads)}
    d32 = own[None, :] - per["float32"].float()
    d16 = own[None, :] - per["bfloat16"].float()
    diff = (d32.mean(1) - d16.mean(1)).abs()
    # float32 percentile-bootstrap 95% intervals of each head's impact, over the prompts
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, d32.shape[1], (1000, d32.shape[1]), generator=g)
    boots = d32[:, idx].mean(2)
    width = boots.quantile(0.975, 1) - boots.quantile(0.025, 1)
    sweep |= {
        "impact_float32": d32.mean(1).tolist(),
        "impact_bfloat16": d16.mean(1).tolist(),
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "mean_ci_width": float(width.mean()),
        "max_diff_over_width": float((diff / width).max()),
        "order_same": d32.mean(1).argsort().tolist() == d16.mean(1).argsort().tolist(),
        "bf16_speedup": sweep["float32"]["seconds_per_head"]
        / sweep["bfloat16"]["seconds_per_head"],
    }
    doc["sweep_pass"] = sweep
    print("sweep", {k: v for k, v in sweep.items() if not k.startswith("impact")}, flush=True)

    ev: dict[str, Any] = {"prompts": 100}
    scores = {}
    for name, bf16 in (("float32", False), ("bfloat16", True)):
        with _autocast(bf16):
            t, scores[name] = _best(lambda: prompt_scores(student, task, "val", 100), 1)
        ev[name] = {"seconds": t, "accuracy": float(scores[name].mean())}
    ev["agreement"] = float((scores["float32"] == scores["bfloat16"]).float().mean())
    ev["bf16_speedup"] = ev["float32"]["seconds"] / ev["bfloat16"]["seconds"]
    doc["evaluation"] = ev
    print("evaluation", ev, flush=True)

    step: dict[str, Any] = {"batch_size": 8, "steps": 3, "condition": "ce+align"}
    pairs = [(Head(args.layer, h), Head(args.layer, h)) for h in range(3)]
    state = {k: v.clone() for k, v in student.state_dict().items()}
    base = TrainConfig(condition="ce+align", steps=3, batch_size=8, lr=2e-4, eval_every=0)
    losses = {}
    for name in ("float32", "bfloat16"):
        student.load_state_dict(state)
        cfg = dataclasses.replace(base, dtype=name)
        trainer = CircuitTrainer(student, teacher, task, HeadMap(pairs, kind="bench"), cfg,
                                 run=TrainRun(teacher_cache=True))  # fmt: skip
        trainer.feed.all() if hasattr(trainer, "feed") else None  # the teacher outside the timing
        t0 = time.perf_counter()
        hist = trainer.train(progress=False)
        step[name] = {"seconds_per_step": (time.perf_counter() - t0) / 3}
        losses[name] = [float(r["loss"]) for r in hist if "loss" in r]
    student.load_state_dict(state)
    step["loss_float32"], step["loss_bfloat16"] = losses["float32"], losses["bfloat16"]
    step["bf16_speedup"] = (
        step["float32"]["seconds_per_step"] / step["bfloat16"]["seconds_per_step"]
    )
    doc["train_step"] = step
    print("train step", step, flush=True)
    atomic_write_text(OUT, json.dumps(json_ready(doc), indent=1))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
