from __future__ import annotations

import logging

import pytest
import torch

from circuitlens.ablation.config import AblationConfig
from circuitlens.ablation.result import AblationResult
from circuitlens.core.types import Circuit, Head, HeadMap
from circuitlens.core.validate import ConfigError
from circuitlens.mapping.config import MapConfig
from circuitlens.mapping.map import (
    budget_count,
    choose_student_heads,
    correspond_features,
    map_heads,
    random_map,
)
from circuitlens.mapping.methods import CorrespondenceFeatures


def _sweep(delta: list[list[float]], name: str = "m") -> AblationResult:
    d = torch.tensor(delta)
    return AblationResult(
        p_own=1.0,
        p_baseline=1.0,
        p_ablated=1.0 - d,
        delta=d,
        model_name=name,
        config=AblationConfig(),
    )


STUDENT = _sweep([[0.30, 0.00], [0.10, 0.05]])  # 2 layers x 2 heads
TEACHER = _sweep([[0.00, 0.29, 0.12], [0.05, 0.11, 0.30]])  # 2 layers x 3 heads


def test_budget(unchecked) -> None:
    assert budget_count(0.5, 4) == 2
    assert budget_count(0.13, 100) == 13
    assert budget_count(0.01, 10) == 1
    assert budget_count(3, 4) == 3
    for bad in (0, 5, -0.1, 1.5):
        with pytest.raises(ValueError):
            budget_count(bad, 4)
    with unchecked(), pytest.raises(ValueError, match="fraction in"):
        budget_count("x", 4)  # a config value read as text


def test_many_to_one_hand_computed() -> None:
    hm = map_heads(STUDENT, TEACHER, budget=3)
    # chosen by impact: L0H0 (0.30), L1H0 (0.10), L1H1 (0.05)
    assert [str(s) for s in hm.student_heads] == ["L0H0", "L1H0", "L1H1"]
    # 0.30 -> L1H2 (0.30); 0.10 -> L1H1 (0.11, d=.01); 0.05 -> L1H0 (0.05)
    assert [str(t) for t in hm.teacher_heads] == ["L1H2", "L1H1", "L1H0"]
    assert hm.distances == pytest.approx([0.0, 0.01, 0.0], abs=1e-6)


def test_ties_are_broken_by_layer_then_head() -> None:
    teacher = _sweep([[0.2, 0.0], [0.0, 0.2]])
    student = _sweep([[0.2]])
    hm = map_heads(student, teacher, budget=1)
    assert hm.teacher_heads == [Head(0, 0)]
    equal = _sweep([[0.1, 0.3], [0.3, 0.0]])
    assert choose_student_heads(equal, 2) == [Head(0, 1), Head(1, 0)]


def test_one_to_one_uses_each_teacher_head_once() -> None:
    student = _sweep([[0.30, 0.29]])
    teacher = _sweep([[0.30, 0.00]])
    many = map_heads(student, teacher, budget=2)
    assert many.teacher_heads == [Head(0, 0), Head(0, 0)]
    one = map_heads(student, teacher, budget=2, one_to_one=True)
    assert sorted(one.teacher_heads) == [Head(0, 0), Head(0, 1)]
    # the optimal assignment: total |.30-.30| + |.29-0| = .29 beats .30 + .01 = .31
    assert one.pairs == [(Head(0, 0), Head(0, 0)), (Head(0, 1), Head(0, 1))]
    with pytest.raises(ValueError, match="at least as many teacher heads"):
        map_heads(_sweep([[1.0, 0.5, 0.2]]), teacher, budget=3, one_to_one=True)


def test_circuit_restricts_candidates() -> None:
    circuit = Circuit({"A": ["L0H2"], "B": ["L1H0"]}, positions={"A": "last"})
    hm = map_heads(STUDENT, TEACHER, circuit=circuit, budget=2)
    assert set(hm.teacher_heads) <= {Head(0, 2), Head(1, 0)}
    assert hm.teacher_heads == [Head(0, 2), Head(0, 2)]  # 0.30 -> 0.12; 0.10 -> 0.12
    with pytest.raises(ValueError, match="outside the model"):
        map_heads(STUDENT, TEACHER, circuit=Circuit({"A": ["L7H0"]}), budget=1)


