"""The one map path (map_heads dispatching to the registry) and its degenerate-assignment check
(circuitlens.mapping.checks): hand-computed costs, the equivalence with "every pairing costs
the same", and the committed real setups."""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path

import pytest
import torch

from circuitlens.ablation.config import AblationConfig
from circuitlens.ablation.result import AblationResult
from circuitlens.core.types import Head, HeadMap
from circuitlens.distill.pipeline import with_map_features
from circuitlens.distill.setup import Setup
from circuitlens.mapping.checks import degenerate_warnings, is_separable, separable_residual
from circuitlens.mapping.map import check_map, correspond_features, map_heads, permuted_map
from circuitlens.mapping.methods import CorrespondenceFeatures
from circuitlens.tasks import get_task

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
HEADS3 = [Head(0, i) for i in range(3)]
TASK = get_task("entity_tracking", n_boxes=3, n_val=16, n_test=32)


def _sweep(delta: list[list[float]]) -> AblationResult:
    d = torch.tensor(delta)
    return AblationResult(1.0, 1.0, 1.0 - d, d, "m", AblationConfig())


def _pairing_costs(c: torch.Tensor) -> set[float]:
    k = c.shape[0]
    return {
        round(sum(float(c[i, p[i]]) for i in range(k)), 9) for p in itertools.permutations(range(k))
    }


def test_a_separable_cost_is_degenerate_by_hand() -> None:
    # C[i, j] = a_i + b_j with a = (1, 2, 4), b = (0, 10, 30): every pairing costs 7 + 40 = 47
    c = torch.tensor([[1.0, 11.0, 31.0], [2.0, 12.0, 32.0], [4.0, 14.0, 34.0]])
    assert _pairing_costs(c) == {47.0}
    assert float(separable_residual(c).abs().max()) == 0.0 and is_separable(c)
    w = degenerate_warnings(c, [0, 1, 2], True, HEADS3, HEADS3)
    assert len(w) == 1 and "degenerate" in w[0] and "3 chosen student heads" in w[0]
    # many-to-one over the same cost: every row's cheapest column is column 0
    w = degenerate_warnings(c, [0, 0, 0], False, HEADS3, HEADS3)
    assert len(w) == 1 and "degenerate map" in w[0] and "same partner" in w[0]


def test_a_non_separable_cost_is_not_degenerate_by_hand() -> None:
    # the residual at (1, 1): 0 - 1 - 1 + 0 = -2; pairings cost 0 (identity) up to 6
    c = torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.0, 1.0], [2.0, 1.0, 0.0]])
    assert float(separable_residual(c)[1, 1]) == -2.0 and not is_separable(c)
    assert len(_pairing_costs(c)) > 1
    assert degenerate_warnings(c, [0, 1, 2], True, HEADS3, HEADS3) == []
    assert degenerate_warnings(c, [0, 1, 2], False, HEADS3, HEADS3) == []
    # fewer than two pairs: nothing to pair differently
    assert degenerate_warnings(c[:1], [0], True, HEADS3[:1], HEADS3) == []


@pytest.mark.parametrize("seed", range(6))
def test_separable_iff_every_pairing_costs_the_same(seed: int) -> None:
    """Reference equivalence on random 4 x 4 costs: the residual test agrees with enumerating
    all 24 pairings, for separable costs, perturbed ones and generic ones."""
    g = torch.Generator().manual_seed(seed)
    a, b = torch.rand(4, generator=g).double(), torch.rand(4, generator=g).double()
    separable = a[:, None] + b[None, :]
    bumped = separable.clone()
    bumped[1, 2] += 0.01
    generic = torch.rand(4, 4, generator=g).double()
    for c, want in ((separable, True), (bumped, False), (generic, False)):
        assert is_separable(c) is want
        assert (len(_pairing_costs(c)) == 1) is want


def test_every_row_tied_is_degenerate_many_to_one() -> None:
    c = torch.tensor([[0.0, 0.0, 5.0], [3.0, 1.0, 1.0]])  # not separable, both rows tied
    assert not is_separable(c)
    w = degenerate_warnings(c, [0, 1], False, HEADS3[:2], HEADS3)
    assert len(w) == 1 and "a tie decides every one" in w[0]
    c[1, 2] = 2.0  # row 1 no longer tied
    assert degenerate_warnings(c, [0, 1], False, HEADS3[:2], HEADS3) == []


def test_scales_apart_make_the_impact_map_degenerate(caplog: pytest.LogCaptureFixture) -> None:
    """The SmolLM2 case in small: every teacher impact below every student impact, so
    |dP_s - dP_t| = dP_s - dP_t is separable; one-to-one and many-to-one are degenerate, the
    rank map is not."""
    student = _sweep([[0.20, 0.10], [0.05, 0.01]])
    teacher = _sweep([[-0.30, -0.20], [-0.50, -0.40]])
    with caplog.at_level(logging.WARNING):
        one = map_heads(student, teacher, budget=3, one_to_one=True)
    assert any("degenerate assignment" in w for w in one.warnings)
    assert "degenerate assignment" in caplog.text
    many = map_heads(student, teacher, budget=3)
    assert any("degenerate map" in w for w in many.warnings)
    rank = map_heads(student, teacher, budget=3, one_to_one=True, method="impact-rank")
    assert not any("degenerate" in w for w in rank.warnings)
    # the check of a saved map recomputes the same line from the sweeps
    assert check_map(one, student, teacher) == [w for w in one.warnings if "degenerate" in w]
    assert check_map(rank, student, teacher) == []


