"""The statistics of the comparison: per-prompt McNemar, and tests with the seed as the unit.

**McNemar's exact test.** Two conditions scored on the same test prompts give, per prompt, a
pair of outcomes. Only the discordant prompts carry information: ``b`` (A right, B wrong) and
``c`` (A wrong, B right). Under H0 (A and B equally accurate) each discordant prompt is A's with
probability 1/2, so ``b ~ Binomial(b + c, 1/2)``, and the exact two-sided p-value is

    p = min(1, 2 * sum_{i=0}^{min(b, c)} C(b + c, i) / 2^(b + c))

(1 when ``b = c``'s tail reaches past the middle, and 1 with no discordant prompt). Pooling seeds
by concatenating each seed's prompts (A's cell of seed s paired with B's cell of the same seed)
treats every (seed, prompt) pair as independent. That is only valid when the seeds' test prompts
differ: with the same prompts in every seed each prompt is counted once per seed, and the seed,
the unit that varies training, is ignored. Per seed, McNemar stays valid (one seed's prompts).

**The seed as the unit.** Scores are ``seed -> per-prompt 0/1 correctness`` (or a seeds x prompts
array) with the same prompts, in the same order, in every seed and both conditions; seeds are
paired by key (array rows by position) and reported in sorted order.

- :func:`paired_differences`: per seed, accuracy of A minus accuracy of B.
- :func:`sign_flip_test`: exact paired permutation test over seeds. Under H0 each seed's
  difference is as likely +d as -d; p is the fraction of the 2^n sign assignments whose |mean|
  reaches the observed |mean|. Its smallest p is 2 / 2^n (0.25 with 3 seeds, 0.0625 with 5,
  0.03125 with 6): below 6 seeds it can never reject at 0.05.
- :func:`paired_t_test`: t = mean / (sd / sqrt(n)) over the per-seed differences, n - 1 degrees
  of freedom; assumes roughly normal differences.
- :func:`two_way_bootstrap_ci`: percentile interval of the mean difference from a bootstrap that
  resamples seeds and prompts independently (crossed, not nested), so that both the training
  noise and the choice of test prompts widen it.
- :func:`holm`: Holm-Bonferroni step-down adjustment over a family of comparisons.
- :func:`min_detectable_difference`: the smallest mean difference the paired t-test over n seeds
  detects with the given power (noncentral t).
- :func:`compare_seeds` / :func:`compare_family`: all of the above as :class:`SeedComparison`
  records, the sign-flip p the primary p (Holm-adjusted across a family).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np
from scipy import optimize
from scipy import stats as sps

#: per-seed per-prompt scores: ``seed -> 0/1 per prompt``, or a seeds x prompts array
Scores = Mapping[int, Sequence[float] | np.ndarray] | np.ndarray

_TIE_RTOL = 1e-12  # relative tolerance for float ties
_MAX_EXACT_SEEDS = 20  # 2^20 sign assignments: the exact test's limit


def mcnemar_exact_p(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value from the discordant counts (see the module docstring)."""
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0 (got b={b}, c={c})")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


@dataclass(frozen=True)
class McNemar:
    """McNemar's exact test of A against B on paired per-prompt correctness.

    Attributes:
        n: paired prompts (pooled over seeds).
        b: prompts A gets right and B wrong.
        c: prompts A gets wrong and B right.
        p: exact two-sided p-value.
        acc_a, acc_b: the two accuracies over the same prompts.
    """

    n: int
    b: int
    c: int
    p: float
    acc_a: float
    acc_b: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def mcnemar(a: Sequence[int | bool | float], b: Sequence[int | bool | float]) -> McNemar:
    """McNemar's exact test on two paired 0/1 correctness vectors of the same prompts."""
    if len(a) != len(b):
        raise ValueError(
            f"McNemar pairs outcomes prompt by prompt: got {len(a)} and {len(b)} outcomes"
        )
    if not len(a):
        raise ValueError("McNemar needs at least one paired prompt")
    bad = [x for x in (*a, *b) if x not in (0, 1)]
    if bad:
        raise ValueError(f"correctness must be 0/1 per prompt (got e.g. {bad[0]!r})")
    n_b = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    n_c = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
    return McNemar(
        n=len(a),
        b=n_b,
        c=n_c,
        p=mcnemar_exact_p(n_b, n_c),
        acc_a=sum(map(bool, a)) / len(a),
        acc_b=sum(map(bool, b)) / len(b),
    )