def test_random_control_is_seeded() -> None:
    a = random_map(STUDENT, TEACHER, budget=3, seed=1)
    b = random_map(STUDENT, TEACHER, budget=3, seed=1)
    assert a.pairs == b.pairs and a.kind == "random"
    assert a.student_heads == map_heads(STUDENT, TEACHER, budget=3).student_heads
    draws = {tuple(random_map(STUDENT, TEACHER, budget=3, seed=s).teacher_heads) for s in range(20)}
    assert len(draws) > 5  # the draws vary with the seed
    one = random_map(STUDENT, TEACHER, budget=3, seed=0, one_to_one=True)
    assert len(set(one.teacher_heads)) == 3


def test_random_control_avoids_the_aligned_partner() -> None:
    aligned = map_heads(STUDENT, TEACHER, budget=3)
    partner = dict(aligned.pairs)
    for seed in range(30):
        for one_to_one in (False, True):
            m = random_map(
                STUDENT, TEACHER, budget=3, seed=seed, one_to_one=one_to_one, avoid=aligned
            )
            assert m.student_heads == aligned.student_heads
            if one_to_one:
                assert not set(m.teacher_heads) & set(aligned.teacher_heads)
            else:
                assert all(t != partner[s] for s, t in m.pairs)
    # without it, some seed draws the aligned partner itself
    one = map_heads(STUDENT, TEACHER, budget=1).pairs
    assert any(random_map(STUDENT, TEACHER, budget=1, seed=s).pairs == one for s in range(60))


def test_constant_student_warns(caplog) -> None:
    with caplog.at_level(logging.WARNING):
        map_heads(_sweep([[0.0, 0.0], [0.0, 0.0]]), TEACHER, budget=1)
    assert "uninformative" in caplog.text


def test_head_map_and_circuit_round_trip(tmp_path) -> None:
    hm = map_heads(STUDENT, TEACHER, budget=2)
    hm.save(tmp_path / "map.json")
    back = HeadMap.load(tmp_path / "map.json")
    assert back.pairs == hm.pairs and back.distances == hm.distances and back.kind == hm.kind
    assert "L0H0" in str(hm) and "student" in str(hm)
    c = Circuit({"A": ["L3H1", "L3H5"], "B": [Head(2, 0)]}, positions={"A": "last"})
    c.save(tmp_path / "c.json")
    assert Circuit.load(tmp_path / "c.json").groups == c.groups
    assert str(c).splitlines()[0] == "A @ last: L3H1 L3H5"
    assert c.position_of("L2H0") == "last"


def test_plot_ablation_renders_html(tmp_path) -> None:
    from circuitlens.report.figures import plot_ablation

    hm = map_heads(STUDENT, TEACHER, budget=2)
    fig = plot_ablation(TEACHER, STUDENT, hm)
    out = tmp_path / "ablation.html"
    fig.write_html(out)
    html = out.read_text()
    assert "plotly" in html.lower() and "L1H2" in html and "pair 1" in html
    heatmaps = [t for t in fig.data if t.type == "heatmap"]
    assert len(heatmaps) == 2 and heatmaps[0].zmin == -heatmaps[0].zmax == heatmaps[1].zmin


def _with_ci(sweep: AblationResult, half: float) -> AblationResult:
    sweep.delta_ci = torch.stack([sweep.delta - half, sweep.delta + half])
    return sweep


def test_warnings_name_flat_impacts_and_ties(caplog) -> None:
    student = _with_ci(_sweep([[0.30, 0.00], [0.10, 0.05]]), 0.07)  # L1H1: [-0.02, 0.12]
    teacher = _with_ci(_sweep([[0.00, 0.29, 0.12], [0.05, 0.11, 0.30]]), 0.01)
    with caplog.at_level(logging.WARNING):
        hm = map_heads(student, teacher, budget=3)
    w = hm.config["warnings"]
    assert any("student head(s) L1H1" in x and "not distinguishable from 0" in x for x in w)
    assert not any("teacher head(s)" in x for x in w)  # its chosen heads all exclude 0
    assert "not distinguishable" in caplog.text
    # a tie decides a partner (two teacher heads at distance 0.1), not every head tied
    tied = map_heads(_sweep([[0.2, 0.0]]), _sweep([[0.1, 0.3, 0.9]]), budget=1)
    assert any("a tie decides L0H0's partner: L0H0, L0H1" in x for x in tied.config["warnings"])
    # a tie decides which student heads are chosen: 2nd and 3rd have the same dP_s
    boundary = map_heads(_sweep([[0.3, 0.1, 0.1]]), TEACHER, budget=2)
    assert any("tie decides the student heads" in x for x in boundary.config["warnings"])
    assert map_heads(STUDENT, TEACHER, budget=3).config["warnings"] == []


