"""How much of a map survives when its sweeps are screened: the committed real setups made
from screened sweeps (``reproduce-real.json``) against the same setups recomputed with exact
sweeps (``setup-exact-<task>.json``), same models, task seed, prompts (32) and options.

    python benchmarks/map_agreement.py   -> benchmarks/results/map-agreement.json

Reads committed results only (no model is run). For each task: the share of the exact map's
pairs that the screened map has, the shared student and teacher heads, whether each sweep
measured its model's most important head exactly, and the setups' wall times (the screened
setup ran on an idle machine, the exact one on a shared one: the times are what was measured,
not a like-for-like ratio).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from circuitlens.ablation.result import AblationResult
from circuitlens.distill.setup import Setup

OUT = Path(__file__).resolve().parent / "results"


def _top(r: AblationResult) -> tuple[str, float, bool]:
    flat = r.delta.flatten()
    i = int(torch.nan_to_num(flat.abs(), nan=-1.0).argmax())
    h = r.delta.shape[1]
    exact = bool(r.exact.flatten()[i]) if r.exact is not None else True
    return f"L{i // h}H{i % h}", float(flat[i]), exact


def agreement(task: str) -> dict:
    screened_run = json.loads((OUT / "reproduce-real.json").read_text())
    screened = Setup.from_dict(screened_run["setups"][task])
    exact_run = json.loads((OUT / f"setup-exact-{task}.json").read_text())
    exact = Setup.from_dict(exact_run["setups"][task])
    ps = {(str(s), str(t)) for s, t in screened.head_map.pairs}
    pe = {(str(s), str(t)) for s, t in exact.head_map.pairs}
    out = {
        "pairs": len(pe),
        "shared_pairs": len(ps & pe),
        "shared_pair_fraction": len(ps & pe) / len(pe),
        "shared_student_heads": len({s for s, _ in ps} & {s for s, _ in pe}),
        "shared_teacher_heads": len({t for _, t in ps} & {t for _, t in pe}),
        "prompts": exact.teacher_sweep.config.n,
        "methods": {
            "screened": screened.teacher_sweep.config.method,
            "exact": exact.teacher_sweep.config.method,
        },
        "setup_seconds": {"screened": screened.seconds, "exact": exact.seconds},
    }
    sweeps = {
        "teacher": (exact.teacher_sweep, screened.teacher_sweep),
        "student": (exact.student_sweep, screened.student_sweep),
    }
    for role, (exact_sweep, screened_sweep) in sweeps.items():
        head, value, _ = _top(exact_sweep)
        s_head, s_value, s_exact = _top(screened_sweep)
        out[f"{role}_most_important"] = {
            "exact": [head, value],
            "screened": [s_head, s_value, "measured" if s_exact else "estimate"],
        }
    return out


def main() -> None:
    doc = {
        "benchmark": "screened vs exact map (real same-family pair)",
        "tasks": {t: agreement(t) for t in ("entity_tracking", "theory_of_mind")},
        "target": "the screened map equals the exact map on >= 95% of its pairs",
        "computed": time.strftime("%Y-%m-%d %H:%M"),
    }
    path = OUT / "map-agreement.json"
    path.write_text(json.dumps(doc, indent=1))
    print(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
