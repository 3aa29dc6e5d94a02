"""The screened sweep against the exact one, the attribution estimate against a finite
difference, and the stopping rule on hand-made cases."""

from __future__ import annotations

import pytest
import torch

from circuitlens import get_task
from circuitlens.ablation.config import AblationConfig
from circuitlens.ablation.means import compute_means
from circuitlens.ablation.result import AblationResult
from circuitlens.ablation.screening import screen_heads, settled
from circuitlens.ablation.sweep import ablation_sweep
from circuitlens.core.hooks import hooked, z_name
from circuitlens.core.types import Head
from circuitlens.mapping.map import choose_student_heads, map_heads
from circuitlens.tasks.metrics import METRICS, answer_logits


@pytest.fixture(scope="module")
def task():
    return get_task("entity_tracking", n_boxes=3, seed=0, n_test=24)


@pytest.fixture(scope="module")
def exact(tiny_bridge, task):
    return {
        m: ablation_sweep(
            tiny_bridge, task, AblationConfig(metric=m, n=24, method="exact"), progress=False
        )
        for m in ("prob", "accuracy", "logit_diff")
    }


@pytest.mark.parametrize("metric", ["prob", "accuracy", "logit_diff"])
@pytest.mark.parametrize("screen", ["atp", "atp*"])
def test_screened_verified_values_equal_the_exact_sweep(
    tiny_bridge, task, exact, metric, screen
) -> None:
    res = ablation_sweep(
        tiny_bridge,
        task,
        AblationConfig(metric=metric, n=24, method="screened", top=2, screen=screen),
        progress=False,
    )
    want = exact[metric]
    assert res.config.method == "screened"
    assert res.p_own == pytest.approx(want.p_own, abs=1e-5)
    assert int(res.exact.sum()) >= 2 + 4  # top plus the margin
    torch.testing.assert_close(
        res.p_ablated[res.exact], want.p_ablated[res.exact], atol=1e-5, rtol=0
    )
    torch.testing.assert_close(res.p_ablated[~res.exact], res.estimated[~res.exact])
    torch.testing.assert_close(res.delta, res.p_baseline - res.p_ablated)


def test_a_huge_safety_factor_verifies_every_head(tiny_bridge, task, exact) -> None:
    res = ablation_sweep(
        tiny_bridge,
        task,
        AblationConfig(metric="prob", n=24, method="screened", top=1, safety=1e9),
        progress=False,
    )
    assert bool(res.exact.all())
    torch.testing.assert_close(res.p_ablated, exact["prob"].p_ablated, atol=1e-5, rtol=0)


def test_auto_is_exact_on_small_models(tiny_bridge, task, exact) -> None:
    res = ablation_sweep(tiny_bridge, task, AblationConfig(metric="prob", n=24), progress=False)
    assert res.config.method == "exact" and bool(res.exact.all()) and res.estimated is None
    torch.testing.assert_close(res.p_ablated, exact["prob"].p_ablated, atol=1e-6, rtol=0)


def test_verify_heads_are_measured(tiny_bridge, task) -> None:
    res = ablation_sweep(
        tiny_bridge,
        task,
        AblationConfig(
            metric="prob",
            n=24,
            method="screened",
            top=1,
            verify=tuple(str(h) for h in ["L0H3", "L1H1"]),
        ),
        progress=False,
    )
    assert bool(res.exact[0, 3]) and bool(res.exact[1, 1])


@pytest.mark.parametrize("metric", ["prob", "logit_diff"])
def test_atp_estimate_is_the_directional_derivative(tiny_bridge, task, metric) -> None:
    """Plain AtP = d/de metric(z + e (mean - z)) at e = 0, by a central finite difference in
    double precision: the gradient is the total derivative (paths through later heads open)."""
    model = tiny_bridge
    batch = task.batch(model, "test", 24)
    means = compute_means(model, batch.ablation_tokens).double()
    model.to(torch.float64)
    try:
        scr = screen_heads(model, batch, means, metric, "atp")
        for head in [Head(0, 1), Head(0, 2)]:  # layer 0: its effect also runs through layer 1

            def run(eps: float, head: Head = head) -> float:
                def hook(z, hook):
                    z = z.clone()
                    m = means[head.layer, : z.shape[1], head.head].to(z)
                    z[:, :, head.head] += eps * (m - z[:, :, head.head])
                    return z

                with torch.no_grad(), hooked(model, [(z_name(head.layer), hook)]):
                    last = answer_logits(model(batch.tokens), batch)  # float64
                    if metric == "prob":  # the library's prob is float32: too coarse here
                        return float(last.softmax(-1)[torch.arange(24), batch.answer_ids].mean())
                    return float(METRICS[metric](last, batch))

            eps = 1e-2  # HF attention takes its softmax in float32: not smaller
            slope = (run(eps) - run(-eps)) / (2 * eps)
            est = float(scr.p_estimated[head.layer, head.head]) - scr.p_own
            assert est == pytest.approx(slope, rel=2e-3, abs=1e-9)
    finally:
        model.to(torch.float32)


