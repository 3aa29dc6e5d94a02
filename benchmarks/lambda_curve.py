"""The λ curve on the real same-family pair: CE + Align at each CKA weight against CE, the seed as
the unit (issue 25, item 5: the λ sweep on theory of mind with 3 seeds).

Reads a ``circuitlens reproduce --lam ...`` directory (one run directory per point,
``lam=0.3/``; CE's cells are the same computation at every λ and were copied from the first
point) and keeps, per point, the seeds asked for that have a finished CE + Align cell:

    python benchmarks/lambda_curve.py results/lambda --lams 0.1,0.3,1,3 --seeds 0,1,2

writes ``benchmarks/results/lambda-real-tom.json`` (per point and seed: accuracy, held-out CKA
of the pairs before and after training with its null; per point: the seed-level comparison
with CE on the same seeds, Holm-adjusted across the points) and ``lambda-real-tom.md``.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

from map_methods import save

from circuitlens.experiments.curves import point_name
from circuitlens.experiments.result import ExperimentResult
from circuitlens.experiments.stats import compare_family, compare_seeds

OUT = Path(__file__).resolve().parent / "results"


def _cells(result: ExperimentResult, task: str, condition: str, seeds: list[int]) -> dict:
    return {
        c.seed: c
        for c in result.cells
        if c.task == task and c.condition == condition and c.seed in seeds
    }


def collect(directory: Path, lams: list[float], seeds: list[int], task: str) -> dict[str, Any]:
    rows, family, points = [], [], []
    for lam in lams:
        result = ExperimentResult.load(directory / point_name("lam", lam))
        ce = _cells(result, task, "ce", seeds)
        align = _cells(result, task, "ce+align", seeds)
        for c in align.values():
            rows.append(
                {
                    "lam": lam,
                    "seed": c.seed,
                    "accuracy": c.accuracy,
                    "ce_accuracy": ce[c.seed].accuracy if c.seed in ce else None,
                    "cka_before": c.mean_cka_before,
                    "cka_after": c.mean_cka_after,
                    "cka_null_after": float(c.cka_after.null_mean.mean()),
                    "circuit_accuracy": c.circuit_accuracy,
                }
            )
        common = sorted(set(ce) & set(align))
        acc = [align[s].accuracy for s in common]
        point = {
            "lam": lam,
            "seeds": common,
            "accuracy": statistics.fmean(acc) if acc else None,
            "accuracy_sd": statistics.stdev(acc) if len(acc) > 1 else None,
            "ce_accuracy": statistics.fmean(ce[s].accuracy for s in common) if common else None,
            "cka_after": statistics.fmean(align[s].mean_cka_after for s in common)
            if common
            else None,
        }
        points.append(point)
        if len(common) >= 2:
            family.append(
                compare_seeds(
                    {s: list(align[s].test_correct) for s in common},
                    {s: list(ce[s].test_correct) for s in common},
                    f"ce+align (λ={lam:g})",
                    "ce",
                )
            )
    comparisons = [vars(c) for c in compare_family(family)] if family else []
    return {"task": task, "points": points, "rows": rows, "comparisons": comparisons}


def markdown(doc: dict[str, Any]) -> str:
    import pandas as pd

    pts = pd.DataFrame(doc["points"]).assign(seeds=lambda d: d.seeds.map(lambda s: str(len(s))))
    parts = [f"{doc['task']}: CE + Align at each λ (mean over the seeds with a finished cell)", ""]
    parts += [pts.to_markdown(index=False, floatfmt=".3f"), ""]
    if doc["comparisons"]:
        cols = ["a", "b", "n_seeds", "mean_diff", "ci_low", "ci_high", "p_sign_flip", "p_holm"]
        comp = pd.DataFrame(doc["comparisons"])[[*cols, "mdd"]]
        parts += ["Against CE on the same seeds (sign-flip p over seeds, Holm across λ):", ""]
        parts += [comp.to_markdown(index=False, floatfmt=".3f")]
    return "\n".join(parts) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("directory", type=Path, help="the reproduce --lam directory")
    ap.add_argument("--lams", default="0.1,0.3,1,3")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--task", default="theory_of_mind")
    ap.add_argument("--name", default="lambda-real-tom")
    args = ap.parse_args()
    lams = [float(x) for x in args.lams.split(",")]
    seeds = [int(x) for x in args.seeds.split(",")]
    doc = {
        "benchmark": "λ curve (CE + Align against CE)",
        **collect(args.directory, lams, seeds, args.task),
    }
    save(args.name, doc, markdown(doc))


if __name__ == "__main__":
    main()