def _table(x: Scores, name: str) -> tuple[list[int], np.ndarray]:
    """Seeds (sorted) and the seeds x prompts float table of one condition."""
    if isinstance(x, np.ndarray):
        if x.ndim != 2:
            raise ValueError(f"{name}: an array of scores must be 2-D, seeds x prompts "
                             f"(got shape {x.shape})")  # fmt: skip
        seeds, rows = list(range(x.shape[0])), list(x.astype(float))
    else:
        seeds = sorted(x)
        rows = [np.asarray(x[s], dtype=float) for s in seeds]
    if not rows or not rows[0].size:
        raise ValueError(f"{name}: needs at least one seed with at least one prompt")
    for s, r in zip(seeds, rows, strict=True):
        if r.shape != rows[0].shape:
            raise ValueError(
                f"{name}: seed {s} has {r.size} prompts but seed {seeds[0]} has {rows[0].size}; "
                "the seed-as-unit statistics need the same test prompts in every seed (if each "
                "seed has its own test prompts, the pooled mcnemar is the valid test)"
            )
    table = np.stack(rows)
    if not np.isfinite(table).all():
        raise ValueError(f"{name}: scores must be finite")
    return seeds, table


def _paired_tables(a: Scores, b: Scores) -> tuple[list[int], np.ndarray, np.ndarray]:
    seeds_a, ta = _table(a, "A")
    seeds_b, tb = _table(b, "B")
    if seeds_a != seeds_b:
        raise ValueError(
            f"A and B must be scored on the same seeds: A has {seeds_a}, B has {seeds_b} (only in "
            f"A: {sorted(set(seeds_a) - set(seeds_b))}, only in B: "
            f"{sorted(set(seeds_b) - set(seeds_a))}); restrict both to the seeds they share"
        )
    if ta.shape != tb.shape:
        raise ValueError(
            f"A has {ta.shape[1]} test prompts per seed and B has {tb.shape[1]}; score both "
            "conditions on the same test prompts"
        )
    return seeds_a, ta, tb


def paired_differences(a: Scores, b: Scores) -> np.ndarray:
    """Per-seed paired differences of accuracy, A - B, in sorted seed order.

    Args:
        a, b: per-seed per-prompt scores of the two conditions (``seed -> 0/1 per prompt``, or a
            seeds x prompts array), the same seeds and the same prompts.

    Returns:
        1-D float array: for each seed, mean(a[seed]) - mean(b[seed]).

    Raises:
        ValueError: if the seeds or the prompt counts do not match.
    """
    _, ta, tb = _paired_tables(a, b)
    return ta.mean(axis=1) - tb.mean(axis=1)


def _diffs(diffs: Sequence[float] | np.ndarray, least: int) -> np.ndarray:
    d = np.asarray(diffs, dtype=float)
    if d.ndim != 1 or d.size < least or not np.isfinite(d).all():
        raise ValueError(f"need a 1-D sequence of at least {least} finite per-seed differences "
                         f"(got shape {d.shape})")  # fmt: skip
    return d


def sign_flip_test(diffs: Sequence[float] | np.ndarray) -> float:
    """Exact two-sided sign-flip (paired permutation) test of mean difference 0 over seeds.

    Enumerates all 2^n sign assignments of the n differences; p is the fraction whose |mean| is
    at least the observed |mean| (float ties within 1e-12 of sum |d| count as reaching it).

    Args:
        diffs: per-seed differences (at most 20 seeds).

    Returns:
        The exact p-value, never below 2 / 2^n (the observed signs and their mirror).

    >>> sign_flip_test([0.1, 0.2, 0.3])  # only +++ and --- reach |mean| = 0.2
    0.25
    """
    d = _diffs(diffs, 1)
    n = d.size
    if n > _MAX_EXACT_SEEDS:
        raise ValueError(f"the exact sign-flip test enumerates 2^n assignments: {n} seeds is "
                         f"more than {_MAX_EXACT_SEEDS}; use paired_t_test")  # fmt: skip
    signs = 1 - 2 * ((np.arange(2**n)[:, None] >> np.arange(n)) & 1)
    sums = np.abs(signs @ d)
    tol = _TIE_RTOL * np.abs(d).sum()
    return float(np.mean(sums >= abs(d.sum()) - tol))


class TTest(NamedTuple):
    """A paired t-test: statistic, degrees of freedom, two-sided p-value."""

    t: float
    df: int
    p: float


def paired_t_test(diffs: Sequence[float] | np.ndarray) -> TTest:
    """Paired t-test over seeds: t = mean / (sd / sqrt(n)), df = n - 1, two-sided p.

    Zero variance (all differences equal, within 1e-12 of the largest): t = mean / 0. When every
    difference is 0 we return t = 0, p = 1: the data sit exactly on H0, no evidence of a
    difference (scipy returns nan, which would poison a table). Equal non-zero differences give
    t = +-inf, p = 0, the limit as the spread goes to 0 (as scipy does); the t-test cannot
    estimate the spread from such a sample, one reason the sign-flip p is the primary p.

    Args:
        diffs: per-seed differences, at least 2.
    """
    d = _diffs(diffs, 2)
    n, mean, sd = d.size, float(d.mean()), float(d.std(ddof=1))
    if sd <= _TIE_RTOL * np.abs(d).max():
        if np.abs(d).max() == 0.0:
            return TTest(0.0, n - 1, 1.0)
        return TTest(math.copysign(math.inf, mean), n - 1, 0.0)
    t = mean / (sd / math.sqrt(n))
    return TTest(t, n - 1, float(2 * sps.t.sf(abs(t), n - 1)))


