"""A design that can reject, planned before it runs: seeds, the primary family, the verdict.

The comparison of two conditions takes the seed as the unit and tests the per-seed paired
differences d_1..d_n with the exact two-sided sign-flip test of
:func:`~circuitlens.experiments.stats.sign_flip_test`: under H0 each d_i is as likely -d_i;
the statistic is |sum_i d_i|, and p is the fraction of the 2^n sign assignments s whose
|sum_i s_i d_i| reaches it (ties within 1e-12 * sum |d_i| count as reaching). The observed
signs and their mirror always reach it, so p >= 2 / 2^n: with 6 seeds no p is below
2/64 = 0.031, and Holm's first step over m primary contrasts compares the smallest p with
alpha / m. A design of n seeds and m contrasts can therefore reject anything only if
2 / 2^n <= alpha / m (:func:`design_can_reject`, :func:`min_seeds_to_reject`); 6 seeds and 5
contrasts cannot (0.031 > 0.01), whatever the data.

**Power** (:func:`sign_flip_power`) is that of the test actually reported, at Holm's first
step (level alpha / m), when the differences are Normal(effect, sd), by simulation: each
simulated sample's p-value is computed exactly, all 2^n sign assignments counted by meeting in
the middle (the subset sums of each half of the seeds, sorted, one searchsorted per half-sum:
O(2^(n/2) log) per sample instead of 2^n). The p-value is unchanged by scaling the
differences, so power depends on effect / sd only, and the samples are effect / sd + Z with
Z ~ Normal(0, I) drawn from a Generator seeded by (``seed``, n) alone, in antithetic pairs
(Z, -Z). With these common random numbers the estimate is exactly non-decreasing in
|effect| / sd (for one Z the test rejects outside an interval of effects around -mean(Z), so
the pair's rejections can only grow with |effect|), which makes :func:`plan_seeds`
monotone: a larger effect or a smaller sd never asks for more seeds. The Monte-Carlo standard
error is sqrt(P (1 - P) / n_sim), at most 0.5 / sqrt(n_sim) (0.008 with the default 4,000
samples; the antithetic pairs only lower it). A zero sd is exact: every difference equals the
effect, p = 2 / 2^n, and the power is 1 or 0.

**Declared primary contrasts** (:class:`DesignConfig`, ``ExperimentConfig.design``): contrasts
written ``"A - B"`` with the conditions' names (``"ce+align - ce"``; the separator is a minus
between spaces, as names hold ``+`` and ``-``). Holm runs over this family only; every other
comparison is exploratory (unadjusted p, labelled). :func:`design_note` says before any work
when the design cannot reject; :func:`contrast_verdict` is the verdict line of a contrast.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from circuitlens.core.validate import ConfigError, check_fields, check_sequence

#: the default primary family: the method against CE (where both conditions are run)
DEFAULT_PRIMARY = ("ce+align - ce",)
#: how a contrast separates its two conditions' names
CONTRAST_SEP = " - "
#: the most seeds :func:`plan_seeds` considers (the exact test's limit in ``stats``)
MAX_SEEDS = 20
_TIE_RTOL = 1e-12  # as stats.sign_flip_test: float ties count as reaching the observed sum
_LEVEL_RTOL = 1e-9  # p <= alpha / m, with room for alpha / m's rounding (0.05 / 5)


# -- the contrasts ---------------------------------------------------------------------------
def parse_contrast(text: str) -> tuple[str, str]:
    """``"ce+align - ce"`` -> ``("ce+align", "ce")``: A minus B, conditions' names.

    Raises:
        ConfigError: not two distinct non-empty names around one ``" - "``.
    """
    if not isinstance(text, str):
        raise ConfigError(f"a contrast is a string 'A - B' (got {type(text).__name__} {text!r})")
    parts = text.split(CONTRAST_SEP)
    a, b = (parts[0].strip(), parts[1].strip()) if len(parts) == 2 else ("", "")
    if not a or not b or a == b:
        raise ConfigError(
            f"contrast {text!r}: write two different conditions' names around ' - ' (a minus "
            "between spaces), A minus B, e.g. 'ce+align - ce'"
        )
    return a, b


@dataclass(frozen=True)
class DesignConfig:
    """The design, declared before the run (``ExperimentConfig.design``).

    Attributes:
        primary: the primary contrasts, ``"A - B"`` with condition names, Holm-adjusted
            together; every other comparison is exploratory. None (the default): ``"ce+align -
            ce"`` when the run has both conditions, else none (see
            :meth:`ExperimentConfig.primary_contrasts`). An empty list: no primary contrast,
            an exploratory run.
        alpha: the familywise level of the primary family.
        effect: the effect of interest, in accuracy (0.05: the paper's +5 points); each verdict
            says whether the interval holds it, and the power is computed at it.
        power: the power :func:`plan_seeds` asks for.
    """

    primary: tuple[str, ...] | list[str] | None = None
    alpha: float = 0.05
    effect: float = 0.05
    power: float = 0.8

    def __post_init__(self) -> None:
        if self.primary is not None:
            primary = check_sequence(self.primary, str, "design.primary")
            for c in primary:
                parse_contrast(c)
            if len(set(primary)) != len(primary):
                raise ConfigError(f"design.primary names a contrast twice: {list(primary)}")
            object.__setattr__(self, "primary", primary)
        check_fields(self, {"alpha": (0, 1), "effect": (0, 1), "power": (0, 1)}, what="design")
        if not 0 < self.alpha < self.power < 1 or self.effect == 0:
            raise ConfigError(
                f"design: need 0 < alpha < power < 1 and a non-zero effect of interest (got "
                f"alpha={self.alpha}, power={self.power}, effect={self.effect})"
            )


# -- what a design can reject ----------------------------------------------------------------
def _reaches(p: float, level: float) -> bool:
    return p <= level * (1 + _LEVEL_RTOL)


def design_can_reject(n_seeds: int, n_contrasts: int = 1, alpha: float = 0.05) -> bool:
    """Whether the smallest sign-flip p of ``n_seeds`` seeds, 2 / 2^n, is at most alpha / m
    (Holm's first step over ``n_contrasts``): False means no data can give a rejection."""
    _check(n_seeds=n_seeds, n_contrasts=n_contrasts, alpha=alpha)
    return _reaches(2 / 2**n_seeds, alpha / n_contrasts)


def min_seeds_to_reject(n_contrasts: int = 1, alpha: float = 0.05) -> int:
    """The least n with 2 / 2^n <= alpha / n_contrasts (6 for one contrast at 0.05, 7 for 2,
    8 for 5)."""
    _check(n_contrasts=n_contrasts, alpha=alpha)
    n = 1
    while not design_can_reject(n, n_contrasts, alpha):
        n += 1
    return n


def _check(n_seeds: int = 1, n_contrasts: int = 1, alpha: float = 0.05) -> None:
    ints = [n_seeds, n_contrasts]
    if any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ints):
        raise ValueError(f"n_seeds and n_contrasts must be whole numbers >= 1 (got {n_seeds}, "
                         f"{n_contrasts})")  # fmt: skip
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1) (got {alpha})")


