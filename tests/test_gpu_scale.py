"""benchmarks/gpu_scale.py, the paper-scale GPU benchmark's one command: here on the CPU at a
tiny width (the real Llama-3 shapes scaled by 1/64, 3 layers, GQA kept), every stage on; and its
parts on their own: the stages' module (``gpu_stages.py``), the staged run (``staged.py``) and
the machine description (``bench_machine.py``), imported as the script imports them."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_scale.py"
#: the JSON's top level, in its order (the format the committed results and docs read)
TOP_LEVEL = ["benchmark", "date", "commit", "worktree_dirty", "args", "platform", "python"]
TOP_LEVEL += ["cpu_count", "torch", "cuda", "transformers", "transformer_lens", "device_name"]
TOP_LEVEL += ["gpu_memory_gb", "elapsed_s", "stages", "targets", "estimate_70b"]
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


@pytest.fixture
def bench() -> dict[str, ModuleType]:
    """The script and the modules it imports, as ``python benchmarks/gpu_scale.py`` finds them
    (benchmarks/ is on the path: pyproject's pytest ``pythonpath``)."""
    import bench_machine
    import gpu_scale
    import gpu_stages
    import staged

    return {"script": gpu_scale, "stages": gpu_stages, "staged": staged, "machine": bench_machine}


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

    assert list(facts) == TOP_LEVEL
    assert facts["args"]["width_scale"] == "1/64" and facts["args"]["layers"] == 3
    stages = facts["stages"]
    assert list(stages) == STAGES
    assert stages["build_student_1b_train"]["note"].startswith("the same model")
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


@pytest.mark.unit
def test_a_stage_past_the_budget_is_stopped_and_later_ones_skipped(
    tmp_path: Path, bench: dict[str, ModuleType]
) -> None:
    """The budget guard: a stage that runs past ``--budget-s`` is recorded as ``timeout``, the
    next as ``skipped``, and the JSON holds both."""
    gpu_scale = bench["script"]
    out = tmp_path / "gpu_scale.json"
    args = gpu_scale.parse_args(["--device", "cpu", "--out", str(out)])
    run = gpu_scale.make_run(args, out)
    # 2 s left from now, whatever the machine description took on a busy machine
    run.budget_s = time.perf_counter() - run.t0 + 2.0
    run.stage("build_teacher", lambda: {"slept": time.sleep(30)})
    run.stage("sweep_teacher_exact", lambda: pytest.fail("ran past the budget"))
    facts = json.loads(out.read_text())
    stages = facts["stages"]
    assert stages["build_teacher"]["status"] == "timeout"
    assert stages["build_teacher"]["stage_wall_s"] < 10
    assert stages["sweep_teacher_exact"]["status"] == "skipped"
    assert list(facts) == TOP_LEVEL  # the script's header and summary around the stages
    assert facts["targets"]["applies"] is False
    assert facts["estimate_70b"]["activations"] == "not measured: build_teacher did not run"


@pytest.mark.unit
def test_a_staged_run_records_each_outcome_and_rewrites_the_json_after_each(
    tmp_path: Path, bench: dict[str, ModuleType]
) -> None:
    """Skip, error, ok and a recorded stage each leave their status; a failed stage does not
    stop the next; a stage sees the JSON with every earlier stage in it (a killed run keeps
    what finished); ``after`` runs after each stage that ran; ``also`` runs an unwanted one."""
    staged = bench["staged"]
    out = tmp_path / "run.json"
    after: list[int] = []
    run = staged.StagedRun(
        out,
        budget_s=60,
        t0=time.perf_counter(),
        wanted=lambda name: not name.startswith("unwanted"),
        header={"benchmark": "b", "machine": "m"},
        summary=lambda stages: {"ok": sorted(k for k, v in stages.items() if v["status"] == "ok")},
        after=lambda: after.append(1),
    )
    run.stage("needs", lambda: {"got": run.need("model")})
    run.stage("fails", lambda: {"x": 1 / 0})
    run.models["model"] = "a model"
    run.stage("works", lambda: {"got": run.need("model")[0]})
    run.stage("reads", lambda: {"seen": list(json.loads(out.read_text())["stages"])})
    run.stage("unwanted", lambda: pytest.fail("not wanted"))
    run.stage("unwanted_but_also", lambda: {}, also=True)
    run.record("noted", {"status": "ok", "note": "the same as works"})
    facts = json.loads(out.read_text())
    stages = facts["stages"]
    assert list(facts) == ["benchmark", "machine", "elapsed_s", "stages", "ok"]
    assert stages["needs"]["status"] == "skipped" and "needs model" in stages["needs"]["reason"]
    assert stages["fails"]["status"] == "error"
    assert stages["fails"]["error"].startswith("ZeroDivisionError")
    assert "1 / 0" in stages["fails"]["traceback"]
    assert stages["works"]["status"] == "ok" and stages["works"]["got"] == "a model"
    assert stages["reads"]["seen"] == ["needs", "fails", "works"]
    assert stages["unwanted"] == {"status": "skipped", "reason": "not in --stages"}
    assert facts["ok"] == ["noted", "reads", "unwanted_but_also", "works"]
    assert len(after) == 5  # each stage that ran, not the recorded one
    for name in ("needs", "fails", "works", "reads"):
        assert stages[name]["stage_wall_s"] >= 0 and list(stages[name])[0] == "status"


@pytest.mark.unit
def test_stages_bring_the_builds_they_need(bench: dict[str, ModuleType]) -> None:
    gpu_scale, gs = bench["script"], bench["stages"]
    out = Path("unused.json")
    run = gpu_scale.make_run(
        gpu_scale.parse_args(["--device", "cpu", "--stages", "train_step"]), out
    )
    assert run.wanted("build_teacher") and run.wanted("build_student_3b_train")
    assert not run.wanted("build_student_1b") and not run.wanted("sweep_teacher_exact")
    assert gs.STAGES == tuple(STAGES)
    # activation patching brings the 1B student, or only the teacher where it patches that
    assert gs.wanted("build_student_1b", ["activation"])
    assert not gs.wanted("build_teacher", ["activation"])
    assert gs.wanted("build_teacher", ["activation"], patch_model="teacher")
    assert not gs.wanted("build_student_1b", ["activation"], patch_model="teacher")
    assert all(gs.wanted(s, [""]) for s in STAGES)  # the default: every stage
    shape = gs.SHAPES["llama-3.2-1b"]
    assert shape.params(128_256) == 1_235_814_400  # Llama-3.2-1B
    assert gs.SHAPES["llama-3.1-8b"].params(128_256) == 8_030_261_248


@pytest.mark.unit
def test_a_scaled_shape_keeps_gqa_and_an_even_head_width(bench: dict[str, ModuleType]) -> None:
    gs = bench["stages"]
    for name, shape in gs.SHAPES.items():
        assert shape.scaled(Fraction(1), None) is shape
        for width in (Fraction(1, 64), Fraction(1, 8), Fraction(1, 2)):
            small = shape.scaled(width, 3)
            assert small.n_layers == 3 and small.tied == shape.tied, name
            assert small.n_kv_heads >= 2 and small.head_dim % 2 == 0
            assert small.n_heads // small.n_kv_heads == shape.n_heads // shape.n_kv_heads
            assert small.d_model == small.n_heads * small.head_dim
            assert small.to_dict()["d_head"] == small.head_dim


@pytest.mark.unit
def test_targets_are_met_only_at_the_real_scale(bench: dict[str, ModuleType]) -> None:
    gs = bench["stages"]
    real = (Fraction(1), None, gs.VOCAB, "cuda", "bfloat16", 64)
    assert gs.at_real_scale(*real)
    for i, other in enumerate((Fraction(1, 2), 3, 1000, "cpu", "float32", 8)):
        assert not gs.at_real_scale(*real[:i], other, *real[i + 1 :])
    stages = {"sweep_teacher_exact": {"seconds": 100.0}, "train_step_8b_1b": {}}
    stages["sweep_teacher_screened"] = {"seconds": 31.0}
    got = gs.targets(stages, real=True)
    assert got["applies"] and got["sweep_teacher_exact"]["met"] is True
    assert got["sweep_teacher_screened"]["met"] is False
    assert got["train_step_8b_1b"] == {"target_s": 1.0, "measured_s": None, "met": None}
    assert gs.targets(stages, real=False)["sweep_teacher_exact"]["met"] is None


@pytest.mark.unit
def test_the_70b_estimate_scales_the_measured_activations(bench: dict[str, ModuleType]) -> None:
    """Activations per prompt times the width and depth ratio, plus bf16 weights, against the
    machine's memory (an H200's where it has none)."""
    gs = bench["stages"]
    small = gs.SHAPES["llama-3.1-8b"].scaled(Fraction(1, 2), 4)
    stages = {
        "build_teacher": {"status": "ok", "shape": small.to_dict()},
        "sweep_teacher_exact": {"status": "ok", "prompts": 64, "activation_gb": 2.0},
        "path_patch_teacher": {"status": "error"},
        "teacher_cache": {"status": "ok", "batch_size": 8, "fill": {"activation_gb": 0.5}},
    }
    est = gs.estimate_70b(stages, {"gpu_memory_bytes": 80 * 2**30})
    ratio = (8192 / small.d_model) * (80 / 4)
    assert est["width_depth_ratio"] == pytest.approx(ratio, abs=1e-4)
    assert set(est["stages"]) == {"sweep_teacher_exact", "teacher_cache"}
    act = max(2.0 / 64 * ratio * 64, 0.5 / 8 * ratio * 8)
    assert est["needed_gb"] == pytest.approx(est["parameter_gb_bf16"] + act, abs=0.01)
    assert est["devices_needed"] == math.ceil(est["needed_gb"] / 80)
    assert est["fits_one_device"] is False
    assert gs.estimate_70b(stages, {})["device_memory_gb"] == gs.gb(gs.H200_BYTES)


@pytest.mark.unit
def test_the_machine_description_names_the_commit_and_the_arguments(
    bench: dict[str, ModuleType],
) -> None:
    machine = bench["machine"].machine
    facts = machine("cpu", commit="abc", args={"n": 4})
    assert list(facts) == TOP_LEVEL[1:14]
    assert facts["commit"] == "abc" and facts["args"] == {"n": 4}
    assert facts["gpu_memory_gb"] is None and facts["device_name"]
    assert "args" not in machine("cpu") and len(machine("cpu")["commit"]) == 40