def test_settled_on_hand_made_cases() -> None:
    est = torch.tensor([0.5, 0.4, 0.1, -0.05])
    # abs, k=1: the best verified |impact| 0.45 against 1.5 x 0.1 of the unverified: settled
    assert settled({0: 0.45, 1: 0.3}, est, k=1, threshold=None, safety=1.5, margin=1, rank="abs")
    # the margin asks for 3 verified heads
    assert not settled({0: 0.45, 1: 0.3}, est, 1, None, 1.5, margin=2, rank="abs")
    # abs, k=2: the second verified 0.12 < 1.5 x 0.1
    assert not settled(
        {0: 0.45, 1: 0.12}, est, k=2, threshold=None, safety=1.5, margin=0, rank="abs"
    )
    # signed, k=2: a verified impact of -0.3 is not among the top; bound of head 2 is 0.15
    assert not settled({0: 0.45, 1: -0.3}, est, 2, None, 1.5, 0, rank="signed")
    assert settled({0: 0.45, 1: 0.16}, est, 2, None, 1.5, 0, rank="signed")
    # signed: a negative estimate's bound is -0.05 + 0.5 x 0.05 = -0.025
    assert settled({0: 0.45, 1: 0.3, 2: -0.02}, est, 3, None, 1.5, 0, rank="signed")
    assert not settled({0: 0.45, 1: 0.3, 2: -0.03}, est, 3, None, 1.5, 0, rank="signed")
    # a threshold: unverified heads may reach 1.5 x 0.1 = 0.15
    assert not settled({0: 0.45, 1: 0.3}, est, k=None, threshold=0.1, safety=1.5, margin=0)
    assert settled({0: 0.45, 1: 0.3}, est, k=None, threshold=0.2, safety=1.5, margin=0)
    assert settled({0: 0, 1: 0, 2: 0, 3: 0}, est, k=4, threshold=None, safety=1.5, margin=9)


def test_mapping_uses_measured_heads_only(exact) -> None:
    s = exact["prob"]
    fake = AblationResult.from_dict(s.to_dict())
    best = Head(*divmod(int(fake.delta.argmax()), fake.delta.shape[1]))
    fake.delta[best.layer, best.head] = 99.0  # an estimate, far above every measured value
    fake.exact[best.layer, best.head] = False
    chosen = choose_student_heads(fake, 2)
    assert best not in chosen and len(chosen) == 2
    head_map = map_heads(fake, fake, budget=2)
    assert all(t != best and st != best for st, t in head_map.pairs)
    with pytest.raises(ValueError, match="measured only"):
        fake.exact[:] = False
        fake.exact[0, 0] = True
        choose_student_heads(fake, 2)


def test_to_dict_round_trip_keeps_the_exact_mask(tiny_bridge, task) -> None:
    res = ablation_sweep(
        tiny_bridge,
        task,
        AblationConfig(metric="prob", n=24, method="screened", top=1),
        progress=False,
    )
    back = AblationResult.from_dict(res.to_dict())
    assert torch.equal(back.exact, res.exact)
    torch.testing.assert_close(back.estimated, res.estimated)
    assert back.config == res.config


def test_screened_activation_patch_equals_exact_where_measured(tiny_bridge, task) -> None:
    from circuitlens.circuits.activation import activation_patch
    from circuitlens.circuits.attribution import ScreenedPatch, screened_activation_patch
    from circuitlens.tasks import make_metric

    batch = task.batch(tiny_bridge, "test")
    metric = make_metric("logit_diff", batch)
    exact = activation_patch(
        tiny_bridge, batch.tokens, batch.corrupted_tokens, metric, progress=False
    )
    res = screened_activation_patch(
        tiny_bridge,
        batch.tokens,
        batch.corrupted_tokens,
        metric,
        ScreenedPatch(top=2),
        positions=batch.positions["last"],
        progress=False,
    )
    m = res.exact
    assert int(m.sum()) >= 2 + 4
    torch.testing.assert_close(res.scores[m], exact.scores[m], atol=1e-5, rtol=1e-5)
    assert res.corrupted_score == pytest.approx(exact.corrupted_score, abs=1e-5)
    subset = activation_patch(
        tiny_bridge,
        batch.tokens,
        batch.corrupted_tokens,
        metric,
        progress=False,
        heads=["L1H2"],
    )
    assert int(subset.exact.sum()) == 1 and bool(subset.scores[0].isnan().all())
    assert float(subset.scores[1, 2]) == pytest.approx(float(exact.scores[1, 2]), abs=1e-5)