# -- the exact p of many samples, and power --------------------------------------------------
def _subset_sums(x: np.ndarray) -> np.ndarray:
    """All 2^k signed sums sum_i s_i x_i of a 1-D ``x`` of k values."""
    sums = np.zeros(1)
    for v in x:
        sums = np.concatenate([sums + v, sums - v])
    return sums


def sign_flip_p(diffs: Sequence[float] | np.ndarray) -> float:
    """The p-value of :func:`~circuitlens.experiments.stats.sign_flip_test`, counted by meeting
    in the middle (the same statistic and ties; no limit of 20 seeds, O(2^(n/2) n) time)."""
    d = np.asarray(diffs, dtype=float)
    if d.ndim != 1 or not d.size or not np.isfinite(d).all():
        raise ValueError(f"need a 1-D sequence of finite per-seed differences (got {diffs!r})")
    half = d.size // 2
    left, right = _subset_sums(d[:half]), np.sort(_subset_sums(d[half:]))
    reach = abs(d.sum()) - _TIE_RTOL * np.abs(d).sum()
    if reach <= 0:
        return 1.0
    # |l + r| >= reach: r >= reach - l, or r <= -reach - l (disjoint, as reach > 0)
    above = right.size - np.searchsorted(right, reach - left, side="left")
    below = np.searchsorted(right, -reach - left, side="right")
    return float((above.sum() + below.sum()) / 2**d.size)


def _standard_samples(n_seeds: int, n_sim: int, seed: int) -> np.ndarray:
    """``n_sim`` standard normal rows of ``n_seeds``, in antithetic pairs (Z, -Z), seeded by
    (``seed``, ``n_seeds``) only: the same rows for every effect and sd."""
    z = np.random.default_rng([seed, n_seeds]).standard_normal((math.ceil(n_sim / 2), n_seeds))
    return np.concatenate([z, -z])[:n_sim]


