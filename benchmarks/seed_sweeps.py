"""Seed a new run directory with the sweeps of a finished run, so that a run that differs only
in what the sweeps do not read (the map method, the trainer's options) repeats no sweep.

The exact sweeps of a real pair take 75-82 minutes per task on this machine; a run with another
``map_method`` reads the same sweeps (``sweeps_key`` drops the map's options). The source's
``setup.json`` carries both sweeps; this writes them as the new run's ``<task>/sweeps.json``
under the key the new config computes, after checking that the source's sweeps were made with
the options the new config gives them (so the key does not vouch for sweeps of another run).

    python benchmarks/seed_sweeps.py SRC DST --tasks entity_tracking --map-method cka
    circuitlens reproduce --models real --tasks entity_tracking --conditions ce+align \
        --seeds 0 1 2 3 4 5 --map-method cka --out DST

A budget point of the curve the same way (the sweeps do not depend on the budget):

    python benchmarks/seed_sweeps.py SRC DST --tasks theory_of_mind --conditions ce,ce+align \
        --seeds 0,1,2 --budget 0.05
    circuitlens reproduce --models real --tasks theory_of_mind --conditions ce ce+align \
        --seeds 0 1 2 --budget 0.05 --out DST

The flags name the real config's selection and map method (``DST/config.json`` is written
when DST has none); the reproduce run with the same flags then reads the seeded sweeps.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from circuitlens.core.io import atomic_write_text, json_text
from circuitlens.core.rundir import MARKER
from circuitlens.distill.setup import read_setup
from circuitlens.distill.sweeps import save_sweeps, sweeps_key
from circuitlens.experiments.config import ExperimentConfig
from circuitlens.experiments.runner import experiment_task
from circuitlens.models.registry import load_model


def seed(src: Path, dst: Path, cfg: ExperimentConfig) -> None:
    """Write ``dst/<task>/sweeps.json`` for every task of ``cfg`` from ``src``'s setups, and
    ``dst``'s marker and config when it has none."""
    dst.mkdir(parents=True, exist_ok=True)
    if not (dst / "config.json").is_file():
        atomic_write_text(dst / MARKER, json.dumps({"kind": "reproduce", "seeded_from": str(src)}))
        atomic_write_text(dst / "config.json", json_text(cfg.to_dict()))
    for t in cfg.tasks:
        setup = read_setup(src / t / "setup.json", t)
        d = cfg.distill
        for role, sweep in (("teacher", setup.teacher_sweep), ("student", setup.student_sweep)):
            sc = sweep.config
            if (sc.metric, sc.n, sc.split) != (d.sweep.metric, d.sweep.n, d.sweep.split):
                raise SystemExit(
                    f"{src / t}: the {role} sweep used metric={sc.metric}, n={sc.n} on the "
                    f"{sc.split} prompts; the new config asks metric={d.sweep.metric}, "
                    f"n={d.sweep.n} on the {d.sweep.split} prompts: not the same sweep"
                )
        if setup.circuit is not None and setup.circuit.heads:
            raise SystemExit(f"{src / t}: a setup with a circuit is not supported here")
        teacher = load_model(cfg.models[t]["teacher"])
        student = load_model(cfg.models[t]["student"])
        task = experiment_task(cfg, t, [teacher, student])
        key = sweeps_key(teacher, student, task, d, None)
        save_sweeps(dst / t / "sweeps.json", key, setup.teacher_sweep, setup.student_sweep)
        print(f"{dst / t / 'sweeps.json'}: seeded from {src / t / 'setup.json'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", type=Path, help="a finished (or restored) run directory")
    ap.add_argument("dst", type=Path, help="the new run directory")
    ap.add_argument("--tasks", default="entity_tracking,theory_of_mind")
    ap.add_argument("--conditions", default="ce+align")
    ap.add_argument("--seeds", default="0,1,2,3,4,5")
    ap.add_argument("--map-method", default="impact")
    ap.add_argument("--budget", type=float, help="the map's budget (default: the config's)")
    args = ap.parse_args()
    budget = {} if args.budget is None else {"budget": args.budget}
    cfg = ExperimentConfig.real().with_overrides(
        tasks=args.tasks.split(","),
        conditions=args.conditions.split(","),
        seeds=[int(s) for s in args.seeds.split(",")],
        map_method=args.map_method,
        **budget,
    )
    seed(args.src, args.dst, cfg)


if __name__ == "__main__":
    main()
