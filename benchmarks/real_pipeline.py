"""Time every step of the method on a real pretrained pair (SmolLM2 teacher -> pruned student).

Runs the public API end to end at small sizes and writes what each step cost and what it
produced to ``benchmarks/results/real-pipeline-<task>.json`` (machine facts included):
load, evaluation, both mean-ablation sweeps, the map at the paper's budget, CE and CE + Align
training for a few steps. This is the measurement that sizes ``reproduce --models real``.

    python benchmarks/real_pipeline.py --task entity_tracking --sweep-n 16 --steps 10
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

import circuitlens as cl
from circuitlens.distill.sweeps import sweeps

OUT = Path(__file__).resolve().parent / "results"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="entity_tracking")
    p.add_argument("--sweep-n", type=int, default=16)
    p.add_argument("--test-n", type=int, default=100)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    slug = args.task.replace("_", "-")
    timings: dict[str, float] = {}
    out: dict = {"args": vars(args)}

    def timed(name: str, fn):  # noqa: ANN001, ANN202
        t = time.time()
        r = fn()
        timings[name] = round(time.time() - t, 1)
        print(f"{name}: {timings[name]} s", flush=True)
        return r

    teacher = timed("load_teacher", lambda: cl.load_model(f"real:smollm2-{slug}-teacher"))
    student = timed("load_student", lambda: cl.load_model(f"real:smollm2-{slug}-student"))
    card = teacher.circuitlens_card
    task = cl.get_task(
        args.task,
        seed=0,
        tokenizers=[teacher, student],
        n_test=max(args.test_n, args.sweep_n),
        **card["task_options"][args.task],
    )
    out["teacher_acc"] = timed(
        "eval_teacher", lambda: cl.evaluate(teacher, task, "test", args.test_n)
    )
    out["student_acc"] = timed(
        "eval_student", lambda: cl.evaluate(student, task, "test", args.test_n)
    )
    cfg = cl.DistillConfig().with_overrides(
        sweep_n=args.sweep_n,
        metric="prob",
        test_n=args.test_n,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        eval_every=0,
    )
    t_sweep, s_sweep = timed("sweeps", lambda: sweeps(teacher, student, task, cfg))
    head_map = cl.map_heads(s_sweep, t_sweep, budget=cfg.map.budget)
    out["map"] = [
        [str(s), str(t), d] for (s, t), d in zip(head_map.pairs, head_map.distances, strict=True)
    ]
    for cond in ("ce", "ce+align"):
        c = cfg.with_overrides(condition=cond)
        trainer = cl.CircuitTrainer(student, teacher, task, head_map, c.train)
        timed(f"train_{cond}_{args.steps}_steps", lambda trainer=trainer: trainer.train(False))
        out[f"acc_after_{cond}"] = cl.evaluate(student, task, "test", args.test_n)
        student = cl.load_model(f"real:smollm2-{slug}-student")  # fresh for the next condition
    out["timings_s"] = timings
    out["machine"] = {
        "cpu_count": os.cpu_count(),
        "threads": args.threads,
        "platform": platform.platform(),
        "torch": torch.__version__,
        "note": "shared machine: other jobs ran on the same 2 cores",
    }
    OUT.mkdir(exist_ok=True)
    (OUT / f"real-pipeline-{slug}.json").write_text(json.dumps(out, indent=1, default=str))
    print(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
