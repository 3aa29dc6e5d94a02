"""Functional correspondence that reads more than the last token: CKA of each head's ``z`` over
several positions, and the similarity of attention patterns.

The ``cka`` method (:mod:`circuitlens.mapping.methods`) compares heads by debiased linear CKA of
``z`` at the last position only: one row per prompt, and on the real SmolLM2 pairs it finds the
true partner of 8 of 26 chosen student heads at 64 prompts. What a head computes at the other
positions it reads or writes (the box label, the queried character...) is left out. These
methods read it (each a forward pass per model, :mod:`circuitlens.mapping.features`):

- ``"cka-positions"``: debiased linear CKA with one row per (prompt, named position): the task's
  ``position_names`` (entity tracking: last, query_label, prev_query_label; theory of mind:
  last, query_character, query_container, state_1, state_2), matched by name, so across
  tokenizers too. A head then has to match its partner *across* positions as well as across
  prompts. Its chosen pairs get the permutation null (whole prompts shuffled, positions kept).
  On one position (``last``) it is the ``cka`` cost.
- ``"cka-positions-mean"``: the mean over named positions of the per-position debiased CKA
  (over the positions where both heads vary: a head constant at a position is judged on the
  others).
- ``"cka-tokens"``: debiased CKA with one row per token of the prompts (every position, at most
  ``features.MAX_ROWS`` tokens drawn seeded, the same tokens on both sides); only for
  models that tokenize alike (refused by name otherwise).
- ``"pattern"``: ``1 - r``, Pearson correlation of the heads' attention patterns at the named
  query positions over all keys, on the same prompts; only for models that tokenize alike.

All pairs at once: after centring the columns, the unbiased HSIC of the linear kernels is
``[|Y^T X|_F^2 - (1 + 2/(m-2)) sum_i k_ii l_ii + (sum_i k_ii)(sum_i l_ii)/((m-1)(m-2))] /
(m (m-3))`` with ``k_ii = |x_i|^2`` (``K~ 1 = -diag(K)`` once the columns are centred), so one
``[S p, T q]`` matmul per chunk of student heads gives every pair (:func:`cka_all_pairs`).
"""

from __future__ import annotations

import torch
from einops import rearrange
from jaxtyping import Float
from torch import Tensor

from circuitlens.core.types import Head
from circuitlens.mapping.features import HeadPatterns, PositionZ, TokenZ
from circuitlens.mapping.methods import (
    CostInputs,
    correlation,
    generic_warnings,
    null_warnings,
    register_method,
)
from circuitlens.measure.cka import MIN_ROWS, TooFewExamplesError


def _hsic_parts(x: Tensor) -> tuple[Tensor, Tensor]:
    """``diag(K)`` ``[h, m]`` and ``|X^T X|_F^2`` ``[h]`` of centred ``x`` ``[h, m, p]``."""
    kd = x.square().sum(-1)
    xx = (x.transpose(-1, -2) @ x).square().sum((-1, -2))
    return kd, xx


def _unbiased(cross: Tensor, kd: Tensor, ld: Tensor, m: int) -> Tensor:
    """Unbiased HSIC from ``|Y^T X|^2`` ``[s, t]`` and the diagonals ``[s, m]``, ``[t, m]``."""
    dd = kd @ ld.T
    sums = kd.sum(-1)[:, None] * ld.sum(-1)[None, :] / ((m - 1) * (m - 2))
    return (cross - dd - 2 * dd / (m - 2) + sums) / (m * (m - 3))


#: a pair whose ``sqrt(HSIC(X, X) HSIC(Y, Y))`` is at most this has no defined CKA (as in
#: :func:`circuitlens.measure.cka.cka`)
DEGENERATE = 1e-12