def sign_flip_power(
    effect: float,
    sd: float,
    n_seeds: int,
    n_contrasts: int = 1,
    alpha: float = 0.05,
    n_sim: int = 4000,
    seed: int = 0,
) -> float:
    """Power of the exact two-sided sign-flip test over ``n_seeds`` seeds at level
    alpha / n_contrasts (Holm's first step) when the per-seed differences are
    Normal(effect, sd): the fraction of ``n_sim`` simulated samples whose exact p is at most
    that level (the method and its Monte-Carlo error: the module docstring).

    Returns:
        A fraction in [0, 1]; 0 whenever :func:`design_can_reject` is False.
    """
    _check(n_seeds=n_seeds, n_contrasts=n_contrasts, alpha=alpha)
    if sd < 0 or not math.isfinite(sd) or not math.isfinite(effect) or n_sim < 2:
        raise ValueError(f"need a finite effect, a finite sd >= 0 and n_sim >= 2 (got effect="
                         f"{effect}, sd={sd}, n_sim={n_sim})")  # fmt: skip
    level = alpha / n_contrasts
    if not design_can_reject(n_seeds, n_contrasts, alpha):
        return 0.0
    if sd == 0:  # every difference is the effect: p = 2 / 2^n, or 1 when the effect is 0
        return float(effect != 0)
    x = abs(effect) / sd + _standard_samples(n_seeds, n_sim, seed)
    return float(np.mean([_reaches(sign_flip_p(row), level) for row in x]))


@dataclass(frozen=True)
class SeedSearch:
    """How :func:`plan_seeds` searches: the most seeds it considers (``max_seeds``), and the
    simulation of each number's power (``n_sim`` samples, seeded by ``seed``)."""

    max_seeds: int = MAX_SEEDS
    n_sim: int = 4000
    seed: int = 0


def plan_seeds(
    effect: float,
    sd: float,
    n_contrasts: int = 1,
    alpha: float = 0.05,
    power: float = 0.8,
    search: SeedSearch = SeedSearch(),
) -> int:
    """The fewest seeds whose exact sign-flip test, at Holm's first step over
    ``n_contrasts`` (level alpha / n_contrasts), has power >= ``power`` against per-seed
    differences Normal(``effect``, ``sd``) (:func:`sign_flip_power`; never below
    :func:`min_seeds_to_reject`). Non-increasing in |effect| and non-decreasing in sd.

    Args:
        effect: the mean paired difference to detect (accuracy, e.g. 0.03); its sign is moot.
        sd: the standard deviation of the per-seed paired differences (e.g. a pilot's).
        n_contrasts: the primary family's size (Holm).
        alpha: the familywise level.
        power: the wanted power.
        search: the most seeds considered (``max_seeds``), the simulated samples per number
            of seeds (``n_sim``) and the simulation's seed (:class:`SeedSearch`).

    Raises:
        ValueError: no number of seeds up to ``max_seeds`` reaches ``power`` (the message gives
            the power at ``max_seeds``), or a bad argument.

    >>> plan_seeds(0.05, 0.0)  # no spread: the fewest seeds that can reject at all
    6
    """
    max_seeds, n_sim, seed = search.max_seeds, search.n_sim, search.seed
    _check(n_contrasts=n_contrasts, alpha=alpha)
    if not alpha < power < 1 or effect == 0:
        raise ValueError(f"need alpha < power < 1 and a non-zero effect (got alpha={alpha}, "
                         f"power={power}, effect={effect})")  # fmt: skip
    for n in range(min_seeds_to_reject(n_contrasts, alpha), max_seeds + 1):
        if sign_flip_power(effect, sd, n, n_contrasts, alpha, n_sim, seed) >= power:
            return n
    at_max = sign_flip_power(effect, sd, max_seeds, n_contrasts, alpha, n_sim, seed)
    raise ValueError(
        f"no design of at most {max_seeds} seeds detects an effect of {effect:+g} with sd "
        f"{sd:g} at power {power:g} (level {alpha:g} / {n_contrasts}): {max_seeds} seeds give "
        f"{at_max:.3f}; declare a larger effect of interest, fewer primary contrasts, reduce "
        "the seeds' spread, or raise max_seeds"
    )


# -- before the run, and after it ------------------------------------------------------------
def design_note(cfg: Any) -> str | None:
    """Said before any work: why the run is exploratory (no primary contrast, or too few seeds
    for its primary family to reject at any effect size); None when the design can reject.

    Args:
        cfg: an :class:`~circuitlens.experiments.config.ExperimentConfig` (typed ``Any``: the
            config imports this module, and an import back would be a cycle).
    """
    family, d = cfg.primary_contrasts(), cfg.design
    n = len(cfg.seeds)
    if not family:
        return ("design: no primary contrast declared (design.primary): the run is "
                "exploratory, every comparison reported with its unadjusted p")  # fmt: skip
    m = len(family)
    if design_can_reject(n, m, d.alpha):
        return None
    return (
        f"design: {n} seed(s) cannot reject at alpha = {d.alpha:g} over {m} primary "
        f"contrast(s) ({', '.join(family)}) whatever the data: the exact sign-flip test's "
        f"smallest p is 2/2^{n} = {2 / 2**n:.3g}, above alpha/{m} = {d.alpha / m:.3g}; "
        f"{min_seeds_to_reject(m, d.alpha)} seeds are the fewest that can, and "
        "`circuitlens plan` gives the seeds for a wanted power. The run is exploratory."
    )


