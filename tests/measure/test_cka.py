from __future__ import annotations

import pytest
import torch

from circuitlens.measure.cka import gram_cka, linear_cka, linear_gram, minibatch_cka, rbf_cka


def _slow_linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Gram form, written out with explicit loops and float64 (the reference)."""
    x, y = x.double(), y.double()
    m = x.shape[0]
    k = [[float(x[i] @ x[j]) for j in range(m)] for i in range(m)]
    l = [[float(y[i] @ y[j]) for j in range(m)] for i in range(m)]
    h = [[(1.0 if i == j else 0.0) - 1.0 / m for j in range(m)] for i in range(m)]

    def mm(a, b):
        return [[sum(a[i][t] * b[t][j] for t in range(m)) for j in range(m)] for i in range(m)]

    def hsic(a, b):
        prod = mm(mm(mm(a, h), b), h)
        return sum(prod[i][i] for i in range(m)) / (m - 1) ** 2

    return hsic(k, l) / (hsic(k, k) * hsic(l, l)) ** 0.5


def _slow_unbiased_hsic(k: torch.Tensor, l: torch.Tensor) -> float:
    m = k.shape[0]
    kt, lt = k.clone().double(), l.clone().double()
    kt.fill_diagonal_(0)
    lt.fill_diagonal_(0)
    one = torch.ones(m, dtype=torch.float64)
    return float(
        (
            torch.trace(kt @ lt)
            + (one @ kt @ one) * (one @ lt @ one) / ((m - 1) * (m - 2))
            - 2 / (m - 2) * (one @ kt @ lt @ one)
        )
        / (m * (m - 3))
    )


@pytest.fixture
def xy() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 5, generator=g)
    y = x @ torch.randn(5, 7, generator=g) + 0.5 * torch.randn(12, 7, generator=g)
    return x, y


def test_identity_is_one(xy) -> None:
    x, _ = xy
    torch.testing.assert_close(linear_cka(x, x), torch.tensor(1.0))
    torch.testing.assert_close(rbf_cka(x, x), torch.tensor(1.0))


def test_matches_slow_gram_reference(xy) -> None:
    x, y = xy
    assert float(linear_cka(x, y)) == pytest.approx(_slow_linear_cka(x, y), abs=1e-6)
    torch.testing.assert_close(
        gram_cka(linear_gram(x.double()), linear_gram(y.double())),
        linear_cka(x, y).double(),
        atol=1e-6,
        rtol=1e-6,
    )


def test_invariant_to_rotation_and_isotropic_scaling(xy) -> None:
    x, y = xy
    q, _ = torch.linalg.qr(torch.randn(7, 7, generator=torch.Generator().manual_seed(1)))
    base = linear_cka(x, y)
    torch.testing.assert_close(linear_cka(x, y @ q), base, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(linear_cka(3.5 * x, y), base, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rbf_cka(x, 2.0 * (y @ q)), rbf_cka(x, y), atol=1e-5, rtol=1e-5)
    # and not invariant to a general (anisotropic) linear map
    assert abs(float(linear_cka(x, y * torch.arange(1.0, 8.0))) - float(base)) > 1e-3


def test_batched_pairs_equal_one_at_a_time() -> None:
    g = torch.Generator().manual_seed(2)
    xs, ys = torch.randn(4, 10, 3, generator=g), torch.randn(4, 10, 6, generator=g)
    batched = linear_cka(xs, ys)
    assert batched.shape == (4,)
    for i in range(4):
        torch.testing.assert_close(batched[i], linear_cka(xs[i], ys[i]))


def test_unbiased_and_minibatch() -> None:
    from circuitlens.measure.cka import unbiased_hsic

    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(9, 4, generator=g), torch.randn(9, 6, generator=g)
    k, l = linear_gram(x.double()), linear_gram(y.double())
    assert float(unbiased_hsic(k, l)) == pytest.approx(_slow_unbiased_hsic(k, l), abs=1e-9)
    xs, ys = torch.randn(3, 8, 4, generator=g), torch.randn(3, 8, 6, generator=g)
    kk = [linear_gram(a.double()) for a in xs]
    ll = [linear_gram(b.double()) for b in ys]
    num = sum(_slow_unbiased_hsic(a, b) for a, b in zip(kk, ll, strict=True)) / 3
    dx = sum(_slow_unbiased_hsic(a, a) for a in kk) / 3
    dy = sum(_slow_unbiased_hsic(b, b) for b in ll) / 3
    assert float(minibatch_cka(xs, ys)) == pytest.approx(num / (dx * dy) ** 0.5, abs=1e-6)
    with pytest.raises(ValueError, match="at least 4 examples"):
        minibatch_cka(xs[:, :3], ys[:, :3])


def test_constant_activation_gives_zero_not_nan(xy) -> None:
    x, _ = xy
    with pytest.warns(RuntimeWarning, match="constant activation"):
        out = linear_cka(x, torch.ones(12, 3))
    assert out.item() == 0.0
    with pytest.warns(RuntimeWarning):
        assert rbf_cka(torch.ones(12, 3), x).item() == 0.0


def test_shapes_must_agree(unchecked) -> None:
    from jaxtyping import TypeCheckError

    # the test session's jaxtyping hook reads the annotation ("... m p1", "... m p2") first
    with pytest.raises(TypeCheckError, match=r"(?s)parameter 'y'.*m=5"):
        linear_cka(torch.randn(5, 3), torch.randn(6, 3))
    with unchecked(), pytest.raises(ValueError, match="same examples"):
        linear_cka(torch.randn(5, 3), torch.randn(6, 3))


def test_gradcheck() -> None:
    g = torch.Generator().manual_seed(4)
    x = torch.randn(6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(linear_cka, (x, y))
    assert torch.autograd.gradcheck(lambda a, b: rbf_cka(a, b), (x, y))
    assert torch.autograd.gradcheck(lambda a, b: minibatch_cka(a[None], b[None]), (x, y))


# -- debiased CKA, named errors, the permutation null ----------------------------------------


def test_debiased_cka_of_independent_features_is_zero_and_biased_is_not() -> None:
    """Independent 64-dim Gaussian features over 32 rows: debiased CKA averages ~0, biased
    ~0.67 (docs/cka.md)."""
    from circuitlens.measure.cka import cka

    g = torch.Generator().manual_seed(5)
    x = torch.randn(200, 32, 64, generator=g, dtype=torch.float64)
    y = torch.randn(200, 32, 64, generator=g, dtype=torch.float64)
    unbiased, biased = cka(x, y), cka(x, y, estimator="biased")
    assert abs(float(unbiased.mean())) < 0.05
    assert float(biased.mean()) == pytest.approx(0.67, abs=0.05)
    assert float(unbiased.std()) < 0.1  # null sd ~1.5/n (docs/cka.md)


def test_feature_form_unbiased_equals_the_gram_form() -> None:
    from circuitlens.measure.cka import cka

    g = torch.Generator().manual_seed(6)
    x = torch.randn(3, 10, 4, generator=g, dtype=torch.float64) + 2.0  # uncentred on purpose
    y = x[..., :3] @ torch.randn(3, 5, generator=g, dtype=torch.float64)
    y = y + torch.randn(3, 10, 5, generator=g, dtype=torch.float64)
    want = gram_cka(linear_gram(x), linear_gram(y), unbiased=True)  # no centring: invariant
    torch.testing.assert_close(cka(x, y), want)
    torch.testing.assert_close(cka(x, x), torch.ones(3, dtype=torch.float64))
    hand = []
    for i in range(3):
        kx, ly = linear_gram(x[i]), linear_gram(y[i])
        num = _slow_unbiased_hsic(kx, ly)
        hand.append(num / (_slow_unbiased_hsic(kx, kx) * _slow_unbiased_hsic(ly, ly)) ** 0.5)
    torch.testing.assert_close(cka(x, y), torch.tensor(hand, dtype=torch.float64))


def test_too_few_rows_and_non_finite_input_are_named_errors() -> None:
    from circuitlens.measure.cka import (
        CKAError,
        NonFiniteActivationError,
        TooFewExamplesError,
        cka,
    )

    x, y = torch.randn(2, 5), torch.randn(2, 3)
    with pytest.raises(TooFewExamplesError, match="at least 3"):
        linear_cka(x, y)  # biased CKA of 2 rows would be 1.0 whatever the data
    with pytest.raises(TooFewExamplesError, match="at least 4"):
        cka(torch.randn(3, 5), torch.randn(3, 3))
    bad = torch.randn(8, 4)
    bad[2, 1] = float("nan")
    for estimator in ("unbiased", "biased"):
        with pytest.raises(NonFiniteActivationError, match="NaN"):
            cka(bad, torch.randn(8, 3), estimator=estimator)
    assert issubclass(TooFewExamplesError, CKAError) and issubclass(CKAError, ValueError)


def test_debiased_constant_activation_gives_zero_not_nan() -> None:
    from circuitlens.measure.cka import cka

    x = torch.randn(12, 4)
    with pytest.warns(RuntimeWarning, match="constant activation"):
        out = cka(torch.full((12, 3), 0.7), x)
    assert out.item() == 0.0


def test_null_permutes_whole_examples() -> None:
    from circuitlens.measure.cka import cka, cka_with_null, permute_examples

    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 64, 3, 6, generator=g)  # [pair, example, rows, p]
    y = torch.cat([x[..., :4], 0.3 * torch.randn(2, 64, 3, 2, generator=g)], -1)
    out = cka_with_null(x, y, n_perm=20, seed=0)
    torch.testing.assert_close(out.value, cka(x.flatten(1, 2), y.flatten(1, 2)).double())
    assert (out.value > 0.5).all() and (out.null_mean.abs() < 0.1).all()
    assert (out.null_sd > 0).all() and out.n_perm == 20
    perm = torch.tensor([1, 0, 2])
    z = torch.arange(3 * 2 * 1.0).view(3, 2, 1)
    torch.testing.assert_close(permute_examples(z, perm), z[[1, 0, 2]])  # rows stay together
    with pytest.raises(ValueError, match="n_perm"):
        cka_with_null(x, y, n_perm=1)


def test_gradcheck_debiased() -> None:
    from circuitlens.measure.cka import cka

    g = torch.Generator().manual_seed(8)
    x = torch.randn(7, 3, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(7, 4, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: cka(a, b), (x, y))
