"""The answer's pilot: which budget puts CE in the 0.70-0.85 regime, on validation prompts only.

For one task of an answer config (``configs/answer/<task>.toml``), on the real same-family
pair: the student's exact mean-ablation sweep on the ``probe`` prompts (the ones that choose
the heads, as the confirmatory run will choose them), then CE alone at each candidate budget
(a count of student heads, the sweep's most important), trained to convergence as the config
trains (``patience``, ``steps``, ``eval_every``, ``eval_n``) on the first pilot seed, scanning
the budgets from the most heads down (:func:`choose_budget`: one run at the grid's smallest lr
rules a budget out when it ends above the regime; the first that does not gets the whole grid);
the chosen budget and lr are then run at the other pilot seeds. The test prompts are never
read: only ``val`` (the trainer's evaluations) and ``probe`` (the sweep).

The task is built exactly as the confirmatory run builds it (the runner's split sizes), so the
sweep, the heads and the validation prompts are the ones it will use. The pilot seeds (100,
101, 102) are not the confirmatory seeds. Every finished cell is written at once to the
results file (``benchmarks/results/answer-pilot-<task>.json``) and skipped on a rerun.

    python benchmarks/answer_pilot.py configs/answer/theory-of-mind.toml --budgets 5 3 2 1

When no head count puts CE in the regime, the second lever is the number of distinct training
prompts (``TrainConfig.train_prompts``), scanned the same way at one head count:

    python benchmarks/answer_pilot.py configs/answer/theory-of-mind.toml \
        --budget 5 --prompts 64 32 16

Then, once the design is committed, ``--seed-run DIR`` measures the teacher's exact sweep
(kept in the same results file, so that it resumes) and seeds the confirmatory run directory
with the config and both sweeps (``<task>/sweeps.json``, keyed as the runner keys it), so the
run does not repeat the student's sweep: ``circuitlens run CONFIG --out DIR`` then starts at
the map.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import circuitlens as cl
from circuitlens.ablation.result import AblationResult
from circuitlens.ablation.sweep import ablation_sweep
from circuitlens.core.io import atomic_write_text, json_ready
from circuitlens.core.rundir import MARKER
from circuitlens.core.types import HeadMap
from circuitlens.distill.sweeps import save_sweeps, sweeps_key
from circuitlens.distill.trainer import CircuitTrainer, TrainRun
from circuitlens.experiments.config import ExperimentConfig
from circuitlens.experiments.lr_choice import choose_lr
from circuitlens.experiments.runner import experiment_task
from circuitlens.mapping.map import choose_student_heads

RESULTS = Path(__file__).parent / "results"
REGIME = (0.70, 0.85)
PILOT_SEEDS = (100, 101, 102)


def _save(path: Path, doc: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(json_ready(doc), indent=1))


def _cell(teacher: Any, student0: dict, student: Any, task: Any, heads: list, cfg: Any) -> dict:
    """CE on ``heads`` under ``cfg`` (a TrainConfig), from the untrained student's weights
    ``student0``; the validation curve, the kept step and its accuracy."""
    student.load_state_dict(student0)
    head_map = HeadMap([(h, h) for h in heads], kind="pilot-ce")  # CE reads no partner
    t0 = time.time()
    trainer = CircuitTrainer(
        student, teacher, task, head_map, cfg, run=TrainRun(teacher_cache=True)
    )
    history = trainer.train(progress=False)
    curve = [(int(r["step"]), float(r["val_accuracy"])) for r in history if "val_accuracy" in r]
    kept = trainer.kept_step
    best = max((a for s, a in curve if s == kept), default=float("nan"))
    return {
        "lr": cfg.lr,
        "seed": cfg.seed,
        "kept_step": kept,
        "steps": trainer.state.step,
        "val_kept": best,
        "val_curve": curve,
        "seconds": round(time.time() - t0, 1),
    }


def choose_budget(
    budgets: list[int], grid: tuple[float, ...], val: Callable[[int, float], float]
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The regime's budget, scanning ``budgets`` from the most heads down (or, the same scan,
    counts of distinct training prompts from the most down, under the key ``budget``): a
    budget whose CE at the grid's smallest lr ends above the regime's top is out of it at any
    lr (a larger lr converges at least as far within the step cap, so one run rules it out);
    the first budget that is not gets the whole grid, and is chosen if CE at its chosen lr
    ends at or below the top (the record says whether it also reaches the bottom); else the
    scan goes on. ``val(budget, lr)``: the first pilot seed's best kept validation accuracy.
    Returns the choice (None: every budget above the regime) and the scan's record."""
    lo, hi = REGIME
    scan: list[dict[str, Any]] = []
    for budget in budgets:
        first = val(budget, min(grid))
        if first > hi:
            scan.append({"budget": budget, "val_kept": {min(grid): first}, "in_regime": False})
            continue
        vals = {lr: val(budget, lr) for lr in grid}
        lr = choose_lr(vals)
        scan.append({"budget": budget, "val_kept": vals, "lr": lr})
        if vals[lr] <= hi:
            return {"budget": budget, "lr": lr, "in_regime": lo <= vals[lr]}, scan
    return None, scan


