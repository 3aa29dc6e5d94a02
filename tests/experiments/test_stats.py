from __future__ import annotations

import itertools
import json
import math
from fractions import Fraction

import numpy as np
import pytest

from circuitlens.experiments.stats import (
    SeedComparison,
    compare_family,
    compare_seeds,
    holm,
    mcnemar,
    mcnemar_exact_p,
    min_detectable_difference,
    paired_differences,
    paired_t_test,
    sign_flip_test,
    two_way_bootstrap_ci,
)


def test_mcnemar_hand_computed_binomial() -> None:
    # b = 1, c = 7: P(X <= 1 | n = 8, 1/2) = (C(8,0) + C(8,1)) / 2^8 = 9 / 256; two-sided x 2
    assert mcnemar_exact_p(1, 7) == pytest.approx(18 / 256)
    assert mcnemar_exact_p(7, 1) == pytest.approx(18 / 256)
    # b = 0, c = 5: 2 / 32
    assert mcnemar_exact_p(0, 5) == pytest.approx(1 / 16)
    assert mcnemar_exact_p(3, 3) == 1.0 and mcnemar_exact_p(0, 0) == 1.0
    # against the binomial written out term by term
    b, c = 12, 30
    tail = sum(math.factorial(b + c) / (math.factorial(i) * math.factorial(b + c - i))
               for i in range(b + 1)) / 2 ** (b + c)  # fmt: skip
    assert mcnemar_exact_p(b, c) == pytest.approx(2 * tail)


def test_mcnemar_against_scipy() -> None:
    from scipy import stats  # a dependency of circuitlens

    for b, c in ((1, 7), (12, 30), (40, 41), (0, 9)):
        assert mcnemar_exact_p(b, c) == pytest.approx(stats.binomtest(b, b + c, 0.5).pvalue)


def test_mcnemar_counts_discordant_pairs() -> None:
    a = [1, 1, 1, 0, 0, 1, 1, 0]
    b = [1, 0, 0, 0, 1, 1, 0, 0]
    m = mcnemar(a, b)
    assert (m.n, m.b, m.c) == (8, 3, 1)
    assert m.p == pytest.approx(mcnemar_exact_p(3, 1)) and m.acc_a == 5 / 8 and m.acc_b == 3 / 8
    with pytest.raises(ValueError, match="prompt by prompt"):
        mcnemar([1, 0], [1])
    with pytest.raises(ValueError, match="0/1"):
        mcnemar([0.5], [1])


# --- the seed as the unit ------------------------------------------------------------------------


def _scores(rates_a: list[float], rates_b: list[float], n_prompts: int, seed: int = 0) -> tuple:
    """Two conditions' 0/1 correctness, seeds x prompts, each seed at its own accuracy."""
    rng = np.random.default_rng(seed)
    a = (rng.random((len(rates_a), n_prompts)) < np.array(rates_a)[:, None]).astype(int)
    b = (rng.random((len(rates_b), n_prompts)) < np.array(rates_b)[:, None]).astype(int)
    return a, b


def test_paired_differences_per_seed_and_its_refusals() -> None:
    a = {0: [1, 1, 0, 0], 2: [1, 1, 1, 0], 1: [0, 0, 0, 0]}
    b = {1: [1, 0, 0, 0], 0: [1, 0, 0, 0], 2: [1, 1, 1, 1]}
    # sorted seeds 0, 1, 2: 2/4 - 1/4, 0/4 - 1/4, 3/4 - 4/4
    assert paired_differences(a, b).tolist() == [0.25, -0.25, -0.25]
    arr_a = np.array([a[s] for s in (0, 1, 2)])
    arr_b = np.array([b[s] for s in (0, 1, 2)])
    assert paired_differences(arr_a, arr_b).tolist() == [0.25, -0.25, -0.25]
    with pytest.raises(ValueError, match=r"same seeds.*only in A: \[2\].*seeds they share"):
        paired_differences(a, {0: b[0], 1: b[1]})
    with pytest.raises(ValueError, match="A has 4 test prompts per seed and B has 3; score both"):
        paired_differences(a, {s: v[:3] for s, v in b.items()})
    with pytest.raises(ValueError, match="same test prompts in every seed.*pooled mcnemar"):
        paired_differences({0: [1, 0], 1: [1]}, {0: [1, 0], 1: [1]})
    with pytest.raises(ValueError, match="2-D"):
        paired_differences(np.ones(3), np.ones(3))