def self_hsic(x: Float[Tensor, "h m p"], dtype: torch.dtype = torch.float64) -> Tensor:
    """Unbiased ``HSIC(X, X)`` of each head (``[h]``)."""
    x = x.to(dtype) - x.to(dtype).mean(1, keepdim=True)
    kd, xx = _hsic_parts(x)
    return _unbiased(xx.diag_embed(), kd, kd, x.shape[1]).diagonal()


def cka_all_pairs(
    x: Float[Tensor, "s m p"],
    y: Float[Tensor, "t m q"],
    chunk: int = 16,
    dtype: torch.dtype = torch.float64,
) -> Float[Tensor, "s t"]:
    """Debiased linear CKA of every ``x[i]`` with every ``y[j]`` (rows: the same examples),
    equal to :func:`circuitlens.measure.cka.cka` pair by pair; 0 where a side is constant.

    Raises:
        TooFewExamplesError: fewer than 4 rows.

    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.randn(2, 32, 8, generator=g)
    >>> v = cka_all_pairs(x, x)
    >>> round(float(v[0, 0]), 3), round(float(v[1, 1]), 3), abs(float(v[0, 1])) < 0.2
    (1.0, 1.0, True)
    """
    m = x.shape[1]
    if m < MIN_ROWS["unbiased"] or y.shape[1] != m:
        raise TooFewExamplesError(
            f"debiased CKA needs the same m >= 4 rows on both sides (got {m} and {y.shape[1]})"
        )
    x = x.to(dtype) - x.to(dtype).mean(1, keepdim=True)
    y = y.to(dtype) - y.to(dtype).mean(1, keepdim=True)
    kd, xx = _hsic_parts(x)
    ld, yy = _hsic_parts(y)
    h_x = _unbiased(xx.diag_embed(), kd, kd, m).diagonal()
    h_y = _unbiased(yy.diag_embed(), ld, ld, m).diagonal()
    t, q = y.shape[0], y.shape[2]
    flat_y = rearrange(y, "t m q -> m (t q)")
    cross = []
    for i in range(0, x.shape[0], chunk):
        c = rearrange(x[i : i + chunk], "s m p -> (s p) m") @ flat_y
        c = rearrange(c.square(), "(s p) (t q) -> s t (p q)", p=x.shape[2], t=t, q=q)
        cross.append(c.sum(-1))
    h_xy = _unbiased(torch.cat(cross), kd, ld, m)
    den = (h_x.clamp(min=0)[:, None] * h_y.clamp(min=0)[None, :]).sqrt()
    ok = den > DEGENERATE
    return torch.where(ok, h_xy / den.clamp(min=DEGENERATE), torch.zeros_like(h_xy)).float()


def _pick(z: Tensor, heads: list[Head]) -> Tensor:
    """``z[..., layer, head, d]`` -> ``[head, ..., d]`` for ``heads``."""
    return torch.stack([z[..., h.layer, h.head, :] for h in heads])


def _pair(inputs: CostInputs, need: str) -> tuple[object, object]:
    pair = inputs.features.more.get(need)
    if pair is None:
        raise ValueError(f"this method reads {need}: gather it (needs {need})")
    s, t = pair
    n_s = s.z.shape[0] if hasattr(s, "z") else s.pattern.shape[0]
    n_t = t.z.shape[0] if hasattr(t, "z") else t.pattern.shape[0]
    if n_s != n_t:
        raise ValueError(
            f"{need} of {n_s} and {n_t} rows: the heads must be read on the same prompts"
        )
    return s, t


def _positions(inputs: CostInputs) -> tuple[Tensor, Tensor]:
    s, t = _pair(inputs, "z_positions")
    assert isinstance(s, PositionZ) and isinstance(t, PositionZ)
    if s.positions != t.positions:
        raise ValueError(f"positions differ: {s.positions} vs {t.positions}")
    inputs.extras["positions"] = list(s.positions)
    return _pick(s.z, inputs.students), _pick(t.z, inputs.candidates)  # [h, n, P, d]