def seed_run(
    directory: Path,
    cfg: ExperimentConfig,
    doc: dict,
    out: Path,
    teacher: Any,
    student: Any,
    task: Any,
    s_sweep: AblationResult,
) -> None:
    """The teacher's sweep (as :func:`circuitlens.distill.sweeps.sweeps` runs it) and a new
    run directory holding the config and both sweeps."""
    (name,) = cfg.tasks
    d = cfg.distill
    if "teacher_sweep" in doc:
        t_sweep = AblationResult.from_dict(doc["teacher_sweep"])
    else:
        t0 = time.time()
        base = student if d.map.teacher_baseline == "student" else None
        t_sweep = ablation_sweep(teacher, task, d.sweep, baseline_from=base).named("teacher")
        doc["teacher_sweep"] = t_sweep.to_dict()
        doc["teacher_sweep_seconds"] = round(time.time() - t0, 1)
        _save(out, doc)
    if directory.exists() and any(directory.iterdir()):
        raise SystemExit(f"{directory} is not empty: seed a new directory")
    (directory / name).mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        directory / MARKER, json.dumps({"kind": "reproduce", "seeded_from": str(out)})
    )
    atomic_write_text(directory / "config.json", json.dumps(json_ready(cfg.to_dict()), indent=1))
    key = sweeps_key(teacher, student, task, d, None)
    save_sweeps(directory / name / "sweeps.json", key, t_sweep, s_sweep.named("student"))
    print(f"seeded {directory}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("config", help="the answer config of one task (configs/answer/*.toml)")
    ap.add_argument("--budgets", type=int, nargs="+", default=[], help="head counts")
    ap.add_argument(
        "--prompts",
        type=int,
        nargs="+",
        default=[],
        help="distinct training prompt counts (TrainConfig.train_prompts) to scan at --budget",
    )
    ap.add_argument("--budget", type=int, help="the head count of the --prompts scan")
    ap.add_argument("--seed-run", type=Path, help="seed this confirmatory run directory")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = ExperimentConfig.load(args.config)
    (name,) = cfg.tasks
    out = RESULTS / f"answer-pilot-{name}.json"
    doc = json.loads(out.read_text()) if out.is_file() else {}
    doc.setdefault("config_file", args.config)
    doc.setdefault("cells", {})
    doc["regime"] = list(REGIME)
    doc["machine"] = {"platform": platform.platform(), "threads": args.threads}
    teacher = cl.load_model(cfg.models[name]["teacher"])
    student = cl.load_model(cfg.models[name]["student"])
    task = experiment_task(cfg, name, [teacher, student])

    sweep_cfg = cfg.distill.sweep
    if "student_sweep" in doc:
        s_sweep = AblationResult.from_dict(doc["student_sweep"])
    else:
        t0 = time.time()
        s_sweep = ablation_sweep(student, task, sweep_cfg, progress=True)
        doc["student_sweep"] = s_sweep.to_dict()
        doc["sweep_seconds"] = round(time.time() - t0, 1)
        _save(out, doc)
        print(f"student sweep: {doc['sweep_seconds']} s", flush=True)

    if args.seed_run is not None:
        seed_run(args.seed_run, cfg, doc, out, teacher, student, task, s_sweep)
        return
    student0 = {k: v.clone() for k, v in student.state_dict().items()}
    train = cfg.distill.train
    grid = train.lr_grid or (train.lr,)

    def run(budget: int, lr: float, seed: int, prompts: int | None = None) -> dict:
        pool = "" if prompts is None else f"/prompts={prompts}"
        key = f"budget={budget}{pool}/lr={lr!r}/seed={seed}"
        if key not in doc["cells"]:
            heads = choose_student_heads(s_sweep, budget)
            c = dataclasses.replace(
                train, condition="ce", lr=lr, seed=seed, lr_grid=None, train_prompts=prompts
            )
            doc["cells"][key] = _cell(teacher, student0, student, task, heads, c) | {
                "budget": budget,
                "train_prompts": prompts,
                "heads": [str(h) for h in heads],
            }
            _save(out, doc)
            r = doc["cells"][key]
            print(
                f"{key}: val {r['val_kept']:.3f} at step {r['kept_step']} ({r['seconds']} s)",
                flush=True,
            )
        return doc["cells"][key]

    first = PILOT_SEEDS[0]
    if args.prompts:
        if args.budget is None:
            raise SystemExit("--prompts scans at one head count: give --budget")
        budget = args.budget
        pick, scan = choose_budget(
            args.prompts, grid, lambda n, lr: run(budget, lr, first, n)["val_kept"]
        )
        doc["prompts_scan"] = {"budget": budget, "scan": scan}
        doc["prompts_choice"] = pick
        _save(out, doc)
        if pick is None:
            print("no training prompt count at or below the regime's top", flush=True)
            return
        n, lr = pick["budget"], pick["lr"]
        vals = [run(budget, lr, seed, n)["val_kept"] for seed in PILOT_SEEDS]
        doc["prompts_choice"] = {"budget": budget, "train_prompts": n, "lr": lr} | {
            "in_regime": pick["in_regime"],
            "val_kept_seeds": vals,
            "val_kept_mean": sum(vals) / len(vals),
        }
        _save(out, doc)
        print(json.dumps(doc["prompts_choice"]), flush=True)
        return
    pick, scan = choose_budget(args.budgets, grid, lambda b, lr: run(b, lr, first)["val_kept"])
    doc["budget_scan"] = scan
    if pick is None:
        doc["budget_choice"] = None
        _save(out, doc)
        print("no budget at or below the regime's top: scan fewer heads", flush=True)
        return
    doc["budget_choice"] = pick
    _save(out, doc)
    budget, lr = pick["budget"], pick["lr"]
    vals = [run(budget, lr, seed)["val_kept"] for seed in PILOT_SEEDS]
    doc["budget_choice"]["val_kept_seeds"] = vals
    doc["budget_choice"]["val_kept_mean"] = sum(vals) / len(vals)
    _save(out, doc)
    print(json.dumps(doc["budget_choice"]), flush=True)


if __name__ == "__main__":
    main()
