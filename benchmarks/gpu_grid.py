"""The real table's cost on a GPU: ``run_experiment`` with the real full settings
(``ExperimentConfig.real()``: 100 steps, batch 8, the same sweeps, map and measurements) on
models of the same-family pair's shapes, SmolLM2-135M (30 x 9 heads) teaching its 22-layer
student, with random weights: the GPU machine cannot hold the GGUF (it is larger than what
travels there), and a cell's time does not depend on the weights' values (no step stops early).
Accuracies here mean nothing; the seconds are the point. Per setup and per cell they come from
the run's own ``setup.json`` and ``cell.json``; the grid's estimate is the measured setup and
mean cell time times the grid's counts (same-family: 2 tasks x 3 seeds x 7 conditions;
cross-family: 2 tasks x 1 seed x 6 conditions, priced at the same-family cell's time).

    python benchmarks/gpu_grid.py config --dir .gpu/smollm2-135m   # here: config + tokenizer
    python benchmarks/gpu_grid.py run --config-dir DIR --device cuda --dir /tmp/grid
    python benchmarks/gpu_grid.py summary --dir /tmp/grid --out gpu-grid.json

``config`` writes SmolLM2-135M's config and tokenizer, without its weights (3.4 MB: what
travels to a GPU machine, with ``.whl`` wheels of what its image lacks, as the device notes
say); ``run`` resumes what an interrupted run left; ``summary`` reads whatever cells are done.
Measured: ``benchmarks/results/gpu-grid.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

STUDENT_LAYERS = 22  # the shipped students keep 22 of the 30 layers
GRID = {"same_family_cells": 2 * 3 * 7, "cross_family_cells": 2 * 1 * 6, "setups": 4}


def run(args: argparse.Namespace) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    import circuitlens as cl
    from circuitlens.experiments.config import ALL_CONDITIONS, TASKS

    root = Path(args.dir)
    models = root / "models"
    for name, layers in (("teacher", args.teacher_layers), ("student", args.student_layers)):
        if not (models / name / "config.json").exists():
            config = AutoConfig.from_pretrained(args.config_dir)
            if layers is not None:
                config.num_hidden_layers = layers
            torch.manual_seed(0)
            AutoModelForCausalLM.from_config(config).save_pretrained(models / name)
            AutoTokenizer.from_pretrained(args.config_dir).save_pretrained(models / name)
    spec = {"teacher": str(models / "teacher"), "student": str(models / "student")}
    cfg = cl.ExperimentConfig.real(
        quick=args.quick,
        tasks=tuple(args.tasks),
        seeds=(0,),
        models={t: dict(spec) for t in TASKS},
        conditions=tuple(args.conditions) if args.conditions else ALL_CONDITIONS,
    )
    t0 = time.time()
    cl.run_experiment(cfg, root / "run", device=args.device, progress=False)
    (root / "wall.json").write_text(json.dumps({"run_experiment_s": round(time.time() - t0, 1)}))


def config(args: argparse.Namespace) -> None:
    from circuitlens.models.real import load_base_hf

    hf, tok = load_base_hf("smollm2-135m")
    hf.config.save_pretrained(args.dir)
    tok.save_pretrained(args.dir)


def summary(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(args.dir)
    facts: dict[str, Any] = {
        "benchmark": "the real table's setup and cell times on a GPU, random-weight SmolLM2 shapes",
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    try:
        import torch

        facts["torch"] = torch.__version__
        if torch.cuda.is_available():
            facts["gpu"] = torch.cuda.get_device_name()
    except ImportError:
        pass
    from circuitlens.distill.setup import Setup
    from circuitlens.experiments.cell import Cell

    setups, cells = {}, {}
    for f in sorted((root / "run").glob("*/setup.json")):
        setups[f.parent.name] = Setup.from_dict(json.loads(f.read_text())).seconds
    for f in sorted((root / "run").glob("*/*/seed*/cell.json")):
        cell = Cell.from_dict(json.loads(f.read_text()))
        cells[f"{cell.task}/{cell.condition}/seed{cell.seed}"] = cell.seconds
    facts["setup_s"], facts["cell_s"] = setups, cells
    if (root / "wall.json").exists():
        facts |= json.loads((root / "wall.json").read_text())
    if setups and cells:
        mean_setup = sum(setups.values()) / len(setups)
        mean_cell = sum(cells.values()) / len(cells)
        cells_n = GRID["same_family_cells"] + GRID["cross_family_cells"]
        facts["estimate"] = {
            "grid": GRID,
            "mean_setup_s": round(mean_setup, 1),
            "mean_cell_s": round(mean_cell, 1),
            "full_grid_s": round(GRID["setups"] * mean_setup + cells_n * mean_cell),
            "basis": "measured setups and cells of this run times the grid's counts",
        }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(facts, indent=1))
    print(json.dumps(facts, indent=1))
    return facts


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stage", choices=["config", "run", "summary"])
    ap.add_argument("--dir", default="/tmp/gpu-grid")
    ap.add_argument("--config-dir", default=None, help="SmolLM2's config.json and tokenizer")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tasks", nargs="+", default=["entity_tracking"])
    ap.add_argument("--conditions", nargs="*", default=None)
    ap.add_argument("--out", default="gpu-grid.json")
    ap.add_argument("--quick", action="store_true", help="the quick settings (a smoke test)")
    ap.add_argument("--teacher-layers", type=int, default=None, help="default: all 30")
    ap.add_argument("--student-layers", type=int, default=STUDENT_LAYERS)
    args = ap.parse_args(argv)
    {"config": config, "run": run, "summary": summary}[args.stage](args)


if __name__ == "__main__":
    main()