def test_atp_of_activation_patching_is_the_directional_derivative(tiny_bridge, task) -> None:
    """AtP at a layer-0 head (its effect runs through layer 1 too) equals the central finite
    difference of the metric along clean z - corrupted z."""
    from circuitlens.circuits.attribution import attribution_patch
    from circuitlens.tasks import make_metric

    model = tiny_bridge
    batch = task.batch(model, "test")
    metric = make_metric("logit_diff", batch)
    model.to(torch.float64)
    try:
        atp = attribution_patch(model, batch.tokens, batch.corrupted_tokens, metric)
        with torch.no_grad():
            _, clean = model.run_with_cache(batch.tokens)

        def run(eps: float) -> float:
            def hook(z, hook):
                z = z.clone()
                z[:, :, 1] += eps * (clean[z_name(0)][:, :, 1] - z[:, :, 1])
                return z

            with torch.no_grad(), hooked(model, [(z_name(0), hook)]):
                return float(metric(model(batch.corrupted_tokens)))

        eps = 1e-2
        slope = (run(eps) - run(-eps)) / (2 * eps)
        assert float(atp.scores[0, 1]) - atp.corrupted_score == pytest.approx(slope, rel=2e-3)
    finally:
        model.to(torch.float32)


@pytest.mark.parametrize("metric", ["prob", "accuracy"])
def test_screened_sweep_has_the_exact_intervals_at_measured_heads_only(
    tiny_bridge, task, exact, metric
) -> None:
    res = ablation_sweep(
        tiny_bridge,
        task,
        AblationConfig(metric=metric, n=24, method="screened", top=1),
        progress=False,
    )
    m, want = res.exact, exact[metric]
    assert res.config.n_boot == 1000 and want.delta_ci is not None
    # the same paired resamples: a measured head's interval is the exact sweep's
    torch.testing.assert_close(res.delta_ci[:, m], want.delta_ci[:, m], atol=1e-5, rtol=0)
    assert not bool(res.delta_ci[:, m].isnan().any())
    assert bool(res.delta_ci[:, ~m].isnan().all())  # estimates: no interval
    for h in res.heads:
        if bool(m[h.layer, h.head]):
            assert res.excludes_zero(h) == want.excludes_zero(h)
        else:
            assert res.excludes_zero(h) is None
    frame = res.to_frame()
    assert list(frame.columns)[-3:] == ["delta_lo", "delta_hi", "exact"]
    assert frame.exact.tolist() == m.flatten().tolist()
    assert frame.delta_lo[~frame.exact].isna().all() and frame.delta_hi[frame.exact].notna().all()
    back = AblationResult.from_dict(res.to_dict())
    torch.testing.assert_close(back.delta_ci, res.delta_ci, equal_nan=True)
    assert torch.equal(back.exact, res.exact)


def test_screened_sweep_without_intervals(tiny_bridge, task) -> None:
    res = ablation_sweep(
        tiny_bridge,
        task,
        AblationConfig(metric="prob", n=24, method="screened", top=1, n_boot=0),
        progress=False,
    )
    assert res.delta_ci is None and res.excludes_zero(Head(0, 0)) is None
    assert "delta_lo" not in res.to_frame().columns and "exact" in res.to_frame().columns


def test_screened_sweep_against_another_models_baseline(tiny_bridge, make_llama_dir, task):
    from circuitlens import evaluate, load_model

    other = load_model(make_llama_dir(seed=3))
    res = ablation_sweep(
        tiny_bridge,
        task,
        AblationConfig(metric="prob", n=24, method="screened", top=1),
        baseline_from=other,
        progress=False,
    )
    p_other = evaluate(other, task, "probe", 24, "prob")
    assert res.p_baseline == pytest.approx(p_other, abs=1e-6)
    torch.testing.assert_close(res.delta, p_other - res.p_ablated)
    m = res.exact
    lo, hi = res.delta_ci[0][m], res.delta_ci[1][m]
    assert bool((lo <= res.delta[m] + 1e-6).all() and (res.delta[m] <= hi + 1e-6).all())


def test_map_warnings_ignore_estimated_heads(exact) -> None:
    """An estimated head has no interval and is never chosen: it is neither reported as flat
    nor as a tie with the last chosen student head."""
    s = exact["prob"]
    fake = AblationResult.from_dict(s.to_dict())
    # distinct measured impacts: a random model's sweep may hold a tie of its own (dP = 0 at
    # several heads, depending on the prompts), which is not the estimate's
    fake.delta = fake.delta + 1e-3 * torch.arange(fake.delta.numel()).view(fake.delta.shape)
    chosen = choose_student_heads(fake, 2)
    other = next(h for h in fake.heads if h not in chosen)
    fake.exact[other.layer, other.head] = False
    fake.delta_ci[:, other.layer, other.head] = float("nan")
    fake.delta[other.layer, other.head] = fake.delta[chosen[1].layer, chosen[1].head]
    assert fake.excludes_zero(other) is None
    head_map = map_heads(fake, fake, budget=2)
    assert head_map.student_heads == chosen
    warnings = head_map.config["warnings"]
    assert not any(str(other) in w or "decides the student heads" in w for w in warnings)
