"""benchmarks/gpu_scale.py, the paper-scale GPU benchmark's one command: here on the CPU at a
tiny width (the real Llama-3 shapes scaled by 1/64, 3 layers, GQA kept), every stage on."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_scale.py"
STAGES = [
    "build_teacher",
    "build_student_1b",
    "build_student_1b_train",
    "build_student_3b_train",
    "sweep_teacher_exact",
    "sweep_teacher_screened",
    "sweep_student_1b_exact",
    "sweep_student_1b_screened",
    "activation_patching",
    "path_patch_teacher",
    "teacher_cache",
    "train_step_8b_1b",
    "train_step_8b_3b",
    "quick_pipeline_8b_1b",
]


def _times(node: Any, key: str = "") -> list[tuple[str, Any]]:
    """Every time in the JSON (keys ``seconds``, ``*_s``, ``seconds_per_*``), by its path."""
    if isinstance(node, dict):
        return [t for k, v in node.items() for t in _times(v, f"{key}.{k}")]
    if isinstance(node, list):
        return [t for i, v in enumerate(node) for t in _times(v, f"{key}[{i}]")]
    name = key.rsplit(".", 1)[-1]
    is_time = name == "seconds" or name.endswith("_s") or name.startswith("seconds_per")
    return [(key, node)] if is_time and not name.endswith("budget_s") else []


def _module() -> Any:
    sys.path.insert(0, str(SCRIPT.parent))
    import gpu_scale

    return gpu_scale


def test_gpu_scale_runs_every_stage_on_cpu_at_a_tiny_width(tmp_path: Path) -> None:
    out = tmp_path / "gpu_scale.json"
    cmd = [sys.executable, str(SCRIPT), "--device", "cpu", "--dtype", "float32"]
    cmd += ["--width-scale", "1/64", "--layers", "3", "--n", "4", "--out", str(out)]
    # the quick pipeline at a few prompts and steps (the quick settings' shape otherwise)
    cmd += ["--quick-steps", "2", "--quick-sweep-n", "4", "--quick-test-n", "4"]
    cmd += ["--quick-eval-n", "4", "--quick-cka-eval-n", "8", "--quick-batch-size", "8"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - t0
    assert done.returncode == 0, done.stderr[-3000:]
    facts = json.loads(out.read_text())

    stages = facts["stages"]
    assert list(stages) == STAGES
    bad = {k: v.get("error") or v.get("reason") for k, v in stages.items() if v["status"] != "ok"}
    assert not bad
    times = _times(stages)
    assert len(times) > 30
    for where, value in times:
        assert isinstance(value, int | float) and math.isfinite(value) and value >= 0, where
    assert facts["elapsed_s"] <= wall

    # the real shapes scaled down, GQA kept; the parameter formula (the 70B's) checked here
    for name in ("build_teacher", "build_student_1b", "build_student_3b_train"):
        s = stages[name]
        assert s["shape"]["n_heads"] > s["shape"]["n_kv_heads"] >= 2
        assert s["parameters"] == s["parameters_formula"]
        assert s["vocab"] == 128_256
    assert stages["build_teacher"]["shape"]["d_model"] == 4096 // 64
    assert (
        not stages["build_teacher"]["shape"]["tied"] and stages["build_student_1b"]["shape"]["tied"]
    )

    # ours against TransformerLens' patching loop, in float32
    patching = stages["activation_patching"]
    assert patching["max_abs_diff_vs_tl"] <= 1e-4
    assert patching["heads"] == 3 * stages["build_student_1b"]["shape"]["n_heads"]
    for method in ("teacher", "student_1b"):
        exact, screened = stages[f"sweep_{method}_exact"], stages[f"sweep_{method}_screened"]
        assert exact["heads_measured"] == exact["heads"]
        assert screened["vs_exact_max_abs_diff"] <= 1e-5
    assert stages["path_patch_teacher"]["scores_finite"]
    assert stages["teacher_cache"]["batches"] == 8
    for name in ("train_step_8b_1b", "train_step_8b_3b"):
        train = stages[name]
        assert train["losses_finite"] and train["seconds_per_step"] > 0
        assert len(train["step_seconds"]) == 4  # a warm-up and the 3 timed steps
    pipeline = stages["quick_pipeline_8b_1b"]
    assert pipeline["metrics_finite"] and pipeline["metrics"]["steps"] == 2
    assert pipeline["config"]["train"]["condition"] == "ce+align"

    # CPU: no GPU memory; the machine, the commit, the targets and the 70B estimate
    assert stages["sweep_teacher_exact"]["peak_gpu_gb"] is None
    assert facts["commit"] and facts["torch"] and facts["args"]["n"] == 4
    targets = facts["targets"]
    assert targets["applies"] is False
    for name in ("sweep_teacher_exact", "sweep_teacher_screened"):
        assert targets[name]["measured_s"] == stages[name]["seconds"]
    assert (
        targets["train_step_8b_1b"]["measured_s"] == stages["train_step_8b_1b"]["seconds_per_step"]
    )
    estimate = facts["estimate_70b"]
    assert estimate["parameters"] == 70_553_706_496  # Llama-3.1-70B: 70.6B
    assert "arithmetic" in estimate


def test_a_stage_past_the_budget_is_stopped_and_later_ones_skipped(tmp_path: Path) -> None:
    """The budget guard: a stage that runs past ``--budget-s`` is recorded as ``timeout``, the
    next as ``skipped``, and the JSON holds both."""
    gpu_scale = _module()
    out = tmp_path / "gpu_scale.json"
    args = gpu_scale.parse_args(["--device", "cpu", "--out", str(out)])
    args.budget_s = time.perf_counter() - gpu_scale.T_START + 0.5
    run = gpu_scale.Run(args, out)
    run.stage("build_teacher", lambda: {"slept": time.sleep(30)})
    run.stage("sweep_teacher_exact", lambda: pytest.fail("ran past the budget"))
    stages = json.loads(out.read_text())["stages"]
    assert stages["build_teacher"]["status"] == "timeout"
    assert stages["build_teacher"]["stage_wall_s"] < 10
    assert stages["sweep_teacher_exact"]["status"] == "skipped"


def test_stages_bring_the_builds_they_need() -> None:
    gpu_scale = _module()
    out = Path("unused.json")
    run = gpu_scale.Run(gpu_scale.parse_args(["--device", "cpu", "--stages", "train_step"]), out)
    assert run.wanted("build_teacher") and run.wanted("build_student_3b_train")
    assert not run.wanted("build_student_1b") and not run.wanted("sweep_teacher_exact")
    shape = gpu_scale.SHAPES["llama-3.2-1b"]
    assert shape.params(128_256) == 1_235_814_400  # Llama-3.2-1B
    assert gpu_scale.SHAPES["llama-3.1-8b"].params(128_256) == 8_030_261_248