def test_sign_flip_hand_computed_and_smallest_p() -> None:
    # diffs [0.1, 0.01, 0.0]: |sum| over the 8 sign assignments is 0.11 when the signs of 0.1
    # and 0.01 agree (4 of 8, the zero's sign either way) and 0.09 when they differ: p = 4/8
    assert sign_flip_test([0.1, 0.01, 0.0]) == 0.5
    # every difference positive and distinct: only the observed signs and their mirror reach it
    assert sign_flip_test([0.1, 0.2, 0.3]) == 0.25 == 2 / 2**3
    assert sign_flip_test([0.01, 0.02, 0.03, 0.04, 0.05, 0.06]) == 0.03125 == 2 / 2**6
    assert sign_flip_test([-0.01, -0.02, -0.03, -0.04, -0.05, -0.06]) == 0.03125
    assert sign_flip_test([0.0, 0.0, 0.0]) == 1.0
    # float ties: 0.7 - 0.1 - 0.2 - 0.4 + 0.3 is 0.29999999999999993 in floats, and some of the
    # assignments that reach 0.3 exactly in real arithmetic land just above or below it; they
    # must count (without the tolerance p would be 26/32), as they do with exact fractions
    d = ["0.7", "-0.1", "-0.2", "-0.4", "0.3"]
    exact = [abs(sum(s * Fraction(x) for s, x in zip(signs, d, strict=True)))
             for signs in itertools.product((1, -1), repeat=len(d))]  # fmt: skip
    p_exact = sum(v >= abs(sum(map(Fraction, d))) for v in exact) / len(exact)
    assert sign_flip_test([float(x) for x in d]) == p_exact == 28 / 32


def test_sign_flip_against_scipy_paired_permutation() -> None:
    from scipy import stats

    def mean_diff(x: np.ndarray, y: np.ndarray, axis: int) -> np.ndarray:
        return np.mean(x - y, axis=axis)

    rng = np.random.default_rng(1)
    cases = [rng.random((2, n)) for n in (3, 5, 6, 8)]
    cases.append(np.array([[0.8, 0.7, 0.9, 0.75, 0.6, 0.8], [0.7, 0.75, 0.8, 0.75, 0.6, 0.7]]))
    for x, y in cases:
        ref = stats.permutation_test(
            (x, y), mean_diff, permutation_type="samples", alternative="two-sided",
            n_resamples=np.inf, vectorized=True,
        )  # fmt: skip
        assert sign_flip_test(x - y) == pytest.approx(ref.pvalue, abs=1e-12)


def test_paired_t_test_against_scipy_and_zero_variance() -> None:
    from scipy import stats

    x = np.array([0.81, 0.84, 0.79, 0.88, 0.83, 0.80])
    y = np.array([0.80, 0.81, 0.80, 0.84, 0.80, 0.81])
    ref = stats.ttest_rel(x, y)
    t = paired_t_test(x - y)
    assert t.t == pytest.approx(ref.statistic) and t.p == pytest.approx(ref.pvalue)
    assert t.df == 5
    assert paired_t_test([0.0, 0.0, 0.0]) == (0.0, 2, 1.0)
    assert paired_t_test([0.02, 0.02, 0.02]) == (math.inf, 2, 0.0)
    assert paired_t_test([-0.02, -0.02]) == (-math.inf, 1, 0.0)
    with pytest.raises(ValueError, match="at least 2"):
        paired_t_test([0.1])


