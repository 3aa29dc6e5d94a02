"""The task circuit of a real pretrained teacher, found with the public API, and its control.

For each task: `find_circuit` in the shipped SmolLM2 teacher (entity tracking: the Prakash
path-patching plan; theory of mind: activation patching of z, screened above 100 heads), its
faithfulness (accuracy with every head outside the circuit mean-ablated, against the full model),
and the same measurement for random circuits of the same size (the control): a circuit that
keeps the task's accuracy where random sets of as many heads do not is a real finding. Writes
``benchmarks/results/real-circuit.json`` with timings and machine facts (atomically, task by
task, so an interrupted run keeps the tasks already done and skips them when run again; a
task's circuit search keeps its finished stages in ``results/real-circuit-stages/<task>``
and resumes after them).

    python benchmarks/real_circuit.py --n 32 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from pathlib import Path

import torch

import circuitlens as cl
from circuitlens.circuits.find import circuit_accuracy
from circuitlens.core.io import atomic_write_text

OUT = Path(__file__).resolve().parent / "results" / "real-circuit.json"
STAGES = Path(__file__).resolve().parents[1] / "results" / "real-circuit-stages"  # not in git


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", default=["entity_tracking", "theory_of_mind"])
    p.add_argument("--n", type=int, default=32, help="prompts for patching and faithfulness")
    p.add_argument("--random", type=int, default=5, help="random circuits of the same size")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--device", default=None, help="e.g. cuda (default: the CPU)")
    p.add_argument(
        "--teacher",
        default="smollm2",
        choices=["smollm2", "gemma3"],
        help="the same-family teachers, or the cross-family pair's (results keyed gemma3:<task>)",
    )
    p.add_argument("--stages", type=Path, default=STAGES, help="where searches keep stages")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    doc = json.loads(args.out.read_text()) if args.out.exists() else {"tasks": {}}
    doc.update(
        {
            "benchmark": "find_circuit on the real teachers, with random circuits",
            "args": {k: str(v) for k, v in vars(args).items()},
            "machine": {
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            },
        }
    )
    for name in args.tasks:
        key = name if args.teacher == "smollm2" else f"{args.teacher}:{name}"
        if key in doc["tasks"]:
            print(f"{key}: done already (delete it from {args.out} to measure again)")
            continue
        slug = name.replace("_", "-")
        t0 = time.time()
        spec = f"real:{args.teacher}-{slug}-teacher"
        teacher = cl.load_model(spec, device=args.device)
        task = cl.get_task(name, model=teacher, seed=0, n_test=max(args.n, 100))
        load_s = time.time() - t0
        t0 = time.time()
        stages = args.stages / key.replace(":", "-")  # resumes an interrupted search
        circuit = cl.find_circuit(teacher, task, cl.CircuitConfig(n=args.n), checkpoint_dir=stages)
        find_s = time.time() - t0
        heads = circuit.heads
        everyone = [
            cl.Head(layer, h)
            for layer in range(teacher.cfg.n_layers)
            for h in range(teacher.cfg.n_heads)
        ]
        rng = random.Random(args.seed)
        t0 = time.time()
        controls = []
        for _ in range(args.random if heads else 0):
            drawn = rng.sample(everyone, len(heads))
            controls.append(
                {
                    "heads": [str(h) for h in drawn],
                    "circuit_accuracy": circuit_accuracy(teacher, task, drawn, args.n),
                }
            )
        control_s = time.time() - t0
        accs = [c["circuit_accuracy"] for c in controls]
        doc["tasks"][key] = {
            "model": spec,
            "n_heads_total": len(everyone),
            "circuit": {g: [str(h) for h in hs] for g, hs in circuit.groups.items()},
            "n_circuit_heads": len(heads),
            "method": circuit.meta.get("method"),
            "full_accuracy": circuit.meta.get("full_accuracy"),
            "circuit_accuracy": circuit.meta.get("circuit_accuracy"),
            "faithfulness": circuit.meta.get("faithfulness"),
            "before_pruning": circuit.meta.get("before_pruning"),
            "random_circuits": controls,
            "random_circuit_accuracy_mean": sum(accs) / len(accs) if accs else None,
            "seconds": {
                "load": round(load_s, 1),
                "find_circuit": round(find_s, 1),
                "random": round(control_s, 1),
            },
            # this task's own run (the top-level args and machine are the latest run's)
            "args": doc["args"],
            "machine": doc["machine"],
            "date": time.strftime("%Y-%m-%d %H:%M"),
        }
        atomic_write_text(args.out, json.dumps(doc, indent=1))
        r = doc["tasks"][key]
        print(
            f"{key}: {len(heads)} heads, circuit-only {r['circuit_accuracy']} of full "
            f"{r['full_accuracy']} (random same size: {r['random_circuit_accuracy_mean']}); "
            f"find_circuit {find_s:.0f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
