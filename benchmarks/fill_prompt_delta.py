"""Add the per-prompt impacts (``AblationResult.prompt_delta``) to the exact sweeps of a run
saved before sweeps kept them, so that the ``profile`` and ``combined`` maps can read them.

A map needs the per-prompt impacts of every candidate teacher head but of the chosen student
heads only (the budget's top impacts, which the stored mean impacts already fix): this measures
every head of both models, or with ``--student map`` only the student heads of the run's map (a
head left out keeps NaN, as a screened sweep's estimates do). Only the ablated forward passes
run again (no bootstrap, no accuracy), one thread by default. Every
measured head is checked against the stored sweep: its mean ablated score must equal the
stored ``p_ablated`` (the same prompts, means and code), or nothing is written.

    python benchmarks/fill_prompt_delta.py results/reproduce-real-exact \
        results/reproduce-real-exact-profiles --tasks entity_tracking
    python benchmarks/seed_sweeps.py results/reproduce-real-exact-profiles DST \
        --tasks entity_tracking --map-method profile

``DST/<task>/setup.json`` is the source's setup with the filled sweeps (nothing else changes),
written atomically; ``seed_sweeps.py`` reads it as it reads any finished run.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from circuitlens.ablation.result import AblationResult
from circuitlens.ablation.sweep import ablated_scores, sweep_means
from circuitlens.core.io import atomic_write_text, json_text
from circuitlens.core.rundir import read_json
from circuitlens.core.types import Head
from circuitlens.experiments.config import ExperimentConfig
from circuitlens.experiments.runner import experiment_task
from circuitlens.models.registry import load_model
from circuitlens.tasks import Task
from circuitlens.tasks.metrics import prompt_scores

TOLERANCE = 1e-6  # float32 scores averaged over 32 prompts: equal code gives equal numbers


def fill(sweep: AblationResult, model: Any, task: Task, heads: list[Head]) -> AblationResult:
    """``sweep`` with the per-prompt impacts of ``heads`` measured again (NaN elsewhere)."""
    c = sweep.config
    batch = task.batch(model, c.split, c.n)
    means = sweep_means(model, task, batch, None)
    own = prompt_scores(model, task, c.split, c.n, c.metric)
    per = ablated_scores(model, batch, heads, means, c, reduce=False)
    gap = abs(float(own.double().mean()) - sweep.p_own)
    stored = torch.stack([sweep.p_ablated[h.layer, h.head] for h in heads])
    gap = max(gap, float((per.mean(1) - stored).abs().max()))
    if gap > TOLERANCE:
        raise SystemExit(
            f"{sweep.model_name}: the measured scores differ from the stored sweep's by {gap:.2e}"
            " (other prompts, means or code): not the same sweep, nothing written"
        )
    n_layers, n_heads = sweep.delta.shape
    pd = torch.full((n_layers, n_heads, len(own)), float("nan"))
    for i, h in enumerate(heads):
        pd[h.layer, h.head] = own.float() - per[i].float()
    print(f"{sweep.model_name}: {len(heads)} heads filled, largest gap to the stored {gap:.1e}")
    return replace(sweep, prompt_delta=pd)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", type=Path, help="a finished (or restored) run directory")
    ap.add_argument("dst", type=Path, help="where the filled setups go (<task>/setup.json)")
    ap.add_argument("--tasks", default="entity_tracking,theory_of_mind")
    ap.add_argument("--student", choices=("all", "map"), default="all")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = ExperimentConfig.real().with_overrides(tasks=args.tasks.split(","))
    for t in cfg.tasks:
        start = time.time()
        raw = read_json(args.src / t / "setup.json", f"the {t} setup")
        teacher = load_model(cfg.models[t]["teacher"])
        student = load_model(cfg.models[t]["student"])
        task = experiment_task(cfg, t, [teacher, student])
        for role, model in (("teacher", teacher), ("student", student)):
            sweep = AblationResult.from_dict(raw[f"{role}_sweep"])
            if not bool(sweep.exact.all()):
                raise SystemExit(f"{args.src / t}: the {role} sweep is screened, not exact")
            heads = sweep.exact_heads
            if role == "student" and args.student == "map":
                heads = sorted({Head.parse(s) for s, _ in raw["head_map"]["pairs"]})
            raw[f"{role}_sweep"] = fill(sweep, model, task, heads).to_dict()
        raw["prompt_delta_filled"] = {
            "from": str(args.src / t / "setup.json"),
            "student_heads": args.student,
            "seconds": round(time.time() - start, 1),
        }
        atomic_write_text(args.dst / t / "setup.json", json_text(raw))
        print(f"{args.dst / t / 'setup.json'}: written ({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
