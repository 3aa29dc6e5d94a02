"""Benchmark: time per training step of the circuit trainer on the zoo entity-tracking pair.

Conditions timed: ``ce`` (mapped heads, no CKA), ``ce+align`` (mapped heads + CKA term) and
``full-ce`` (the whole student). The head map is the ablation map at the default budget.
Results: benchmarks/results/train_step.json

    .venv/bin/python benchmarks/train_step.py [--steps 30] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
from bench_models import results_dir

OUT = results_dir() / "train_step.json"


def main() -> None:
    from circuitlens import get_task, load_model
    from circuitlens.ablation.config import AblationConfig
    from circuitlens.ablation.sweep import ablation_sweep
    from circuitlens.distill.trainer import CircuitTrainer, TrainConfig
    from circuitlens.mapping.map import map_heads

    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(1)
    teacher = load_model("zoo:entity-tracking-teacher")
    task = get_task("entity_tracking", seed=0, n_test=100)
    student = load_model("zoo:entity-tracking-student")
    sweep = AblationConfig(metric="accuracy", n=100)
    head_map = map_heads(
        ablation_sweep(student, task, sweep, progress=False),
        ablation_sweep(teacher, task, sweep, baseline_from=student, progress=False),
        budget=0.13,
    )
    start = {n: p.detach().clone() for n, p in student.named_parameters()}
    rows = []
    for condition in ("ce", "ce+align", "full-ce"):
        with torch.no_grad():
            for n, p in student.named_parameters():
                p.copy_(start[n])
        cfg = TrainConfig(
            condition=condition, steps=args.steps, batch_size=args.batch_size, eval_every=0
        )
        trainer = CircuitTrainer(student, teacher, task, head_map, cfg)
        trainer.teacher_outputs()  # the teacher's one pass, shared by the conditions: apart
        t0 = time.perf_counter()
        trainer.train(progress=False)  # the public loop: hooks installed once, no evaluation
        dt = (time.perf_counter() - t0) / args.steps
        rows.append(
            {
                "condition": condition,
                "ms_per_step": round(1000 * dt, 2),
                "param_fraction": round(trainer.fraction.param_fraction, 4),
                "heads": trainer.fraction.heads,
            }
        )
    base = {r["condition"]: r["ms_per_step"] for r in rows}
    result = {
        "benchmark": "train_step",
        "batch_size": args.batch_size,
        "steps": args.steps,
        "pairs": len(head_map),
        "torch_threads": 1,
        "machine": platform.platform(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "rows": rows,
        "cka_overhead_ratio": round(base["ce+align"] / base["ce"], 3),
        "circuit_vs_full_ratio": round(base["ce"] / base["full-ce"], 3),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
