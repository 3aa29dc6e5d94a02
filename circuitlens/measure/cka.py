"""Centered kernel alignment (CKA): how alike two sets of activations are, in pure torch.

Kornblith et al. 2019 ("Similarity of Neural Network Representations Revisited"); minibatch
CKA from Nguyen, Raghu, Kornblith 2021. ``X`` is ``[m, p1]`` and ``Y`` is ``[m, p2]``: one
head's activations on the same ``m`` examples in two models (``p1 != p2`` is fine).

- Linear CKA, feature form with column-centred X, Y: ``||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)``.
  It equals the Gram form ``HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))`` with ``K = X X^T``,
  ``L = Y Y^T`` and ``HSIC(K, L) = tr(K H L H) / (m - 1)^2``.
- RBF CKA: ``K_ij = exp(-d_ij^2 / (2 sigma^2))`` with ``sigma = tau * median pairwise distance``.
- Unbiased HSIC (Song et al. 2012), ``m >= 4``, with zero-diagonal ``K~, L~``:
  ``[tr(K~ L~) + 1^T K~ 1 1^T L~ 1 / ((m-1)(m-2)) - 2/(m-2) 1^T K~ L~ 1] / (m (m-3))``.
- Minibatch CKA averages each HSIC term over minibatches before normalising.

Everything is differentiable and batched over a leading ``pair`` axis (many head pairs at
once). Sums accumulate in float64 by default. A constant activation (zero variance) has no
defined CKA; we return 0 there (no similarity can be measured) and warn, never NaN.

Which estimator: biased CKA of *unrelated* features is far from 0 on few rows (64-dim
Gaussians over 32 rows: ~0.67), so a reported biased CKA says little by itself. :func:`cka`
defaults to the debiased estimator (unbiased HSIC in numerator and denominator; ~0 for
unrelated features, and it can be slightly negative), and :func:`cka_with_null` gives every
value its permutation null: the same pair with the rows (examples) of one side permuted.

Errors are named: :class:`TooFewExamplesError` when a batch is too small for the estimator
(biased: m >= 3, since two centred rows always give 1.0; unbiased: m >= 4), and
:class:`NonFiniteActivationError` for NaN or infinite input; both are :class:`CKAError`, a
``ValueError``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
from jaxtyping import Float, Int
from torch import Tensor

EPS = 1e-12
#: the fewest rows each estimator accepts: biased CKA of 2 centred rows is always 1.0
MIN_ROWS = {"biased": 3, "unbiased": 4}
Estimator = Literal["unbiased", "biased"]
Kernel = Literal["linear", "rbf"]
ESTIMATORS: tuple[str, ...] = get_args(Estimator)
KERNELS: tuple[str, ...] = get_args(Kernel)


class CKAError(ValueError):
    """CKA cannot be computed on this input (a ``ValueError``)."""


class TooFewExamplesError(CKAError):
    """The batch has too few rows (examples) for the estimator to mean anything."""


class NonFiniteActivationError(CKAError):
    """An activation holds NaN or infinity."""


def _check(x: Tensor, y: Tensor, estimator: str = "biased") -> None:
    if x.shape[:-1] != y.shape[:-1]:
        raise CKAError(
            f"CKA compares activations on the same examples: X has shape {tuple(x.shape)}, "
            f"Y has shape {tuple(y.shape)}; all but the last (feature) axis must agree"
        )
    need = MIN_ROWS[estimator]
    if x.ndim < 2 or x.shape[-2] < need:
        m = x.shape[-2] if x.ndim >= 2 else 0
        raise TooFewExamplesError(
            f"{estimator} CKA needs at least {need} examples (rows) per batch, got m = {m}; "
            "use a larger batch (with 2 rows biased CKA is 1.0 whatever the data)"
        )
    for name, t in (("X", x), ("Y", y)):
        if not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise NonFiniteActivationError(
                f"CKA input {name} holds {bad} NaN/infinite entries of {t.numel()}; the "
                "activations upstream diverged (lower the learning rate) or were masked badly"
            )


def _finish(num: Tensor, den_x: Tensor, den_y: Tensor, dtype: torch.dtype) -> Tensor:
    den = (den_x.clamp(min=0) * den_y.clamp(min=0)).sqrt()
    degenerate = den <= EPS
    if bool(degenerate.any()):
        warnings.warn(
            "CKA of a constant activation (zero variance) is undefined; returning 0 for "
            f"{int(degenerate.sum())} of {degenerate.numel()} pairs",
            RuntimeWarning,
            stacklevel=3,
        )
    out = torch.where(degenerate, torch.zeros_like(num), num / den.clamp(min=EPS))
    return out.to(dtype)


def linear_cka(
    x: Float[Tensor, "... m p1"], y: Float[Tensor, "... m p2"], dtype: torch.dtype = torch.float64
) -> Float[Tensor, "..."]:
    """Biased linear CKA in feature form; leading axes (e.g. ``pair``) are batched.

    Returns:
        CKA in [0, 1], one value per leading index, in the input's dtype.
    """
    _check(x, y, "biased")
    out_dtype = x.dtype
    x, y = x.to(dtype), y.to(dtype)
    x = x - x.mean(-2, keepdim=True)
    y = y - y.mean(-2, keepdim=True)
    yx = (y.transpose(-1, -2) @ x).square().sum((-1, -2))
    xx = (x.transpose(-1, -2) @ x).square().sum((-1, -2))
    yy = (y.transpose(-1, -2) @ y).square().sum((-1, -2))
    return _finish(yx, xx, yy, out_dtype)


def _center_gram(k: Tensor) -> Tensor:
    return k - k.mean(-1, keepdim=True) - k.mean(-2, keepdim=True) + k.mean((-1, -2), keepdim=True)


def hsic(k: Float[Tensor, "... m m"], l: Float[Tensor, "... m m"]) -> Float[Tensor, "..."]:
    """Biased HSIC: ``tr(K H L H) / (m - 1)^2``."""
    m = k.shape[-1]
    return (_center_gram(k) * l).sum((-1, -2)) / (m - 1) ** 2


def unbiased_hsic(k: Float[Tensor, "... m m"], l: Float[Tensor, "... m m"]) -> Float[Tensor, "..."]:
    """Unbiased HSIC (Song et al. 2012); needs ``m >= 4``."""
    m = k.shape[-1]
    if m < 4:
        raise TooFewExamplesError(
            f"unbiased HSIC needs at least 4 examples per batch (got m = {m}); use a larger batch"
        )
    eye = torch.eye(m, dtype=torch.bool, device=k.device)
    k = k.masked_fill(eye, 0)
    l = l.masked_fill(eye, 0)
    trace = (k * l).sum((-1, -2))
    sums = k.sum((-1, -2)) * l.sum((-1, -2)) / ((m - 1) * (m - 2))
    cross = (k.sum(-1) * l.sum(-1)).sum(-1) * 2 / (m - 2)  # 1^T K L 1 = (K 1) . (L 1)
    return (trace + sums - cross) / (m * (m - 3))


def linear_gram(x: Float[Tensor, "... m p"]) -> Float[Tensor, "... m m"]:
    return x @ x.transpose(-1, -2)


def rbf_gram(x: Float[Tensor, "... m p"], tau: float = 0.5) -> Float[Tensor, "... m m"]:
    """RBF kernel with ``sigma = tau * median`` of the pairwise distances (off the diagonal)."""
    sq = (x[..., :, None, :] - x[..., None, :, :]).square().sum(-1)
    m = x.shape[-2]
    off = ~torch.eye(m, dtype=torch.bool, device=x.device)
    med = sq[..., off].clamp(min=EPS).sqrt().median(-1).values
    sigma = (tau * med).clamp(min=EPS)[..., None, None]
    return torch.exp(-sq / (2 * sigma**2))


def gram_cka(
    k: Float[Tensor, "... m m"], l: Float[Tensor, "... m m"], unbiased: bool = False
) -> Float[Tensor, "..."]:
    """CKA from two Gram matrices: ``HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))``."""
    f = unbiased_hsic if unbiased else hsic
    return _finish(f(k, l), f(k, k), f(l, l), k.dtype)


def rbf_cka(
    x: Float[Tensor, "... m p1"],
    y: Float[Tensor, "... m p2"],
    tau: float = 0.5,
    unbiased: bool = False,
    dtype: torch.dtype = torch.float64,
) -> Float[Tensor, "..."]:
    """CKA with RBF kernels (``sigma = tau * median distance``)."""
    _check(x, y, "unbiased" if unbiased else "biased")
    out = gram_cka(rbf_gram(x.to(dtype), tau), rbf_gram(y.to(dtype), tau), unbiased)
    return out.to(x.dtype)


def minibatch_cka(
    xs: Float[Tensor, "n_batches ... m p1"],
    ys: Float[Tensor, "n_batches ... m p2"],
    kernel: str = "linear",
    unbiased: bool = True,
    dtype: torch.dtype = torch.float64,
) -> Float[Tensor, "..."]:
    """Minibatch CKA (Nguyen et al. 2021): HSIC terms averaged over minibatches, then normalised.

    ``xs`` and ``ys`` hold ``n_batches`` minibatches of ``m`` examples each on their first axis.
    """
    _check(xs, ys, "unbiased" if unbiased else "biased")
    gram = {"linear": linear_gram, "rbf": rbf_gram}.get(kernel)
    if gram is None:
        raise ValueError(f"unknown kernel {kernel!r}; valid kernels: linear, rbf")
    k, l = gram(xs.to(dtype)), gram(ys.to(dtype))
    f = unbiased_hsic if unbiased else hsic
    return _finish(f(k, l).mean(0), f(k, k).mean(0), f(l, l).mean(0), xs.dtype)


def _unbiased_hsic_features(x: Tensor, y: Tensor) -> Tensor:
    """Unbiased HSIC of the linear kernels ``X X^T``, ``Y Y^T`` from features: the Gram
    formula with ``K~ = X X^T - diag``, rewritten so no ``m x m`` matrix is formed
    (``tr(K~ L~) = ||Y^T X||^2 - sum_i k_ii l_ii``, ``K~ 1 = X (X^T 1) - diag(K)``)."""
    m = x.shape[-2]
    kd = x.square().sum(-1)  # [.., m] diag(K)
    ld = y.square().sum(-1)
    trace = (y.transpose(-1, -2) @ x).square().sum((-1, -2)) - (kd * ld).sum(-1)
    k1 = (x @ x.sum(-2, keepdim=True).transpose(-1, -2))[..., 0] - kd  # [.., m] K~ 1
    l1 = (y @ y.sum(-2, keepdim=True).transpose(-1, -2))[..., 0] - ld
    sums = k1.sum(-1) * l1.sum(-1) / ((m - 1) * (m - 2))
    cross = (k1 * l1).sum(-1) * 2 / (m - 2)
    return (trace + sums - cross) / (m * (m - 3))


def cka(
    x: Float[Tensor, "... m p1"],
    y: Float[Tensor, "... m p2"],
    kernel: str = "linear",
    estimator: str = "unbiased",
    tau: float = 0.5,
    dtype: torch.dtype = torch.float64,
) -> Float[Tensor, "..."]:
    """CKA of ``X`` and ``Y`` (rows: the same examples); leading axes are batched.

    Args:
        kernel: ``"linear"`` or ``"rbf"`` (sigma = ``tau`` x median distance).
        estimator: ``"unbiased"`` (debiased CKA: unbiased HSIC everywhere, m >= 4; ~0 for
            unrelated features, may be slightly negative) or ``"biased"`` (m >= 3).

    Returns:
        One CKA per leading index, in the input's dtype.

    Raises:
        TooFewExamplesError: fewer rows than the estimator needs.
        NonFiniteActivationError: NaN or infinite input.

    >>> g = torch.Generator().manual_seed(0)
    >>> x, y = torch.randn(32, 64, generator=g), torch.randn(32, 64, generator=g)
    >>> round(float(cka(x, y, estimator="biased")), 1), abs(float(cka(x, y))) < 0.1
    (0.7, True)
    """
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; valid kernels: {', '.join(KERNELS)}")
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; valid: {', '.join(ESTIMATORS)}")
    if kernel == "rbf":
        return rbf_cka(x, y, tau=tau, unbiased=estimator == "unbiased", dtype=dtype)
    if estimator == "biased":
        return linear_cka(x, y, dtype=dtype)
    _check(x, y, "unbiased")
    out_dtype = x.dtype
    # unbiased HSIC is unchanged by centring; centring first keeps a constant column exactly 0
    x, y = x.to(dtype), y.to(dtype)
    x = x - x.mean(-2, keepdim=True)
    y = y - y.mean(-2, keepdim=True)
    f = _unbiased_hsic_features
    return _finish(f(x, y), f(x, x), f(y, y), out_dtype)


@dataclass(frozen=True)
class CKAWithNull:
    """A CKA value with its permutation null (per leading index, e.g. per pair).

    Attributes:
        value: CKA of the aligned rows.
        null_mean, null_sd: mean and sd (ddof=1) of CKA with the rows of ``Y`` permuted.
        n_perm: permutations drawn.
        kernel, estimator: how CKA was computed.
    """

    value: Tensor
    null_mean: Tensor
    null_sd: Tensor
    n_perm: int
    kernel: str = "linear"
    estimator: str = "unbiased"

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": self.value.tolist(),
            "null_mean": self.null_mean.tolist(),
            "null_sd": self.null_sd.tolist(),
            "n_perm": self.n_perm,
            "kernel": self.kernel,
            "estimator": self.estimator,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CKAWithNull:
        """Read :meth:`to_dict`'s output (a null, as strict JSON writes NaN, reads as NaN).
        The values are held in float64, which keeps a float32 or float64 value exactly:
        ``to_dict`` gives back the numbers read."""

        def floats(x: list[Any]) -> Tensor:
            return torch.tensor(_nan_for_none(x), dtype=torch.float64)

        return cls(
            value=floats(d["value"]),
            null_mean=floats(d["null_mean"]),
            null_sd=floats(d["null_sd"]),
            n_perm=d["n_perm"],
            kernel=d.get("kernel", "linear"),
            estimator=d.get("estimator", "unbiased"),
        )


def _nan_for_none(x: Any) -> Any:
    """``x`` (nested lists) with each None (strict JSON's NaN) as NaN."""
    if isinstance(x, list):
        return [_nan_for_none(v) for v in x]
    return float("nan") if x is None else x


def permute_examples(
    y: Float[Tensor, "... n_examples rows p"], perm: Int[Tensor, " n_examples"]
) -> Float[Tensor, "... n_examples rows p"]:
    """``y`` with its examples (axis -3) reordered by ``perm``; each example keeps its rows."""
    return y.index_select(-3, perm.to(y.device))


def cka_with_null(
    x: Float[Tensor, "... n_examples rows p1"],
    y: Float[Tensor, "... n_examples rows p2"],
    n_perm: int = 20,
    seed: int = 0,
    kernel: str = "linear",
    estimator: str = "unbiased",
) -> CKAWithNull:
    """CKA of the pairs and its null: the same pairs with the examples of ``Y`` permuted.

    Activations come with an example axis and a rows-per-example axis (1 for one position per
    example; the tokens of an example when tokens are rows). A permutation moves whole
    examples, so the null keeps whatever structure rows share within an example (e.g. token
    positions) and removes only the example-to-example correspondence.

    Returns:
        :class:`CKAWithNull` with one value per leading index.
    """
    if n_perm < 2:
        raise ValueError(f"n_perm must be >= 2 for a null sd (got {n_perm}); the default is 20")
    n = x.shape[-3]
    flat = lambda t: t.flatten(-3, -2)  # noqa: E731
    with torch.no_grad():
        value = cka(flat(x), flat(y), kernel, estimator)
        g = torch.Generator().manual_seed(seed)
        null = torch.stack(
            [
                cka(
                    flat(x),
                    flat(permute_examples(y, torch.randperm(n, generator=g))),
                    kernel,
                    estimator,
                )
                for _ in range(n_perm)
            ]
        ).double()
    return CKAWithNull(
        value=value.double(),
        null_mean=null.mean(0),
        null_sd=null.std(0, unbiased=True),
        n_perm=n_perm,
        kernel=kernel,
        estimator=estimator,
    )
