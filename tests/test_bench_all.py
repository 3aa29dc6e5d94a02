"""benchmarks/: all.py runs every benchmark side by side without touching the committed results
(its rows are the benchmarks' own figures); the helper scripts do what they say."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from circuitlens import get_task
from circuitlens.ablation.config import AblationConfig
from circuitlens.ablation.sweep import ablation_sweep
from circuitlens.core.types import Head

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _bench(name: str, file: str):
    """The benchmark script ``file`` as a fresh module named ``name`` (the siblings it imports
    by name, ``bench_models``, ...: pyproject's pytest ``pythonpath`` puts benchmarks/ on the
    path)."""
    spec = importlib.util.spec_from_file_location(name, BENCH / file)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def allpy():
    return _bench("bench_all", "all.py")


def _check(rows: list[dict]) -> None:
    assert rows
    for r in rows:
        if r["fast_s"] and r["baseline_s"]:
            assert r["speedup"] == round(r["baseline_s"] / r["fast_s"], 2)


def test_rows_are_the_committed_results_figures(allpy) -> None:
    res = BENCH / "results"
    sweep = json.loads((res / "ablation_sweep.json").read_text())
    rows = allpy.headline("ablation_sweep", sweep)
    _check(rows)
    ours = [r for r in sweep["rows"] if r["mode"] != "naive"]
    assert len(rows) == len(ours)
    for row, r in zip(rows, ours, strict=True):  # the benchmark's own speed-up, recomputed
        assert row["speedup"] == pytest.approx(r["speedup_vs_naive"], abs=0.011)
        assert row["max_abs_diff"] == r["max_abs_score_diff_vs_naive"]
    patch = json.loads((res / "activation_patching.json").read_text())
    rows = allpy.headline("activation_patching", patch)
    _check(rows)
    assert [r["speedup"] for r in rows] == pytest.approx(
        [r["speedup_1"] for r in patch["rows"]], abs=0.011
    )
    cache = json.loads((res / "teacher-cache.json").read_text())
    rows = allpy.headline("teacher_cache", cache)
    _check(rows)
    assert [r["speedup"] for r in rows] == pytest.approx(
        [r["speedup"] for r in cache["rows"]], abs=0.011
    )
    screened = json.loads((res / "screened_smollm2.json").read_text())
    rows = allpy.headline("screened", screened)
    _check(rows)
    assert [r["fraction_of_exact_time"] for r in rows] == [
        r["fraction_of_exact_time"] for r in screened["rows"]
    ]
    gpu = json.loads((res / "gpu_cuda.json").read_text())["runs"]
    rows = allpy.headline("gpu", gpu["float32_9_heads_per_pass_with_baselines"])
    _check(rows)
    assert [r["speedup"] for r in rows] == pytest.approx([6.52, 5.03], abs=0.011)
    _check(allpy.headline("train_step", json.loads((res / "train_step.json").read_text())))
    assert "| benchmark |" in allpy.markdown(rows)


def test_one_run_records_every_benchmark_and_leaves_committed_results(
    allpy, tmp_path: Path, monkeypatch
) -> None:
    committed = BENCH / "results" / "train_step.json"
    before = committed.read_bytes()
    suite = {
        "train_step": (["train_step.py", "--steps", "2", "--batch-size", "4"], "train_step.json"),
        "broken": (["no_such_benchmark.py"], "nothing.json"),
    }
    monkeypatch.setitem(allpy.SUITES, "tiny", suite)
    out = tmp_path / "run"
    doc = allpy.run("tiny", out, None, tmp_path / "all-tiny.json")
    assert committed.read_bytes() == before  # written into the run's directory instead
    assert (out / "train_step.json").is_file()
    ok, bad = doc["benchmarks"]["train_step"], doc["benchmarks"]["broken"]
    assert ok["rc"] == 0 and ok["result"]["steps"] == 2 and ok["rows"]
    assert bad["rc"] != 0 and "no_such_benchmark.py" in bad["error_tail"]
    assert doc["machine"]["cpus"] and doc["machine"]["torch"]
    assert ok["commit"] == doc["machine"]["commit"] and len(ok["commit"]) == 40
    assert json.loads((tmp_path / "all-tiny.json").read_text())["rows"] == doc["rows"]
    # run again: the finished benchmark is kept as it was, the failed one is tried again
    again = allpy.run("tiny", out, None, None)
    assert again["benchmarks"]["train_step"] == ok
    with pytest.raises(SystemExit, match="no benchmark"):
        allpy.run("tiny", out, ["nope"], None)


@pytest.mark.parametrize("teacher", ["smollm2", "gemma3"])
def test_the_circuit_runs_map_one_to_one_into_the_committed_circuits(allpy, teacher) -> None:
    """benchmarks/real_circuit_distill.py: the circuit it maps into is the one found
    (benchmarks/results/real-circuit.json, empty groups left out), and the budget is its size,
    so the one-to-one map uses every circuit head once."""
    from real_circuit_distill import config

    cfg = config([0], ["ce", "ce+align"], teacher)
    key = "entity_tracking" if teacher == "smollm2" else f"{teacher}:entity_tracking"
    found = json.loads((BENCH / "results" / "real-circuit.json").read_text())["tasks"][key]
    given = cfg.circuits["entity_tracking"]
    assert given == {g: hs for g, hs in found["circuit"].items() if hs}
    assert (
        cfg.distill.map.budget
        == found["n_circuit_heads"]
        == len({h for hs in given.values() for h in hs})
    )
    assert cfg.distill.map.one_to_one and cfg.use_circuit and cfg.tasks == ("entity_tracking",)
    assert cfg.models["entity_tracking"]["teacher"] == f"real:{teacher}-entity-tracking-teacher"


@pytest.fixture(scope="module")
def fillpy():
    return _bench("fill_prompt_delta", "fill_prompt_delta.py")


def test_fill_gives_the_sweeps_own_prompt_delta(fillpy, tiny_bridge) -> None:
    task = get_task("entity_tracking", n_boxes=3, seed=0, n_test=24)
    cfg = AblationConfig(metric="prob", n=24, method="exact", n_boot=0)
    full = ablation_sweep(tiny_bridge, task, cfg, progress=False)
    old = replace(full, prompt_delta=None)  # as saved before sweeps kept it
    heads = [Head(0, 1), Head(1, 3)]
    filled = fillpy.fill(old, tiny_bridge, task, heads)
    for h in heads:
        torch.testing.assert_close(filled.prompt_delta[h.layer, h.head],
                                   full.prompt_delta[h.layer, h.head])  # fmt: skip
        # the mean over prompts is the head's impact against the model's own score
        assert float(filled.prompt_delta[h.layer, h.head].mean()) == pytest.approx(
            float(full.p_own - full.p_ablated[h.layer, h.head]), abs=1e-6
        )
    assert torch.isnan(filled.prompt_delta[0, 0]).all()  # not asked for: NaN
    everything = fillpy.fill(old, tiny_bridge, task, full.exact_heads)
    torch.testing.assert_close(everything.prompt_delta, full.prompt_delta)
    other = get_task("entity_tracking", n_boxes=3, seed=1, n_test=24)  # other prompts
    with pytest.raises(SystemExit, match="not the same sweep"):
        fillpy.fill(old, tiny_bridge, other, heads)


def test_correspondence_benchmark_records_own_and_behaviour() -> None:
    """benchmarks/correspondence.py on the zoo teacher, small: an ``own`` row per method (the
    identity), each copy's accuracy and KL beside its recovery, and the table shows both."""
    import argparse

    import circuitlens as cl

    mod = _bench("bench_corr", "correspondence.py")
    model = cl.load_model("zoo:entity-tracking-teacher")
    args = argparse.Namespace(n=8, n_boot=0, seeds=[0], noise=[0.1], own=True, heads_per_pass=None)
    mod.BUDGETS = (0.13,)  # one budget: the rows' shape, not the figures
    rows: list[dict] = []
    mod.run_model("zoo", "", "entity_tracking", args, rows, lambda: None, model=model)
    own = [r for r in rows if r["copy"] == "own"]
    noisy = [r for r in rows if r["copy"] == "permuted"]
    from circuitlens.mapping.methods import METHODS

    assert len(own) == len(noisy) == 2 * len(mod.BUDGETS) * len(METHODS)
    assert all(r["copy_kl"] == 0.0 and r["copy_accuracy"] == r["original_accuracy"] for r in own)
    assert all(r["copy_kl"] > 0 for r in noisy)
    assert all(r["recovery"] == 1.0 for r in own if r["method"] == "cka")
    summary = mod.summarise(rows)
    kinds = {(b["copy"], b["noise"]) for b in mod.behaviour(summary)}
    assert kinds == {("own", 0.0), ("permuted", 0.1)}
    md = mod.table(summary, ["impact", "cka"])
    assert "| own |" in md and "noise 0.1" in md and "accuracy / KL" in md
