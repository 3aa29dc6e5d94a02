"""Multi-position CKA and attention-pattern correspondence (circuitlens.mapping.positions):
the all-pairs CKA against the pairwise reference, one position against the last-token ``cka``
cost, and an exact relabelling recovered by every method."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import circuitlens as cl
from circuitlens.ablation.config import AblationConfig
from circuitlens.ablation.result import AblationResult
from circuitlens.core.types import Head
from circuitlens.mapping.features import (
    ActivationReads,
    MoreSettings,
    gather_more,
    head_activations,
    head_z,
)
from circuitlens.mapping.known_answer import permuted_copy, recovery
from circuitlens.mapping.map import correspond_features
from circuitlens.mapping.methods import CorrespondenceFeatures, CostInputs, cka_cost
from circuitlens.mapping.positions import cka_all_pairs, cka_positions_cost
from circuitlens.measure.cka import cka

ZOO = "zoo:entity-tracking-teacher"


@pytest.fixture(scope="module")
def teacher() -> Any:
    return cl.load_model(ZOO)


@pytest.fixture(scope="module")
def task(teacher: Any) -> Any:
    return cl.get_task("entity_tracking", model=teacher)


def _sweep(n_layers: int, n_heads: int) -> AblationResult:
    d = torch.linspace(1.0, 0.0, n_layers * n_heads).reshape(n_layers, n_heads)
    return AblationResult(1.0, 1.0, 1.0 - d, d, "m", AblationConfig())


def _heads(model: Any) -> list[Head]:
    f = cl.model_facts(model)
    return [Head(layer, h) for layer in range(f.n_layers) for h in range(f.n_heads)]


@pytest.mark.unit
def test_all_pairs_cka_equals_the_pairwise_estimator() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 40, 6, generator=g)
    y = torch.randn(7, 40, 3, generator=g)
    y[2] = x[1, :, :3] @ torch.randn(3, 3, generator=g) + 0.1 * y[2]  # one related pair
    y[4] = 1.0  # a constant head: CKA 0, not NaN
    with pytest.warns(RuntimeWarning, match="constant"):
        want = torch.stack([cka(xi.expand(7, -1, -1), y) for xi in x]).float()
    got = cka_all_pairs(x, y, chunk=2)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    assert float(got[1, 2]) > 0.3 and float(got[:, 4].abs().max()) == 0.0


def test_one_position_is_the_last_token_cka_cost(teacher: Any, task: Any) -> None:
    student = cl.load_model("zoo:entity-tracking-student")
    s = head_activations(student, task, "train", 24, ActivationReads(positions=("last",)))[
        "z_positions"
    ]
    t = head_activations(teacher, task, "train", 24, ActivationReads(positions=("last",)))[
        "z_positions"
    ]
    zs, zt = head_z(student, task, "train", 24), head_z(teacher, task, "train", 24)
    torch.testing.assert_close(s.z[:, 0], zs)
    f = cl.model_facts(student)
    features = CorrespondenceFeatures(
        _sweep(f.n_layers, f.n_heads), None, zs, zt, {"z_positions": (s, t)}
    )
    heads = _heads(student)
    want = cka_cost(CostInputs(features, heads, _heads(teacher)))
    got = cka_positions_cost(CostInputs(features, heads, _heads(teacher)))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_every_method_recovers_an_exact_relabelling(teacher: Any, task: Any) -> None:
    copy, perm = permuted_copy(teacher, seed=0)
    needs = ("z_positions", "z_tokens", "pattern")
    more = gather_more(teacher, copy, task, needs, MoreSettings(split="train", n=16, max_rows=200))
    assert more["z_tokens"][0].z.shape[0] == 200  # capped, the same tokens on both sides
    assert more["z_positions"][0].positions == task.position_names
    f = cl.model_facts(teacher)
    features = CorrespondenceFeatures(_sweep(f.n_layers, f.n_heads), more=more)
    for method in ("cka-positions", "cka-positions-mean", "cka-tokens", "pattern"):
        for one_to_one in (False, True):
            hm = correspond_features(
                features, method=method, budget=1.0, one_to_one=one_to_one, n_perm=4
            )
            assert recovery(hm, perm) == 1.0, (method, one_to_one)
            assert max(hm.distances) < 1e-4, method
    hm = correspond_features(features, method="cka-positions", budget=0.25, n_perm=4)
    assert len(hm.config["cka_null"]["value"]) == len(hm) == 8