def test_map_heads_dispatches_to_every_method() -> None:
    """map_heads is the one path: correspond_features is it, method by method."""
    g = torch.Generator().manual_seed(0)
    ps, pt = torch.randn(2, 3, 10, generator=g), torch.randn(2, 4, 10, generator=g)
    zs, zt = torch.randn(10, 2, 3, 4, generator=g), torch.randn(10, 2, 4, 5, generator=g)
    s = AblationResult(1.0, 1.0, 1 - ps.mean(-1), ps.mean(-1), "s", AblationConfig(),
                       prompt_delta=ps)  # fmt: skip
    t = AblationResult(1.0, 1.0, 1 - pt.mean(-1), pt.mean(-1), "t", AblationConfig(),
                       prompt_delta=pt)  # fmt: skip
    features = CorrespondenceFeatures(s, t, zs, zt)
    for method in ("impact", "impact-rank", "profile", "cka", "combined"):
        for one_to_one in (False, True):
            got = map_heads(s, t, budget=3, one_to_one=one_to_one, method=method, features=features)
            want = correspond_features(features, method=method, budget=3, one_to_one=one_to_one)
            assert got.pairs == want.pairs and got.distances == want.distances
            assert got.config == want.config and got.config["method"] == method
    with pytest.raises(ValueError, match="unknown map method 'nearest'"):
        map_heads(s, t, method="nearest")


def test_head_map_warnings_property() -> None:
    assert HeadMap([("L0H0", "L0H1")]).warnings == []
    hm = HeadMap([("L0H0", "L0H1")], config={"warnings": ["x"]})
    assert hm.warnings == ["x"]
    hm.warnings.append("y")  # a copy: the config is not changed through it
    assert hm.config["warnings"] == ["x"]


@pytest.mark.parametrize("name", ["reproduce-real-exact.json", "reproduce-real.json"])
def test_committed_real_setups_are_degenerate(name: str) -> None:
    """The paper's SmolLM2 pairs (impact map, one to one, teacher against the student's
    baseline): re-read, each map carries the degenerate warning, and it reaches setup.json."""
    doc = json.loads((RESULTS / name).read_text())
    assert doc["setups"]
    for task, saved in doc["setups"].items():
        assert not any("degenerate" in w for w in saved["head_map"]["config"]["warnings"])
        setup = Setup.from_dict(saved)
        degenerate = [w for w in setup.head_map.warnings if "degenerate assignment" in w]
        assert len(degenerate) == 1, task
        assert "26 chosen student heads" in degenerate[0]
        assert degenerate[0] in setup.to_dict()["head_map"]["config"]["warnings"]
        # the impact map reads the sweeps only: nothing more to measure for random heads
        assert with_map_features(setup, None, None, TASK) is setup
        # read again: nothing is added twice
        again = Setup.from_dict(setup.to_dict())
        assert again.head_map.warnings == setup.head_map.warnings
        # the claim itself: random re-pairings of the two sets all cost the same
        s, t = setup.student_sweep, setup.teacher_sweep
        ds = torch.tensor([float(s.delta[h.layer, h.head]) for h in setup.head_map.student_heads])
        dt = torch.tensor([float(t.delta[h.layer, h.head]) for h in setup.head_map.teacher_heads])
        g = torch.Generator().manual_seed(0)
        totals = {round(float((ds - dt[torch.randperm(len(dt), generator=g)]).abs().sum()), 4)
                  for _ in range(50)}  # fmt: skip
        assert len(totals) == 1, task


def test_permuted_map_deranges_the_pairs() -> None:
    student = _sweep([[0.30, 0.20], [0.10, 0.05]])
    teacher = _sweep([[0.00, 0.29, 0.12], [0.05, 0.11, 0.30]])
    aligned = map_heads(student, teacher, budget=4, one_to_one=True)
    partner = dict(aligned.pairs)
    seen = set()
    for seed in range(20):
        p = permuted_map(aligned, student, teacher, seed)
        assert p.student_heads == aligned.student_heads and p.kind == "permuted"
        assert sorted(p.teacher_heads) == sorted(aligned.teacher_heads)  # the same partners
        assert all(t != partner[s] for s, t in p.pairs)  # none keeps its own
        assert p.pairs == permuted_map(aligned, student, teacher, seed).pairs  # seeded
        seen.add(tuple(p.teacher_heads))
    assert len(seen) > 1  # 9 derangements of 4: seeds draw different ones
    # many-to-one with a shared partner: no student head gets that head back
    shared = HeadMap([("L0H0", "L0H1"), ("L0H1", "L0H1"), ("L1H0", "L1H2"), ("L1H1", "L0H0")])
    p = permuted_map(shared, student, teacher, 0)
    assert all(t != u for (_, t), (_, u) in zip(p.pairs, shared.pairs, strict=True))
    with pytest.raises(ValueError, match="at least 2 pairs"):
        permuted_map(HeadMap([("L0H0", "L0H1")]), student, teacher, 0)
    collapsed = HeadMap([("L0H0", "L0H1"), ("L0H1", "L0H1"), ("L1H0", "L1H2")])
    with pytest.raises(ValueError, match="partners 2 of the map's 3 pairs"):
        permuted_map(collapsed, student, teacher, 0)