def cka_positions_cost(inputs: CostInputs) -> Float[Tensor, "student teacher"]:
    """``1 - CKA`` with one row per (prompt, named position)."""
    x, y = _positions(inputs)
    value = cka_all_pairs(x.flatten(1, 2), y.flatten(1, 2))
    inputs.extras["cka"] = value
    return 1 - value


def cka_positions_mean_cost(inputs: CostInputs) -> Float[Tensor, "student teacher"]:
    """``1 - mean over named positions of the per-position CKA``."""
    x, y = _positions(inputs)
    value = torch.stack([cka_all_pairs(x[:, :, p], y[:, :, p]) for p in range(x.shape[2])])
    # a head constant at a position (CKA undefined there, given 0) is judged on the others
    defined = torch.stack(
        [
            (self_hsic(x[:, :, p])[:, None] * self_hsic(y[:, :, p])[None, :]).sqrt() > DEGENERATE
            for p in range(x.shape[2])
        ]
    ).float()
    inputs.extras["cka_per_position"] = value
    return 1 - (value * defined).sum(0) / defined.sum(0).clamp(min=1)


def cka_tokens_cost(inputs: CostInputs) -> Float[Tensor, "student teacher"]:
    """``1 - CKA`` with one row per sampled token."""
    s, t = _pair(inputs, "z_tokens")
    assert isinstance(s, TokenZ) and isinstance(t, TokenZ)
    if not torch.equal(s.rows, t.rows):
        raise ValueError("z_tokens of the two models were read at different tokens")
    value = cka_all_pairs(_pick(s.z, inputs.students), _pick(t.z, inputs.candidates))
    inputs.extras["cka"] = value
    return 1 - value


def pattern_cost(inputs: CostInputs) -> Float[Tensor, "student teacher"]:
    """``1 - r`` of the attention patterns at the named query positions (keys flattened)."""
    s, t = _pair(inputs, "pattern")
    assert isinstance(s, HeadPatterns) and isinstance(t, HeadPatterns)
    if s.pattern.shape[-1] != t.pattern.shape[-1]:
        raise ValueError("patterns over different key lengths: the prompts tokenize differently")
    a = torch.stack([s.pattern[:, :, h.layer, h.head].flatten() for h in inputs.students])
    b = torch.stack([t.pattern[:, :, h.layer, h.head].flatten() for h in inputs.candidates])
    r, _, _ = correlation(a, b)
    inputs.extras["pattern_r"] = r
    return 1 - r


def positions_warnings(inputs: CostInputs, cost: Tensor, chosen: list[int]) -> list[str]:
    """The generic warnings, and each chosen pair's permutation null (whole prompts of the
    teacher side shuffled, positions kept; into ``extras["cka_null"]``): pairs whose CKA does
    not exceed the null's mean by 2 null sds."""
    x, y = _positions(inputs)
    return generic_warnings(inputs, cost, chosen) + null_warnings(
        inputs, x, y, chosen, " over positions"
    )


FORWARD = "one forward pass per model"
register_method(
    "cka-positions",
    cka_positions_cost,
    ("z_positions",),
    f"1 - debiased CKA of z, rows = (prompt, named position) ({FORWARD}; any tokenizers)",
    positions_warnings,
)
register_method(
    "cka-positions-mean",
    cka_positions_mean_cost,
    ("z_positions",),
    f"1 - mean over named positions of debiased CKA of z ({FORWARD}; any tokenizers)",
)
register_method(
    "cka-tokens",
    cka_tokens_cost,
    ("z_tokens",),
    f"1 - debiased CKA of z, rows = every token ({FORWARD}; one tokenizer)",
)
register_method(
    "pattern",
    pattern_cost,
    ("pattern",),
    f"1 - r of attention patterns at the named query positions ({FORWARD}; one tokenizer)",
)

__all__ = [
    "cka_all_pairs",
    "cka_positions_cost",
    "cka_positions_mean_cost",
    "cka_tokens_cost",
    "pattern_cost",
]
