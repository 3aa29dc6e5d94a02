"""benchmarks/fill_prompt_delta.py: the per-prompt impacts it adds to a sweep saved without them
are the ones the sweep itself keeps, and a sweep of other prompts is refused."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from circuitlens import get_task
from circuitlens.analysis.ablation import AblationConfig, ablation_sweep
from circuitlens.core.types import Head

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def fillpy():
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(
        "fill_prompt_delta", BENCH / "fill_prompt_delta.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    yield mod
    sys.path.remove(str(BENCH))


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