def test_two_way_bootstrap_ci_basic_properties() -> None:
    a, b = _scores([0.8, 0.75, 0.85, 0.8, 0.7, 0.9], [0.7] * 6, 200)
    lo, hi = two_way_bootstrap_ci(a, b, n_boot=2000, seed=0)
    point = float((a - b).mean())
    assert lo < point < hi
    assert (lo, hi) == two_way_bootstrap_ci(a, b, n_boot=2000, seed=0)  # reproducible
    lo50, hi50 = two_way_bootstrap_ci(a, b, n_boot=2000, level=0.5, seed=0)
    assert lo < lo50 < hi50 < hi
    # every difference the same constant: every replicate is that constant
    const = np.full((6, 200), 0.25)
    assert two_way_bootstrap_ci(const, np.zeros((6, 200)), n_boot=500) == (0.25, 0.25)
    ones = {s: [1] * 50 for s in range(4)}
    assert two_way_bootstrap_ci(ones, {s: [0] * 50 for s in range(4)}, n_boot=200) == (1.0, 1.0)


def test_two_way_bootstrap_resamples_seeds() -> None:
    # seeds' accuracies spread widely, prompts exchangeable within a seed (shuffled draws): the
    # prompt resampling alone sees almost none of the seed spread
    a, b = _scores([0.1, 0.9, 0.3, 0.8, 0.2, 0.7], [0.5] * 6, 200)
    lo, hi = two_way_bootstrap_ci(a, b, n_boot=2000, seed=0)
    d = a - b
    rng = np.random.default_rng(0)
    idx = rng.integers(0, d.shape[1], size=(2000, d.shape[1]))
    prompts_only = d[:, idx].mean(axis=(0, 2))  # all seeds, resampled prompts
    plo, phi = np.quantile(prompts_only, [0.025, 0.975])
    assert hi - lo > 3 * (phi - plo)
    # and the interval's width is that of the seed spread: sd of the seed means / sqrt(6)
    seed_se = d.mean(axis=1).std(ddof=1) / math.sqrt(6)
    assert 2.5 * seed_se < hi - lo < 5 * seed_se


def test_holm_hand_computed() -> None:
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1: 0.02, 0.03, 0.06, 0.04; running max
    # 0.02, 0.03, 0.06, 0.06; back in the input order:
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # capped at 1, monotone: 0.4 x 2 = 0.8 > 0.6 x 1
    assert holm([0.4, 0.6, 0.1]) == pytest.approx([0.8, 0.8, 0.3])
    assert holm([0.6, 0.7]) == [1.0, 1.0] and holm([0.2]) == [0.2] and holm([]) == []
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm([0.5, 1.5])


def test_holm_by_hand_with_a_step_down_tie() -> None:
    """Sorted: 0.005*7, 0.01*6, 0.03*5, 0.04*4, 0.049*3 (0.147, raised to 0.16 by the running
    maximum), 0.2*2, 0.5*1; back in the given order (statsmodels' multipletests gives the same)."""
    p = [0.01, 0.04, 0.03, 0.005, 0.2, 0.5, 0.049]
    assert holm(p) == pytest.approx([0.06, 0.16, 0.15, 0.035, 0.4, 0.5, 0.16])


def test_min_detectable_difference() -> None:
    from scipy import stats

    # large n: the normal approximation (z_{0.975} + z_{0.8}) sd / sqrt(n)
    z = stats.norm.ppf(0.975) + stats.norm.ppf(0.8)
    assert min_detectable_difference(0.02, 2000) == pytest.approx(z * 0.02 / math.sqrt(2000), 2e-3)
    mdds = [min_detectable_difference(0.02, n) for n in (2, 3, 6, 10, 30)]
    assert all(x > y for x, y in zip(mdds, mdds[1:], strict=False))
    assert mdds[2] > z * 0.02 / math.sqrt(6)  # few seeds: the t's heavier tails cost power
    # simulated: t-tests of 6 seeds at that mean difference reject 80% of the time
    rng = np.random.default_rng(0)
    d = rng.normal(mdds[2], 0.02, size=(20000, 6))
    t = d.mean(axis=1) / (d.std(axis=1, ddof=1) / math.sqrt(6))
    assert np.mean(np.abs(t) > stats.t.ppf(0.975, 5)) == pytest.approx(0.8, abs=0.015)
    assert min_detectable_difference(0.0, 6) == 0.0
    assert min_detectable_difference(0.02, 6, power=0.9) > mdds[2]