def test_random_control_draws_from_every_teacher_head_of_a_screened_sweep() -> None:
    """The aligned map uses measured impacts only, but a random partner needs none: with a
    screened teacher sweep that measured 2 of 6 heads, a one-to-one random map of 3 student
    heads draws among all 6 (not the 2 measured ones minus the aligned partners)."""
    screened = _sweep([[0.00, 0.29, 0.12], [0.05, 0.11, 0.30]])
    screened.exact = torch.tensor([[False, True, False], [False, False, True]])
    aligned = map_heads(STUDENT, screened, budget=3)
    assert set(aligned.teacher_heads) <= {Head(0, 1), Head(1, 2)}
    draws = set()
    for seed in range(30):
        m = random_map(
            STUDENT, screened, budget=3, seed=seed, one_to_one=True,
            student_heads=aligned.student_heads, avoid=aligned,
        )  # fmt: skip
        assert len(set(m.teacher_heads)) == 3
        assert not set(m.teacher_heads) & set(aligned.teacher_heads)  # never a partner
        draws |= set(m.teacher_heads)
    assert draws == {Head(0, 0), Head(0, 2), Head(1, 0), Head(1, 1)}


def test_overrides_are_the_config_form() -> None:
    """The map functions take a MapConfig or its fields by name: the same map either way."""
    cfg = MapConfig(budget=3, one_to_one=True, seed=2)
    for fn in (map_heads, random_map):
        by_config = fn(STUDENT, TEACHER, None, cfg)
        by_name = fn(STUDENT, TEACHER, budget=3, one_to_one=True, seed=2)
        assert by_config == by_name
        assert by_config.pairs == by_name.pairs and by_config.config == by_name.config
        # an override replaces the config's field, the others kept
        assert fn(STUDENT, TEACHER, config=MapConfig(budget=1, seed=2), budget=3,
                  one_to_one=True) == by_config  # fmt: skip
    assert map_heads(STUDENT, TEACHER) == map_heads(STUDENT, TEACHER, config=MapConfig())
    features = CorrespondenceFeatures(STUDENT, TEACHER)
    assert correspond_features(features, cfg) == map_heads(STUDENT, TEACHER, budget=3,
                                                           one_to_one=True)  # fmt: skip
    assert correspond_features(features, method="impact-rank", budget=2) == map_heads(
        STUDENT, TEACHER, config=MapConfig(method="impact-rank", budget=2)
    )


def test_an_unknown_override_is_refused_by_name(unchecked) -> None:
    fields = "budget, one_to_one, method, teacher_baseline, seed, n_perm"
    with pytest.raises(TypeError, match=rf"^map_heads: unknown MapConfig option\(s\) bugdet; "
                       rf"valid: {fields}$"):  # fmt: skip
        map_heads(STUDENT, TEACHER, bugdet=3)
    with pytest.raises(TypeError, match=r"random_map: unknown MapConfig option\(s\) avoid_"):
        random_map(STUDENT, TEACHER, avoid_=None)
    with pytest.raises(TypeError, match=rf"option\(s\) n_perms; valid: {fields}"):
        correspond_features(CorrespondenceFeatures(STUDENT, TEACHER), n_perms=4)
    with pytest.raises(TypeError, match=r"^unknown MapConfig option\(s\) x; valid: budget"):
        MapConfig().with_overrides(x=1)
    # a value is checked as the config checks it
    with pytest.raises(ConfigError, match="budget 1.5 is a fraction above 1"):
        map_heads(STUDENT, TEACHER, budget=1.5)
    # the positional form before the config (budget 4th) is named, not read as a config
    with unchecked(), pytest.raises(TypeError, match="config must be a MapConfig or None"):
        map_heads(STUDENT, TEACHER, None, 3)


def test_map_config_lives_in_mapping_and_distill_reads_it() -> None:
    """MapConfig moved to mapping (below distill): the same class from every import path,
    its new field n_perm saved and read back, and a config saved without it read at 20."""
    import json

    import circuitlens as cl
    from circuitlens.distill import config as distill_config
    from circuitlens.mapping import map as map_module

    assert cl.MapConfig is distill_config.MapConfig is MapConfig
    assert map_module.DEFAULT_BUDGET == MapConfig().budget == 0.13
    cfg = cl.DistillConfig(map=MapConfig(n_perm=50, seed=3))
    back = cl.DistillConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and back.map.n_perm == 50
    old = cl.DistillConfig().to_dict()
    del old["map"]["n_perm"]  # a config saved before n_perm was a field
    assert cl.DistillConfig.from_dict(old) == cl.DistillConfig()
    assert "n_perm" not in cl.DistillConfig().flat()  # the sweeps' keys are as they were
