"""Correspondence methods (circuitlens.mapping.methods): the registry, each cost by hand,
the
impact method against map_heads, and the known answer (a permuted copy) on the zoo."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest
import torch

import circuitlens as cl
from circuitlens.ablation.config import AblationConfig
from circuitlens.ablation.result import AblationResult
from circuitlens.core.types import Circuit, Head, HeadMap
from circuitlens.mapping.features import gather_features
from circuitlens.mapping.known_answer import permuted_copy, recovery
from circuitlens.mapping.map import correspond, correspond_features, map_heads
from circuitlens.mapping.methods import (
    METHODS,
    CorrespondenceFeatures,
    rank_quantiles,
    register_method,
)

ZOO = "zoo:entity-tracking-teacher"


def _sweep(delta: list[list[float]], profiles: torch.Tensor | None = None) -> AblationResult:
    d = torch.tensor(delta)
    return AblationResult(1.0, 1.0, 1.0 - d, d, "m", AblationConfig(), prompt_delta=profiles)


@pytest.fixture(scope="module")
def teacher() -> Any:
    return cl.load_model(ZOO)


@pytest.fixture(scope="module")
def task(teacher: Any) -> Any:
    return cl.get_task("entity_tracking", model=teacher)


@pytest.fixture(scope="module")
def exact_copy(teacher: Any, task: Any) -> tuple[CorrespondenceFeatures, dict[Head, Head]]:
    """The zoo teacher as the student, its relabelled copy (no noise) as the teacher."""
    copy, perm = permuted_copy(teacher, seed=0)
    return gather_features(teacher, copy, task, sweep=AblationConfig(n=32, n_boot=100)), perm


@pytest.fixture(scope="module")
def zoo_pair(teacher: Any, task: Any) -> CorrespondenceFeatures:
    """The zoo's real student-teacher pair (different models): sweeps only."""
    student = cl.load_model("zoo:entity-tracking-student")
    return gather_features(
        student, teacher, task, ("teacher_sweep",), AblationConfig(n=32, n_boot=100)
    )


# --- the known answer ------------------------------------------------------------------------


