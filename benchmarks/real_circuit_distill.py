"""The paper's method proper on the real pairs: map into the teacher's circuit.

``reproduce --models real`` maps the student's heads to any teacher head, because the circuit
search on a 270-head teacher is hours on 2 CPU cores. The entity-tracking teacher's circuit was
found since (``benchmarks/real_circuit.py``, on a lent GPU: 11 heads, in
``benchmarks/results/real-circuit.json``). This run takes that circuit as given
(``ExperimentConfig.circuits``) and maps one-to-one into it: the budget is the circuit's size
(11 of the student's 198 heads, 5.6%), so the aligned map, the plain CE condition and the random
control train the same 11 student heads. The random control draws teacher heads from all heads
(the paper's control), never the aligned partner. Everything else is ``ExperimentConfig.real()``.

    python benchmarks/real_circuit_distill.py --seeds 0 1 2 --threads 2
        -> results/reproduce-real-circuit (resumable), then
           benchmarks/results/reproduce-real-circuit.json (the HTML report stays in the run
           directory: 5 MB each is too much for git; --restore and write_report rebuild it)
    python benchmarks/real_circuit_distill.py --teacher gemma3 --seeds 0
        -> the cross-family pair: the SmolLM2 student mapped into the Gemma-3 teacher's
           12-head circuit (benchmarks/results/reproduce-real-gemma3-circuit.json)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from circuitlens.experiments import ExperimentConfig, run_experiment

HERE = Path(__file__).resolve().parent
CIRCUITS = HERE / "results" / "real-circuit.json"


def config(seeds: list[int], conditions: list[str], teacher: str = "smollm2") -> ExperimentConfig:
    key = "entity_tracking" if teacher == "smollm2" else f"{teacher}:entity_tracking"
    found = json.loads(CIRCUITS.read_text())["tasks"][key]
    groups = {g: hs for g, hs in found["circuit"].items() if hs}
    n = len({h for hs in groups.values() for h in hs})
    return ExperimentConfig.real(
        teacher=teacher,
        tasks=("entity_tracking",),
        seeds=tuple(seeds),
        conditions=tuple(conditions),
        use_circuit=True,
        circuits={"entity_tracking": groups},
        random_from="all",
    ).with_overrides(budget=n, one_to_one=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument(
        "--conditions", nargs="+", default=["student", "teacher", "ce", "ce+align", "ce+rand"]
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--teacher",
        default="smollm2",
        choices=["smollm2", "gemma3"],
        help="the same-family teacher, or the cross-family pair's Gemma-3 teacher (its circuit: "
        "12 of 72 heads)",
    )
    p.add_argument("--out", type=Path, help="default results/reproduce-real[-gemma3]-circuit")
    p.add_argument("--name", help="benchmarks/results/NAME (default: the out directory's name)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    fam = "" if args.teacher == "smollm2" else f"-{args.teacher}"
    args.out = args.out or Path(f"results/reproduce-real{fam}-circuit")
    args.name = args.name or args.out.name
    t0 = time.time()
    result = run_experiment(config(args.seeds, args.conditions, args.teacher), args.out, jobs=1)
    print(result.markdown())
    print(f"{len(result.cells)} cells; this invocation {time.time() - t0:.0f} s")
    from export_run import export  # a sibling script: benchmarks/ is first on the path

    print(export(args.out, args.name, report="table"))  # the report: results/.../report.html


if __name__ == "__main__":
    main()
