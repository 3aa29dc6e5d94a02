"""The models the benchmarks time: the zoo entity-tracking teacher and a 12-layer random Llama.

The benchmarks are scripts, run from the repository root as ``python benchmarks/NAME.py``:
Python puts the script's directory first on the module path, so they import this module and
each other as siblings (``from bench_models import results_dir``), without editing the path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

MODELS = ("zoo-teacher", "random-12-layer")
#: the committed results (inputs some benchmarks read, e.g. a measured head map)
RESULTS = Path(__file__).resolve().parent / "results"


def results_dir() -> Path:
    """Where a benchmark writes its results: ``benchmarks/results``, or
    ``$CIRCUITLENS_BENCH_OUT`` (set by ``benchmarks/all.py`` so that a side-by-side run
    writes into its own directory and leaves the committed results alone)."""
    d = Path(os.environ.get("CIRCUITLENS_BENCH_OUT") or RESULTS)
    d.mkdir(parents=True, exist_ok=True)
    return d


def bench_model(which: str) -> Any:
    from circuitlens import load_model
    from circuitlens.models.zoo import ZooArch, build_model, build_tokenizer

    if which == "zoo-teacher":
        return load_model("zoo:entity-tracking-teacher")
    tok = build_tokenizer()
    arch = ZooArch(d_model=128, n_layers=12, n_heads=8, n_kv_heads=4, d_mlp=256)
    return load_model(build_model(arch, len(tok), seed=0), tokenizer=tok)
