"""Benchmark: wall time and peak memory of ``circuitlens reproduce`` from scratch.

Targets (issue 6): the full run (3 seeds, 300 steps, both tasks, every condition) within ~30
minutes on 2 CPU cores, ``--quick`` within a few minutes (we write 5). Runs into a fresh
temporary directory with the default torch threads and worker processes (``--jobs auto``),
so it measures what a user's first run costs after set-up. Results:
benchmarks/results/reproduce.json (one entry per setting).

    .venv/bin/python benchmarks/reproduce.py --quick
    .venv/bin/python benchmarks/reproduce.py          # the full run, ~10 minutes
    .venv/bin/python benchmarks/reproduce.py --out results/reproduce   # and keep the results
    .venv/bin/python benchmarks/reproduce.py --models real --quick     # real models, ~20 min

The load average before and after is recorded: on a shared machine the wall time is an upper
bound, not the idle-machine figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

OUT = Path(__file__).parent / "results" / "reproduce.json"
# issue 6 (the zoo); issue 15 (real models: --quick on the same-family pair, every condition,
# one seed, <= 20 min on 2 cores; the committed table <= 150 min)
TARGET_S = {"quick": 5 * 60, "full": 30 * 60, "real-quick": 20 * 60, "real-full": 150 * 60}


def main() -> None:
    import torch

    from circuitlens.core.io import atomic_write_text
    from circuitlens.experiments import ExperimentConfig, run_experiment
    from circuitlens.experiments.runner import auto_jobs

    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument(
        "--models", choices=["zoo", "real"], default="zoo", help="real: the same-family pair"
    )
    ap.add_argument("--out", help="keep the run here (a fresh directory; default: a temporary one)")
    ap.add_argument(
        "--jobs", default="auto", help="worker processes (default auto, the CLI's default)"
    )
    args = ap.parse_args()
    jobs = args.jobs if args.jobs == "auto" else int(args.jobs)
    setting = "quick" if args.quick else "full"
    if args.models == "real":
        setting = f"real-{setting}"
        config = ExperimentConfig.real(quick=args.quick)
    else:
        config = ExperimentConfig.quick() if args.quick else ExperimentConfig()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out) if args.out else Path(tmp) / "run"
        t0 = time.perf_counter()
        result = run_experiment(config, out, fresh=True, progress=False, jobs=jobs)
        wall = time.perf_counter() - t0
        table = result.markdown()
    cells = result.cells_frame()
    cells = cells[cells.seed.notna()]
    entry = {
        "benchmark": "reproduce",
        "setting": setting,
        "cells": len(result.cells),
        "wall_s": round(wall, 1),
        "target_s": TARGET_S[setting],
        "within_target": wall <= TARGET_S[setting],
        "setup_s": {t: s.seconds for t, s in result.setups.items()},
        "mean_cell_s": {t: round(float(g.seconds.mean()), 1) for t, g in cells.groupby("task")},
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        # the largest worker process's peak (--jobs > 1: each task's process)
        "peak_rss_worker_mb": round(
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1
        ),
        "torch_threads": torch.get_num_threads(),
        "jobs": auto_jobs(len(config.tasks)) if jobs == "auto" else jobs,
        "cpus": os.cpu_count(),
        "load_avg_1m_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "machine": platform.platform(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "config": config.to_dict(),
    }
    results = json.loads(OUT.read_text()) if OUT.is_file() else {}
    results[setting] = entry
    atomic_write_text(OUT, json.dumps(results, indent=1))
    print(json.dumps({k: v for k, v in entry.items() if k != "config"}, indent=1))
    print(table)


if __name__ == "__main__":
    main()
