"""Benchmark: a training step with the teacher cache vs the teacher run live at every step.

On the real SmolLM2 entity-tracking pair (30-layer teacher, 22-layer student; the 26-pair map
of ``benchmarks/results/real-pipeline-entity-tracking.json``) and on the zoo pair, per
condition: seconds per step with ``teacher_cache=False`` (the teacher runs at every step) and
with the cache (filled once before the first step; its one pass is timed apart, since every
condition of a seed shares it). Results: ``benchmarks/results/teacher-cache.json``.

    .venv/bin/python benchmarks/teacher_cache.py [--steps 10] [--threads 1]
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
from circuitlens.core.types import HeadMap
from circuitlens.distill.teacher_cache import TeacherCache
from circuitlens.distill.trainer import CircuitTrainer, TrainConfig, TrainRun

OUT = Path(__file__).resolve().parent / "results"


def _pair(which: str) -> tuple:
    if which == "real":
        teacher = cl.load_model("real:smollm2-entity-tracking-teacher")
        student = cl.load_model("real:smollm2-entity-tracking-student")
        pipe = json.loads((OUT / "real-pipeline-entity-tracking.json").read_text())
        head_map = HeadMap(pairs=[(s, t) for s, t, _ in pipe["map"]])
    else:
        teacher = cl.load_model("zoo:entity-tracking-teacher")
        student = cl.load_model("zoo:entity-tracking-student")
        head_map = HeadMap(pairs=[("L1H3", "L2H0")])
    task = cl.get_task("entity_tracking", model=teacher, tokenizers=[teacher, student], seed=0)
    return teacher, student, task, head_map


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", nargs="+", default=["real", "zoo"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for which in args.models:
        teacher, student, task, head_map = _pair(which)
        start = {n: p.detach().clone() for n, p in student.named_parameters()}
        for condition in ("ce+align", "kd"):
            cfg = TrainConfig(
                condition=condition, steps=args.steps, batch_size=args.batch_size, lr=5e-5,
                eval_every=0, checkpoint_every=0,
            )  # fmt: skip
            row: dict = {"models": which, "condition": condition, "pairs": len(head_map)}
            for mode in ("live", "cached"):
                with torch.no_grad():
                    for n, p in student.named_parameters():
                        p.copy_(start[n])
                cache = TeacherCache() if mode == "cached" else False
                trainer = CircuitTrainer(
                    student, teacher, task, head_map, cfg, run=TrainRun(teacher_cache=cache)
                )
                if mode == "cached":
                    t = time.perf_counter()
                    trainer.teacher_outputs()
                    row["cache_fill_s"] = round(time.perf_counter() - t, 2)
                t = time.perf_counter()
                trainer.train(progress=False)
                row[f"{mode}_s_per_step"] = round((time.perf_counter() - t) / args.steps, 3)
            row["speedup"] = round(row["live_s_per_step"] / row["cached_s_per_step"], 2)
            print(row, flush=True)
            rows.append(row)
        del teacher, student
    result = {
        "benchmark": "teacher_cache",
        "args": vars(args),
        "rows": rows,
        "note": "live: teacher_cache=False (the teacher runs at every step); cached: the "
        "teacher's outputs filled once before step 1 (cache_fill_s, shared by every condition "
        "of a seed), then steps that never run the teacher. Student logits are computed at "
        "the answer position only in both modes.",
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "threads": args.threads,
            "load_avg_at_end": os.getloadavg(),
        },
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    (results_dir() / "teacher-cache.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result["rows"], indent=1))


if __name__ == "__main__":
    main()
