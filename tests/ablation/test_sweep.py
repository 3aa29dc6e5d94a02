from __future__ import annotations

import pytest
import torch

from circuitlens import get_task
from circuitlens.ablation.config import AblationConfig
from circuitlens.ablation.means import compute_means, mean_ablated
from circuitlens.ablation.sweep import ablation_sweep
from circuitlens.core.hooks import z_name
from circuitlens.core.types import Head
from circuitlens.tasks.metrics import METRICS


@pytest.fixture(scope="module")
def task():
    return get_task("entity_tracking", n_boxes=3, seed=0, n_test=24)


def test_compute_means_is_the_plain_mean(tiny_bridge, task) -> None:
    batch = task.batch(tiny_bridge, "test")
    means = compute_means(tiny_bridge, batch.ablation_tokens, batch_size=10)
    _, cache = tiny_bridge.run_with_cache(batch.ablation_tokens)
    for layer in range(2):
        torch.testing.assert_close(means[layer], cache[z_name(layer)].mean(0), atol=1e-6, rtol=1e-5)


def test_compute_means_skips_padding(tiny_bridge) -> None:
    tokens = torch.tensor([[2, 10, 11, 12], [2, 13, 14, 0]])
    means = compute_means(tiny_bridge, tokens, lengths=torch.tensor([4, 3]))
    _, c0 = tiny_bridge.run_with_cache(tokens[:1])
    _, c1 = tiny_bridge.run_with_cache(tokens[1:, :3])
    z0, z1 = c0[z_name(1)][0], c1[z_name(1)][0]
    torch.testing.assert_close(means[1, :3], (z0[:3] + z1) / 2, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(means[1, 3], z0[3], atol=1e-6, rtol=1e-5)  # only prompt 0 has it


def test_ablating_nothing_changes_nothing_and_hooks_are_removed(tiny_bridge, task) -> None:
    batch = task.batch(tiny_bridge, "test")
    means = compute_means(tiny_bridge, batch.ablation_tokens)
    with torch.no_grad():
        clean = tiny_bridge(batch.tokens)
        with mean_ablated(tiny_bridge, [], means):
            same = tiny_bridge(batch.tokens)
        with mean_ablated(tiny_bridge, ["L1H2"], means):
            ablated = tiny_bridge(batch.tokens)
        with pytest.raises(RuntimeError, match="boom"), mean_ablated(tiny_bridge, ["L0H0"], means):
            raise RuntimeError("boom")
        after = tiny_bridge(batch.tokens)
    torch.testing.assert_close(same, clean)
    assert not torch.allclose(ablated, clean)
    torch.testing.assert_close(after, clean)


def test_ablating_with_the_clean_mean_of_identical_prompts_changes_nothing(
    tiny_bridge, task
) -> None:
    tokens = task.batch(tiny_bridge, "test").tokens[:1].repeat(4, 1)
    means = compute_means(tiny_bridge, tokens)
    with torch.no_grad():
        clean = tiny_bridge(tokens)
        with mean_ablated(tiny_bridge, ["L0H0", "L1H3"], means):
            torch.testing.assert_close(tiny_bridge(tokens), clean, atol=1e-5, rtol=1e-5)


def test_bad_heads_and_means(tiny_bridge, task) -> None:
    batch = task.batch(tiny_bridge, "test")
    means = compute_means(tiny_bridge, batch.ablation_tokens)
    with (
        pytest.raises(ValueError, match="outside the model"),
        mean_ablated(tiny_bridge, ["L5H0"], means),
    ):
        pass
    with pytest.raises(ValueError, match="means must be"):
        with mean_ablated(tiny_bridge, ["L0H0"], means[:1]):
            pass
    with pytest.raises(ValueError, match="lengths must lie"):
        compute_means(tiny_bridge, batch.tokens, lengths=torch.full((len(batch),), 99))


@pytest.mark.parametrize("metric", ["accuracy", "prob"])
def test_sweep_equals_one_head_at_a_time(tiny_bridge, task, metric) -> None:
    result = ablation_sweep(
        tiny_bridge, task, AblationConfig(metric=metric, n=24, heads_per_pass=3), progress=False
    )
    batch = task.batch(tiny_bridge, "probe", 24)  # a sweep reads the probe prompts
    means = compute_means(tiny_bridge, batch.ablation_tokens)
    with torch.no_grad():
        p_own = METRICS[metric](tiny_bridge(batch.tokens), batch).item()
        assert result.p_own == pytest.approx(p_own, abs=1e-6)
        for layer in range(2):
            for h in range(4):
                with mean_ablated(tiny_bridge, [Head(layer, h)], means):
                    want = METRICS[metric](tiny_bridge(batch.tokens), batch).item()
                assert float(result.p_ablated[layer, h]) == pytest.approx(want, abs=1e-6)
    torch.testing.assert_close(result.delta, result.p_own - result.p_ablated)
    # head, layer, head_index, p_ablated, delta, CI lo, CI hi, exact
    assert list(result.to_frame().columns) == [
        "head",
        "layer",
        "head_index",
        "p_ablated",
        "delta",
        "delta_lo",
        "delta_hi",
        "exact",
    ]
    assert result.to_frame().shape == (8, 8)


def test_baseline_from_another_model(tiny_bridge, make_llama_dir, task) -> None:
    from circuitlens import evaluate, load_model

    other = load_model(make_llama_dir(seed=3))
    res = ablation_sweep(
        tiny_bridge, task, AblationConfig(metric="prob", n=24), baseline_from=other, progress=False
    )
    p_other = evaluate(other, task, "probe", 24, "prob")
    assert res.p_baseline == pytest.approx(p_other)
    torch.testing.assert_close(res.delta, p_other - res.p_ablated)


def test_bootstrap_interval_equals_a_slow_loop() -> None:
    from circuitlens.ablation.sweep import bootstrap_delta

    g = torch.Generator().manual_seed(0)
    base = (torch.rand(40, generator=g) > 0.3).float()
    abl = (torch.rand(3, 40, generator=g) > 0.5).float()
    ci = bootstrap_delta(base, abl, n_boot=200, level=0.9, seed=4)
    idx = torch.randint(0, 40, (200, 40), generator=torch.Generator().manual_seed(4))
    slow = torch.tensor(
        [[float(base[i].mean() - abl[h, i].mean()) for i in idx] for h in range(3)]
    ).double()
    torch.testing.assert_close(ci[0], slow.quantile(0.05, dim=1).float())
    torch.testing.assert_close(ci[1], slow.quantile(0.95, dim=1).float())
    delta = base.mean() - abl.mean(1)
    assert ((ci[0] <= delta) & (delta <= ci[1])).all()
    same = bootstrap_delta(torch.ones(10), torch.ones(2, 10) * 0.25)  # no spread: a point
    torch.testing.assert_close(same, torch.full((2, 2), 0.75))


def test_sweep_carries_intervals_and_round_trips(tiny_bridge, task) -> None:
    from circuitlens.ablation.result import AblationResult

    result = ablation_sweep(
        tiny_bridge, task, AblationConfig(metric="prob", n=24, n_boot=100), progress=False
    )
    assert result.delta_ci is not None and result.delta_ci.shape == (2, 2, 4)
    assert (result.delta_ci[0] <= result.delta + 1e-6).all()
    assert (result.delta <= result.delta_ci[1] + 1e-6).all()
    back = AblationResult.from_dict(result.to_dict())
    torch.testing.assert_close(back.delta_ci, result.delta_ci)
    none = ablation_sweep(
        tiny_bridge, task, AblationConfig(metric="prob", n=24, n_boot=0), progress=False
    )
    assert none.delta_ci is None and none.excludes_zero(Head(0, 0)) is None


def test_a_screened_sweep_round_trips_through_strict_json() -> None:
    """The experiment runner writes NaN as null (strict JSON): a screened sweep's intervals at
    heads it only estimated come back as NaN, and a sweep saved before rank= reads as 'abs'."""
    import json

    from circuitlens.ablation.config import AblationConfig
    from circuitlens.ablation.result import AblationResult
    from circuitlens.core.io import json_text

    delta = torch.tensor([[0.3, 0.1], [0.0, -0.2]])
    ci = torch.stack([delta - 0.05, delta + 0.05])
    ci[:, 1, 0] = float("nan")
    exact = torch.tensor([[True, True], [False, True]])
    cfg = AblationConfig(method="screened", rank="signed")
    result = AblationResult(0.9, 0.9, 0.9 - delta, delta, "m", cfg, delta_ci=ci, exact=exact)
    back = AblationResult.from_dict(json.loads(json_text(result.to_dict())))
    torch.testing.assert_close(back.delta_ci, ci, equal_nan=True)
    assert back.excludes_zero(Head(1, 0)) is None and back.excludes_zero(Head(0, 0)) is True
    assert back.config.rank == "signed"
    old = result.to_dict()
    del old["config"]["rank"]
    assert AblationResult.from_dict(old).config.rank == "abs"
    # a sweep saved without its options is of before the probe split: it read the test prompts
    assert back.config.split == "probe"
    del old["config"]
    assert AblationResult.from_dict(old).config.split == "test"


def test_a_bf16_sweep_is_the_float32_sweep_within_bf16_rounding(tiny_bridge, task) -> None:
    """``dtype="bfloat16"``: the same sweep under bf16 autocast, its scores back in float32;
    the impacts equal the float32 sweep's to bf16's precision (8 bits of mantissa), and the
    model's own weights are untouched (float32)."""
    import warnings

    from circuitlens.core.devices import SlowPrecisionWarning

    cfg = AblationConfig(metric="prob", n=24, n_boot=0)
    f32 = ablation_sweep(tiny_bridge, task, cfg, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SlowPrecisionWarning)  # a CPU without native bf16
        b16 = ablation_sweep(
            tiny_bridge, task, cfg.with_overrides(dtype="bfloat16"), progress=False
        )
    assert b16.delta.dtype == f32.delta.dtype == torch.float32
    assert b16.config.dtype == "bfloat16" and f32.config.dtype == "float32"
    torch.testing.assert_close(b16.delta, f32.delta, atol=0.02, rtol=0)
    assert not torch.equal(b16.delta, f32.delta)  # the forwards did run in bf16
    assert all(p.dtype == torch.float32 for p in tiny_bridge.parameters())
    with pytest.raises((ValueError, TypeError), match="dtype"):  # TypeError: the type checker's
        AblationConfig(dtype="float16")
