from __future__ import annotations

import math

import pytest

from circuitlens.experiments.stats import mcnemar, mcnemar_exact_p


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
