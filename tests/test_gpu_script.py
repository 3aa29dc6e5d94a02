"""benchmarks/gpu.py, the GPU path's one command, runs (here on the CPU, in a tiny setting)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_gpu_script_runs_on_cpu_in_a_tiny_setting(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--device", "cpu"]
    cmd += ["--model", "zoo", "--n", "4", "--heads-per-pass", "4", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=600)
    facts = json.loads(out.read_text())
    assert facts["scored_logits_max_abs_diff"] <= 1e-5
    assert facts["screened_vs_exact_max_abs_diff"] <= 1e-5
    assert facts["screened_vs_exact_ci_max_abs_diff"] <= 1e-5
    assert facts["batched_vs_1_head_max_abs_diff"] <= 1e-5