def two_way_bootstrap_ci(
    a: Scores, b: Scores, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile interval of the mean difference A - B from a two-way (seeds x prompts) bootstrap.

    Each replicate draws a multiset of seeds and, independently, one of prompts (with
    replacement, as many as there are) and takes the mean of D = a - b over the crossed
    sub-table: sum_{s,p} cs[s] cp[p] D[s, p] / (S P), with cs and cp the draw counts.

    Args:
        a, b: per-seed per-prompt scores (as for :func:`paired_differences`).
        n_boot: bootstrap replicates.
        level: coverage of the interval.
        seed: seed of the numpy Generator; the same seed gives the same interval.

    Returns:
        (low, high).
    """
    if n_boot < 1 or not 0 < level < 1:
        raise ValueError(f"need n_boot >= 1 and 0 < level < 1 (got {n_boot}, {level})")
    _, ta, tb = _paired_tables(a, b)
    d = ta - tb
    n_s, n_p = d.shape
    rng = np.random.default_rng(seed)
    out = np.empty(n_boot)
    chunk = max(1, 2**22 // (n_s + n_p))  # bounds the count matrices' memory
    for start in range(0, n_boot, chunk):
        k = min(chunk, n_boot - start)
        cs = _counts(rng.integers(0, n_s, size=(k, n_s)), n_s)
        cp = _counts(rng.integers(0, n_p, size=(k, n_p)), n_p)
        out[start : start + k] = ((cs @ d) * cp).sum(axis=1) / (n_s * n_p)
    low, high = np.quantile(out, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def _counts(idx: np.ndarray, m: int) -> np.ndarray:
    """Per row of draws, how often each of 0..m-1 was drawn (float, for the matrix products)."""
    k = idx.shape[0]
    flat = (idx + m * np.arange(k)[:, None]).ravel()
    return np.bincount(flat, minlength=k * m).reshape(k, m).astype(float)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order.

    Sorted ascending, the i-th smallest (from 0) of m is multiplied by m - i; a running maximum
    keeps the adjusted values monotone (step-down), and they are capped at 1.

    >>> holm([0.01, 0.04, 0.03, 0.005])
    [0.03, 0.06, 0.06, 0.02]
    """
    p = np.asarray(pvalues, dtype=float)
    if p.size and (not np.isfinite(p).all() or p.min() < 0 or p.max() > 1):
        raise ValueError(f"p-values must lie in [0, 1] (got {list(pvalues)})")
    m = p.size
    order = np.argsort(p, kind="stable")
    adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adj
    return [float(x) for x in out]


def min_detectable_difference(
    diffs_sd: float, n_seeds: int, alpha: float = 0.05, power: float = 0.8
) -> float:
    """Smallest mean difference the two-sided paired t-test over n seeds detects with ``power``.

    Solves P(|T| > t_{1-alpha/2, n-1}) = power for T ~ noncentral t(n - 1, delta sqrt(n) / sd)
    (brentq on the noncentrality); the normal approximation is (z_{1-alpha/2} + z_power) sd /
    sqrt(n). With sd = 0 every non-zero difference is detected: returns 0.

    Args:
        diffs_sd: standard deviation of the per-seed differences (sample sd, ddof = 1).
        n_seeds: seeds, at least 2.
        alpha: two-sided level of the test.
        power: the wanted power, above alpha.
    """
    if n_seeds < 2 or diffs_sd < 0 or not 0 < alpha < power < 1:
        raise ValueError(f"need n_seeds >= 2, diffs_sd >= 0 and 0 < alpha < power < 1 (got "
                         f"{n_seeds}, {diffs_sd}, {alpha}, {power})")  # fmt: skip
    if diffs_sd == 0:
        return 0.0
    df = n_seeds - 1
    crit = sps.t.ppf(1 - alpha / 2, df)

    def shortfall(nc: float) -> float:  # scipy's lower tail is nan where it underflows: 0
        lower = float(np.nan_to_num(sps.nct.cdf(-crit, df, nc), nan=0.0))
        return float(sps.nct.sf(crit, df, nc)) + lower - power

    hi = 1.0
    while shortfall(hi) < 0:
        hi *= 2
    nc = optimize.brentq(shortfall, 0.0, hi, xtol=1e-12)
    return float(nc * diffs_sd / math.sqrt(n_seeds))


@dataclass(frozen=True)
class SeedComparison:
    """A against B with the seed as the unit (see the module docstring).

    Attributes:
        a, b: the two conditions' names.
        n_seeds: seeds both conditions have.
        diffs: per-seed accuracy differences A - B, in sorted seed order.
        mean_diff: their mean (the mean difference over the whole seeds x prompts table).
        ci_low, ci_high: 95% two-way bootstrap interval of the mean difference.
        p_sign_flip: exact sign-flip p over seeds (the primary p).
        p_t: paired t-test p over seeds.
        p_holm: the sign-flip p Holm-adjusted across a family (None until
            :func:`compare_family` fills it).
        mdd: smallest mean difference the paired t-test detects at 80% power, alpha = 0.05.
        per_seed_mcnemar: McNemar's exact p within each seed, in sorted seed order.
    """

    a: str
    b: str
    n_seeds: int
    diffs: list[float]
    mean_diff: float
    ci_low: float
    ci_high: float
    p_sign_flip: float
    p_t: float
    p_holm: float | None
    mdd: float
    per_seed_mcnemar: list[float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SeedComparison:
        lists = {k: [float(x) for x in d[k]] for k in ("diffs", "per_seed_mcnemar")}
        return cls(**{**d, **lists})

    def verdict(self) -> str:
        """One sentence: the difference, its interval and p, and what can be concluded."""

        def signed(x: float) -> str:
            return f"{x:+.3f}".replace("-", "\u2212")

        holm_p = "" if self.p_holm is None else f", Holm p = {self.p_holm:.2g}"
        head = (
            f"{self.a} \u2212 {self.b} = {signed(self.mean_diff)} (95% CI {signed(self.ci_low)} "
            f"to {signed(self.ci_high)}, {self.n_seeds} seeds, sign-flip p = "
            f"{self.p_sign_flip:.2g}{holm_p})"
        )
        if self.ci_low <= 0 <= self.ci_high:
            return (f"{head}: no difference detectable at this power (smallest detectable "
                    f"\u2248 {self.mdd:.2g})")  # fmt: skip
        higher = self.a if self.ci_low > 0 else self.b
        p, which = (self.p_sign_flip, "sign-flip") if self.p_holm is None else (self.p_holm, "Holm")
        caveat = "" if p < 0.05 else f", though the {which} p is not below 0.05"
        return f"{head}: {higher} is higher{caveat}"


def compare_seeds(
    a: Scores, b: Scores, name_a: str, name_b: str, n_boot: int = 2000, seed: int = 0
) -> SeedComparison:
    """Every seed-as-unit statistic of A against B (see :class:`SeedComparison`).

    Args:
        a, b: per-seed per-prompt 0/1 correctness of the two conditions (at least 2 seeds).
        name_a, name_b: their names.
        n_boot: bootstrap replicates of the interval.
        seed: seed of the bootstrap.
    """
    seeds, ta, tb = _paired_tables(a, b)
    if len(seeds) < 2:
        raise ValueError(f"comparing over seeds needs at least 2 seeds (got {seeds})")
    diffs = ta.mean(axis=1) - tb.mean(axis=1)
    low, high = two_way_bootstrap_ci(ta, tb, n_boot=n_boot, level=0.95, seed=seed)
    return SeedComparison(
        a=name_a,
        b=name_b,
        n_seeds=len(seeds),
        diffs=[float(x) for x in diffs],
        mean_diff=float(diffs.mean()),
        ci_low=low,
        ci_high=high,
        p_sign_flip=sign_flip_test(diffs),
        p_t=paired_t_test(diffs).p,
        p_holm=None,
        mdd=min_detectable_difference(float(diffs.std(ddof=1)), len(seeds)),
        per_seed_mcnemar=[
            mcnemar(ra.tolist(), rb.tolist()).p for ra, rb in zip(ta, tb, strict=True)
        ],
    )


def compare_family(comparisons: Sequence[SeedComparison]) -> list[SeedComparison]:
    """The comparisons with ``p_holm`` filled: their sign-flip p's Holm-adjusted together."""
    adjusted = holm([c.p_sign_flip for c in comparisons])
    return [dataclasses.replace(c, p_holm=p) for c, p in zip(comparisons, adjusted, strict=True)]


__all__ = [
    "McNemar", "Scores", "SeedComparison", "TTest", "compare_family", "compare_seeds", "holm",
    "mcnemar", "mcnemar_exact_p", "min_detectable_difference", "paired_differences",
    "paired_t_test", "sign_flip_test", "two_way_bootstrap_ci",
]  # fmt: skip