def warn_design(cfg: Any) -> str | None:
    """Log :func:`design_note` as a warning (``run_experiment`` calls this before any work);
    returns it."""
    note = design_note(cfg)
    if note is not None:
        logging.getLogger(__name__).warning(note)
    return note


def is_exploratory(cfg: Any) -> bool:
    """The run's design cannot reject (:func:`design_note` says why)."""
    return design_note(cfg) is not None


@dataclass(frozen=True)
class ContrastEstimate:
    """A contrast's estimate over seeds: the mean paired difference, its interval
    [``low``, ``high``], its ``p`` and the number of seeds."""

    mean: float
    low: float
    high: float
    p: float
    n_seeds: int


def contrast_verdict(
    a: str, b: str, estimate: ContrastEstimate, design: DesignConfig, primary: bool
) -> str:
    """A contrast's verdict line: the mean difference, its interval, its p, and whether 0 and
    the effect of interest (``design.effect``) lie inside the interval; p is read against
    ``design.alpha``.

    ``"CE + Align CKA − CE: +0.028 [+0.000, +0.060], 6 seeds, p_Holm 0.06; the interval
    contains 0 and +0.05: undecided"``. ``primary``: p is Holm-adjusted over the primary
    family (``p_Holm``); else it is unadjusted and the line starts ``[exploratory]``.
    """
    mean, low, high, p, n_seeds = (
        estimate.mean, estimate.low, estimate.high, estimate.p, estimate.n_seeds
    )  # fmt: skip
    effect, alpha = design.effect, design.alpha

    def s(x: float) -> str:
        return f"{x:+.3f}".replace("-", "\u2212")

    def e(x: float) -> str:
        return f"{x:+g}".replace("-", "\u2212")

    holds_0, holds_e = low <= 0 <= high, low <= effect <= high
    inside = [w for w, held in (("0", holds_0), (e(effect), holds_e)) if held]
    outside = [w for w, held in (("0", holds_0), (e(effect), holds_e)) if not held]
    where = (f"contains {' and '.join(inside)}" if inside else "") + (
        (" but not " if inside else "excludes ") + " or ".join(outside) if outside else ""
    )  # fmt: skip
    if holds_0 and holds_e:
        meaning = "undecided"
    elif holds_0:
        meaning = f"no difference shown, and any is below {e(effect)}"
    elif high < 0:
        meaning = f"{a} is lower"
    elif holds_e:
        meaning = f"{a} is higher, by as much as {e(effect)}"
    else:
        meaning = f"{a} is higher, by {'less' if high < effect else 'more'} than {e(effect)}"
    p_name = "p_Holm" if primary else "p (unadjusted)"
    rejected = _reaches(p, alpha)
    if not holds_0 and not rejected:
        meaning += f", though {p_name} is not at or below {alpha:g}"
    return (
        f"{'' if primary else '[exploratory] '}{a} \u2212 {b}: {s(mean)} [{s(low)}, {s(high)}], "
        f"{n_seeds} seeds, {p_name} {p:.2g}; the interval {where}: {meaning}"
    )


def power_rows(
    effect: float,
    sd: float,
    n_contrasts: int = 1,
    alpha: float = 0.05,
    seeds: Sequence[int] = range(2, 13),
    n_sim: int = 4000,
) -> list[dict[str, Any]]:
    """The power table: per number of seeds, the smallest attainable p, whether the design can
    reject, and :func:`sign_flip_power`."""
    return [
        {
            "seeds": n,
            "smallest p": 2 / 2**n,
            "can reject": design_can_reject(n, n_contrasts, alpha),
            "power": sign_flip_power(effect, sd, n, n_contrasts, alpha, n_sim),
        }
        for n in seeds
    ]


__all__ = [
    "CONTRAST_SEP", "ContrastEstimate", "DEFAULT_PRIMARY", "DesignConfig", "contrast_verdict",
    "design_can_reject", "design_note", "is_exploratory", "min_seeds_to_reject",
    "parse_contrast", "plan_seeds", "power_rows", "SeedSearch", "sign_flip_p",
    "sign_flip_power", "warn_design",
]  # fmt: skip