def test_compare_seeds_and_family() -> None:
    a, b = _scores([0.8, 0.75, 0.85, 0.8, 0.7, 0.9], [0.6] * 6, 200)
    c = compare_seeds(dict(enumerate(a.tolist())), dict(enumerate(b.tolist())), "CE + Align", "CE")
    diffs = paired_differences(a, b)
    assert c.n_seeds == 6 and c.diffs == pytest.approx(diffs.tolist())
    assert c.mean_diff == pytest.approx(diffs.mean())
    assert (c.ci_low, c.ci_high) == two_way_bootstrap_ci(a, b, n_boot=2000, seed=0)
    assert c.p_sign_flip == sign_flip_test(diffs) and c.p_t == paired_t_test(diffs).p
    assert c.p_holm is None
    assert c.mdd == pytest.approx(min_detectable_difference(diffs.std(ddof=1), 6))
    assert c.per_seed_mcnemar == [
        mcnemar(x, y).p for x, y in zip(a.tolist(), b.tolist(), strict=True)
    ]
    assert SeedComparison.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    assert c.ci_low > 0 and c.verdict().startswith("CE + Align \u2212 CE = +0.")
    assert c.verdict().endswith(": CE + Align is higher")  # sign-flip p = 0.031 < 0.05

    null = compare_seeds(*_scores([0.7] * 3, [0.7] * 3, 200, seed=3), "CE + Rand", "CE", n_boot=500)
    assert null.ci_low <= 0 <= null.ci_high
    assert "no difference detectable at this power (smallest detectable \u2248" in null.verdict()
    assert f"3 seeds, sign-flip p = {null.p_sign_flip:.2g})" in null.verdict()

    fam = compare_family([c, null])
    assert [f.p_holm for f in fam] == pytest.approx(holm([c.p_sign_flip, null.p_sign_flip]))
    assert fam[0].p_sign_flip == c.p_sign_flip and c.p_holm is None  # the inputs stay as they were
    # 0.031 x 2 > 0.05: still higher by the interval, but not by the adjusted p
    assert fam[0].verdict().endswith("CE + Align is higher, though the Holm p is not below 0.05")
    with pytest.raises(ValueError, match="at least 2 seeds"):
        compare_seeds({0: [1, 0]}, {0: [0, 0]}, "A", "B")


def test_verdict_wording() -> None:
    base = dict(a="A", b="B", n_seeds=6, diffs=[0.0] * 6, p_t=0.5, p_holm=None, mdd=0.03,
                per_seed_mcnemar=[1.0] * 6)  # fmt: skip
    lower = SeedComparison(mean_diff=-0.05, ci_low=-0.08, ci_high=-0.02, p_sign_flip=0.03125,
                           **base)  # fmt: skip
    assert lower.verdict() == (
        "A \u2212 B = \u22120.050 (95% CI \u22120.080 to \u22120.020, 6 seeds, sign-flip p = 0.031)"
        ": B is higher"
    )
    same = SeedComparison(mean_diff=0.012, ci_low=-0.01, ci_high=0.034, p_sign_flip=0.41, **base)
    assert same.verdict() == (
        "A \u2212 B = +0.012 (95% CI \u22120.010 to +0.034, 6 seeds, sign-flip p = 0.41): no "
        "difference detectable at this power (smallest detectable \u2248 0.03)"
    )
