"""The statistics of the comparison: McNemar's exact test on paired per-prompt correctness.

Two conditions scored on the same test prompts give, per prompt, a pair of outcomes. Only the
discordant prompts carry information: ``b`` (A right, B wrong) and ``c`` (A wrong, B right).
Under H0 (A and B equally accurate) each discordant prompt is A's with probability 1/2, so
``b ~ Binomial(b + c, 1/2)``, and the exact two-sided p-value is

    p = min(1, 2 * sum_{i=0}^{min(b, c)} C(b + c, i) / 2^(b + c))

(1 when ``b = c``'s tail reaches past the middle, and 1 with no discordant prompt). Seeds are
pooled by concatenating each seed's prompts (the cell of condition A and seed s paired with
the cell of B and the same seed s), as the paper pools its runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any


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


__all__ = ["McNemar", "mcnemar", "mcnemar_exact_p"]
