"""The options of a mean-ablation sweep (:class:`AblationConfig`): the metric, the prompts, the
bootstrap intervals, the method (exact or screened) and a screened sweep's options, validated
once; :func:`~circuitlens.ablation.sweep.ablation_sweep` takes it and its result carries it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal, get_args

from circuitlens.ablation.screening import SCREEN_TOP, SCREENS, ScreenKind
from circuitlens.core.types import parse_heads
from circuitlens.core.validate import check_fields
from circuitlens.tasks.base import Split
from circuitlens.tasks.metrics import METRICS

Metric = Literal["accuracy", "prob", "logit_diff"]
SweepMethod = Literal["auto", "exact", "screened"]
METHODS: tuple[str, ...] = get_args(SweepMethod)
#: a sweep's forward precision (:attr:`AblationConfig.dtype`)
Precision = Literal["float32", "bfloat16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
Rank = Literal["signed", "abs"]
RANKS: tuple[str, ...] = get_args(Rank)


@dataclass(frozen=True)
class AblationConfig:
    """Options of :func:`~circuitlens.ablation.sweep.ablation_sweep` (carried by its result).

    Attributes:
        metric: ``"prob"`` (the answer's probability, the default: a continuous P separates
            heads that accuracy ties), ``"accuracy"`` or ``"logit_diff"``, read at the last
            position.
        split, n: the prompts scored (the task's ``ablation`` prompts give the means);
            ``"probe"`` by default: a sweep chooses heads, and what chooses never reads the
            ``test`` prompts that results are reported on.
        heads_per_pass: heads ablated in one forward pass (each in its own copy of the batch);
            None: 1 on a CPU, 8 on a GPU.
        baseline: ``"own"``, or the name of the model whose unablated P is the baseline.
        n_boot: bootstrap resamples of the prompts for each dP's confidence interval (0: none);
            a screened sweep has intervals for its measured heads only.
        ci_level: the interval's coverage (percentile bootstrap).
        method: ``"exact"`` (every head ablated), ``"screened"`` (estimates for every head, the
            candidates verified exactly: :mod:`circuitlens.ablation.screening`), or ``"auto"``
            (:func:`circuitlens.ablation.screening.auto_method`: exact, until a screened sweep's map
            agrees with the exact map).
        top: screened: the heads whose top values must be exact, a fraction of all heads or a
            count (default :data:`~circuitlens.ablation.screening.SCREEN_TOP`).
        threshold: screened: also verify every head whose |impact| may reach this (or None).
        safety: screened: an unverified head may be this many times its estimated |impact|.
        screen: the estimator, ``"atp*"`` or ``"atp"`` (see :mod:`circuitlens.ablation.screening`).
        rank: screened: settle the top heads by impact (``"signed"``, what the mapping takes)
            or by |impact| (``"abs"``).
        verify: screened: heads measured exactly in any case (e.g. a circuit's heads, the
            map's candidates); an exact sweep measures every head and keeps none.
        dtype: the precision of the sweep's forwards: ``"float32"``, or ``"bfloat16"``
            (autocast: matrix products in bf16, the scores and impacts in float32). bf16 pays
            only where the hardware has it: on a CPU without native bf16 it runs emulated,
            slower, with a :class:`~circuitlens.core.devices.SlowPrecisionWarning` (measured
            in ``docs/benchmarks.md``, "bf16 against float32").
    """

    metric: Metric = "prob"
    split: Split = "probe"
    n: int | None = 200
    heads_per_pass: int | None = None
    baseline: str = "own"
    n_boot: int = 1000
    ci_level: float = 0.95
    method: SweepMethod = "auto"
    top: float | int | None = SCREEN_TOP
    threshold: float | None = None
    safety: float = 1.5
    screen: ScreenKind = "atp*"
    rank: Rank = "signed"
    verify: tuple[str, ...] = ()
    dtype: Precision = "float32"

    def __post_init__(self) -> None:
        check_fields(self, {"n": (1, None)})
        if self.dtype not in PRECISIONS:
            raise ValueError(f"unknown dtype {self.dtype!r}; valid: {', '.join(PRECISIONS)}")
        if self.metric not in METRICS:
            raise ValueError(f"unknown metric {self.metric!r}; valid: {', '.join(METRICS)}")
        if self.n_boot < 0:
            raise ValueError(f"n_boot must be >= 0 (0: no confidence intervals), got {self.n_boot}")
        if not 0 < self.ci_level < 1:
            raise ValueError(f"ci_level must lie in (0, 1), e.g. 0.95 (got {self.ci_level})")
        if self.heads_per_pass is not None and self.heads_per_pass < 1:
            raise ValueError(f"heads_per_pass must be >= 1 (got {self.heads_per_pass})")
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; valid: {', '.join(METHODS)}")
        if self.screen not in SCREENS:
            raise ValueError(f"unknown screen {self.screen!r}; valid: {', '.join(SCREENS)}")
        if self.rank not in RANKS:
            raise ValueError(f"rank must be 'signed' or 'abs' (got {self.rank!r})")
        if self.safety < 1:
            raise ValueError(f"safety must be >= 1 (got {self.safety})")
        if self.method == "screened" and self.top is None and self.threshold is None:
            raise ValueError("a screened sweep needs top= (a count or fraction) or threshold=")
        # heads as "L3H5" strings: a config that serialises as it reads
        object.__setattr__(self, "verify", tuple(str(h) for h in parse_heads(list(self.verify))))

    def with_overrides(self, **overrides: Any) -> AblationConfig:
        """A copy with ``overrides`` replacing fields (an unknown name is an error)."""
        unknown = sorted(set(overrides) - {f.name for f in fields(self)})
        if unknown:
            raise TypeError(
                f"unknown sweep option(s) {', '.join(unknown)}; valid: "
                f"{', '.join(f.name for f in fields(self))}"
            )
        return replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        """The options as saved with a result (``verify`` only where a screened sweep kept
        heads to measure: the files of exact sweeps read as before)."""
        d = asdict(self)
        if not d["verify"]:
            del d["verify"]
        else:
            d["verify"] = list(d["verify"])
        return d
