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
    cmd += ["--model", "zoo", "--n", "4", "--heads-per-pass", "4", "--out", str(out), "--baselines"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=600)
    facts = json.loads(out.read_text())
    assert facts["scored_logits_max_abs_diff"] <= 1e-5
    assert facts["screened_vs_exact_max_abs_diff"] <= 1e-5
    assert facts["screened_vs_exact_ci_max_abs_diff"] <= 1e-5
    assert facts["batched_vs_1_head_max_abs_diff"] <= 1e-5
    # the slow obvious paths: one full forward per head, and TransformerLens' patching loop
    assert facts["exact_vs_naive_max_abs_diff"] <= 1e-5
    assert facts["patching_vs_tl_max_abs_diff"] <= 1e-4


def test_gpu_grid_runs_and_prices_the_grid_from_its_cells(tmp_path: Path) -> None:
    """benchmarks/gpu_grid.py: the real settings' runner on random-weight models of a given
    shape (here 2 and 1 layers, the quick settings, one condition, on the CPU), then the grid's
    price from the measured setup and cells."""
    script = str(ROOT / "benchmarks" / "gpu_grid.py")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    config_dir = tmp_path / "config"  # SmolLM2's config and tokenizer, without the weights
    config = [sys.executable, script, "config", "--dir", str(config_dir)]
    subprocess.run(config, check=True, env=env, capture_output=True)
    run = [sys.executable, script, "run", "--config-dir", str(config_dir), "--device", "cpu"]
    run += ["--dir", str(tmp_path / "grid"), "--quick"]
    run += ["--teacher-layers", "2", "--student-layers", "1"]
    subprocess.run([*run, "--conditions", "ce"], check=True, env=env, capture_output=True)
    out = tmp_path / "grid.json"
    summary = [sys.executable, script, "summary", "--dir", str(tmp_path / "grid")]
    summary += ["--out", str(out)]
    subprocess.run(summary, check=True, env=env, capture_output=True, timeout=120)
    facts = json.loads(out.read_text())
    assert list(facts["setup_s"]) == ["entity_tracking"]
    assert list(facts["cell_s"]) == ["entity_tracking/ce/seed0"]
    e = facts["estimate"]
    cells = e["grid"]["same_family_cells"] + e["grid"]["cross_family_cells"]
    expected = e["grid"]["setups"] * facts["setup_s"]["entity_tracking"]
    expected += cells * facts["cell_s"]["entity_tracking/ce/seed0"]
    assert abs(e["full_grid_s"] - expected) <= 1