def test_a_permuted_copy_computes_the_same_function(task: Any) -> None:
    model = cl.load_model(ZOO, dtype=torch.float64)  # float32 differs by summation order
    batch = task.batch(model, "test", 8)
    f = cl.model_facts(model)
    size = f.n_heads // f.n_kv_heads
    for groups in (False, True):
        copy, perm = permuted_copy(model, seed=3, groups=groups)
        with torch.no_grad():
            torch.testing.assert_close(copy(batch.tokens), model(batch.tokens), atol=1e-5, rtol=0)
        assert sum(h != perm[h] for h in perm) > 0  # relabelled, not the identity
        for layer in range(f.n_layers):
            heads = [Head(layer, h) for h in range(f.n_heads)]
            assert sorted(perm[h] for h in heads) == heads  # a bijection inside the layer
            for h in heads:
                c = perm[h]
                assert torch.equal(copy.W_Q[layer, c.head], model.W_Q[layer, h.head])
                assert torch.equal(copy.W_O[layer, c.head], model.W_O[layer, h.head])
                # the K/V head a query head reads moves with it (the group stays together)
                assert torch.equal(
                    copy.W_K[layer, c.head // size], model.W_K[layer, h.head // size]
                )
                if not groups:
                    assert c.head // size == h.head // size
        moved = any(h.head // size != perm[h].head // size for h in perm)
        assert moved == groups  # whole K/V groups move only when asked
    noisy, _ = permuted_copy(model, seed=3, noise=0.01)
    again, _ = permuted_copy(model, seed=3, noise=0.01)
    with torch.no_grad():
        out = noisy(batch.tokens)
        assert not torch.allclose(out, model(batch.tokens), atol=1e-3)
        torch.testing.assert_close(again(batch.tokens), out, atol=0, rtol=0)  # seeded


@pytest.mark.unit
def test_recovery_counts_the_pairs_sent_to_their_own_copy() -> None:
    perm = {Head(0, 0): Head(0, 1), Head(0, 1): Head(0, 0)}
    assert recovery(HeadMap([("L0H0", "L0H1"), ("L0H1", "L0H1")]), perm) == 0.5
    assert recovery(HeadMap([("L0H0", "L0H1"), ("L0H1", "L0H0")]), perm) == 1.0
    with pytest.raises(ValueError, match="no pairs"):
        recovery(HeadMap([]), perm)


@pytest.mark.parametrize("one_to_one", [False, True])
def test_profile_and_cka_recover_an_exact_relabelling(exact_copy: Any, one_to_one: bool) -> None:
    """The issue's done-when: with no noise, every student head (budget 1.0: all 32) is mapped
    to its own relabelled copy by profile, cka and combined."""
    features, perm = exact_copy
    for method in ("profile", "cka", "combined"):
        hm = correspond_features(features, method=method, budget=1.0, one_to_one=one_to_one)
        assert len(hm) == 32 and hm.config["method"] == method
        assert recovery(hm, perm) == 1.0, method
        assert max(hm.distances) < 1e-4  # r = 1, CKA = 1 up to float32
    cka_map = correspond_features(features, method="cka", budget=1.0, one_to_one=one_to_one)
    null = cka_map.config["cka_null"]
    assert len(null["value"]) == 32 and null["n_perm"] == 20
    assert min(null["value"]) > 0.999 and max(null["null_mean"]) < 0.5


# --- the methods -----------------------------------------------------------------------------


@pytest.mark.parametrize("one_to_one", [False, True])
@pytest.mark.parametrize("budget", [0.13, 6])
def test_impact_is_map_heads(
    zoo_pair: CorrespondenceFeatures, budget: Any, one_to_one: bool
) -> None:
    s, t = zoo_pair.student_sweep, zoo_pair.teacher_sweep
    for circuit in (None, Circuit({"A": ["L0H6", "L0H7", "L1H0", "L3H3", "L2H2", "L3H6"]})):
        want = map_heads(s, t, circuit, budget=budget, one_to_one=one_to_one)
        got = correspond_features(
            zoo_pair, method="impact", budget=budget, one_to_one=one_to_one, circuit=circuit
        )
        assert got.pairs == want.pairs and got.distances == want.distances
        assert got.kind == want.kind == "ablation"
        assert got.config == want.config | {"method": "impact"}


@pytest.mark.unit
def test_rank_quantiles_by_hand() -> None:
    q = rank_quantiles(torch.tensor([0.3, 0.1, 0.1, 0.5]))
    torch.testing.assert_close(q, torch.tensor([0.625, 0.25, 0.25, 0.875]))


@pytest.mark.unit
def test_impact_rank_does_not_collapse_when_the_scales_differ() -> None:
    """The SmolLM2 case in small: every teacher impact is negative, the student's positive; by
    impact every student head meets the teacher's top head, by rank each meets its rank."""
    student = _sweep([[0.20, 0.10], [0.05, 0.01]])
    teacher = _sweep([[-0.30, -0.20], [-0.50, -0.40]])
    features = CorrespondenceFeatures(student, teacher)
    by_impact = correspond_features(features, method="impact", budget=3)
    assert by_impact.teacher_heads == [Head(0, 1)] * 3
    by_rank = correspond_features(features, method="impact-rank", budget=3)
    # student ranks 4, 3, 2 of 4 -> the teacher heads of ranks 4 (-0.20), 3 (-0.30), 2 (-0.40)
    assert by_rank.teacher_heads == [Head(0, 1), Head(0, 0), Head(1, 1)]
    assert by_rank.distances == [0.0, 0.0, 0.0] and by_rank.kind == "impact-rank"


@pytest.mark.unit
def test_profile_is_one_minus_pearson_r(caplog: pytest.LogCaptureFixture) -> None:
    g = torch.Generator().manual_seed(0)
    ps, pt = torch.randn(2, 2, 12, generator=g), torch.randn(1, 3, 12, generator=g)
    pt[0, 2] = 2 * ps[0, 0] + 1  # r = 1 with the student's top head
    ps[1, 1] = 0.0  # a constant profile: no correlation
    student = _sweep([[0.3, 0.2], [0.1, 0.05]], ps)
    teacher = _sweep([[0.0, 0.0, 0.0]], pt)
    features = CorrespondenceFeatures(student, teacher)
    with caplog.at_level(logging.WARNING):
        hm = correspond_features(features, method="profile", budget=4)
    rows = [ps[0, 0], ps[0, 1], ps[1, 0], ps[1, 1]]
    for (s, t), d, row in zip(hm.pairs, hm.distances, rows, strict=True):
        if s == Head(1, 1):
            assert d == pytest.approx(1.0) and t == Head(0, 0)  # r = 0 everywhere: the first
        else:
            r = [np.corrcoef(row.numpy(), c.numpy())[0, 1] for c in pt[0]]
            assert d == pytest.approx(1 - max(r), abs=1e-5)
            assert t == Head(0, int(np.argmax(r)))
    assert hm.pairs[0] == (Head(0, 0), Head(0, 2)) and hm.distances[0] == pytest.approx(0, abs=1e-6)
    assert any("L1H1" in w and "same on every prompt" in w for w in hm.config["warnings"])
    assert "profile has no correlation" in caplog.text


def test_a_user_method_and_a_given_cost(zoo_pair: CorrespondenceFeatures) -> None:
    register_method(
        "last-head",
        lambda inputs: torch.tensor(
            [
                [float(c != inputs.candidates[-1]) for c in inputs.candidates]
                for _ in inputs.students
            ]
        ),
    )
    try:
        hm = correspond_features(zoo_pair, method="last-head", budget=3)
        assert hm.teacher_heads == [Head(3, 7)] * 3 and hm.config["method"] == "last-head"
    finally:
        del METHODS["last-head"]
    cost = torch.ones(8, 32)  # the zoo student's 2 x 4 heads, the teacher's 4 x 8
    cost[:, 5] = 0.0  # every student head -> L0H5
    hm = correspond_features(zoo_pair, budget=2, cost=cost)
    assert hm.teacher_heads == [Head(0, 5)] * 2 and hm.config["method"] == "custom"
    assert hm.distances == [0.0, 0.0]
    with pytest.raises(ValueError, match=r"\[8, 32\]"):
        correspond_features(zoo_pair, cost=torch.ones(8, 31))
    with pytest.raises(ValueError, match="valid: impact, impact-rank, profile, cka, combined"):
        correspond_features(zoo_pair, method="nearest")
    with pytest.raises(ValueError, match="needs teacher_sweep"):
        correspond_features(
            CorrespondenceFeatures(zoo_pair.student_sweep, None, None, torch.zeros(4, 2, 2, 3)),
            method="impact",
        )


def test_correspond_runs_only_what_the_method_reads(teacher: Any, task: Any) -> None:
    copy, perm = permuted_copy(teacher, seed=1)
    hm = correspond(teacher, copy, task, method="cka", budget=0.25, one_to_one=True, n=16, n_boot=0)
    assert recovery(hm, perm) == 1.0
    assert hm.config["teacher_baseline"] is None  # no teacher sweep was run
    assert hm.kind == "cka" and len(hm) == 8


def test_the_sweep_keeps_each_prompts_impact(exact_copy: Any) -> None:
    features, _ = exact_copy
    s = features.student_sweep
    assert s.prompt_delta is not None and s.prompt_delta.shape == (4, 8, 32)
    torch.testing.assert_close(s.prompt_delta.mean(-1), s.delta, atol=1e-6, rtol=0)
    back = AblationResult.from_dict(s.to_dict())
    torch.testing.assert_close(back.prompt_delta, s.prompt_delta)
    old = s.to_dict()
    del old["prompt_delta"]  # a result saved before prompt_delta was kept
    assert AblationResult.from_dict(old).prompt_delta is None
    with pytest.raises(ValueError, match="no per-prompt impacts"):
        correspond_features(
            CorrespondenceFeatures(AblationResult.from_dict(old), features.teacher_sweep),
            method="profile",
        )


def test_the_own_baseline_and_what_noise_does_to_behaviour(teacher: Any, task: Any) -> None:
    """A model mapped to itself: the identity is the answer (CKA finds it); the KL of the model
    from itself is 0, from an exact relabelling ~0 (float rounding), from a noisy copy > 0."""
    from circuitlens.mapping.known_answer import behaviour_change, identity_permutation

    ident = identity_permutation(teacher)
    assert len(ident) == 32 and all(h == k for h, k in ident.items())
    same = behaviour_change(teacher, teacher, task, n=16)
    assert same.kl == 0.0 and same.accuracy == same.original_accuracy and same.n == 16
    exact, _ = permuted_copy(teacher, seed=0)
    relabelled = behaviour_change(teacher, exact, task, n=16)
    assert relabelled.kl < 1e-6 and relabelled.accuracy == same.accuracy
    noisy, _ = permuted_copy(teacher, seed=0, noise=0.1)
    changed = behaviour_change(teacher, noisy, task, n=16)
    assert changed.kl > 1e-4 and changed.original_accuracy == same.accuracy
    assert set(changed.to_dict()) == {"accuracy", "original_accuracy", "kl", "n"}
    features = gather_features(teacher, teacher, task, ("z",), AblationConfig(n=16, n_boot=0))
    own = map_heads(
        features.student_sweep, budget=1.0, one_to_one=True, method="cka", features=features
    )
    assert recovery(own, ident) == 1.0
