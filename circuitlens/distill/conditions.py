"""Training conditions as data: which loss terms, which student heads train, which partners.

A :class:`Condition` says everything a condition means, so that no module tests a condition's
name: the trainer reads ``terms`` (and ``shuffle``), the masks read ``heads``, the map of a
cell comes from :func:`condition_map`, the tokenizer check reads ``compares_logits``, the tables
and the report read ``label``. Adding a condition is one :func:`register_condition` call.

- ``terms``: the loss is the sum of these terms, the alignment term weighted by lambda
  (``ce``: cross-entropy; ``align``: mean over pairs of ``1 - CKA``; ``kd``: distillation from
  the teacher's logits).
- ``heads``: the student heads that train: the map's (``"map"``), as many drawn at random
  (``"random"``, seeded: the random-heads controls), or every parameter (``"all"``).
- ``partners``: the teacher head each trained student head is aligned with (and reported
  beside): the map method's partner (``"map"``; for random heads, the partner the configured
  map method gives each of them), a random teacher head that is never the aligned one and, one
  to one, none of the map's teacher heads (``"random"``, the CE + Rand control as it always
  was), a random teacher head from the whole pool, the map's partners included
  (``"random-all"``), or the map's own partners with the pairing permuted so that no student
  head keeps its partner (``"permuted"``, a seeded derangement).
- ``shuffle``: the alignment target's examples are deranged within the batch (content-free).

The controls that separate circuit transfer from a CKA term that merely regularises are a
factorial over what the method claims, student heads {mapped, random} x teacher partners
{the map's, random from all}: ``ce+align`` (the treatment), ``ce+rand-all`` (mapped heads,
random partners), ``random-heads+align`` (random heads, the map method's partners for them),
``random-heads+rand-all`` (random heads, random partners); plus ``ce+permuted`` (the map's
heads and partners, the pairing permuted: does the pairing matter?), ``ce+shuffled`` (the
right pairs, no content), ``random-heads`` (CE on random heads) and ``ce+rand`` (kept for the
runs that used it). Random heads are matched to the mapped heads in trained parameters
(:func:`random_heads`: as many heads touching as many K/V groups).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from torch import Tensor

from circuitlens.ablation.result import AblationResult
from circuitlens.core.types import Circuit, Head, HeadMap
from circuitlens.mapping.config import DEFAULT_BUDGET, MapConfig
from circuitlens.mapping.map import map_heads, permuted_map, random_map
from circuitlens.mapping.methods import METHODS, CorrespondenceFeatures
from circuitlens.tasks.tokenizers import LOGIT_CONDITIONS

Term = Literal["ce", "align", "kd"]
TERMS: tuple[str, ...] = get_args(Term)
HeadChoice = Literal["map", "random", "all"]
HEAD_CHOICES: tuple[str, ...] = get_args(HeadChoice)
Partners = Literal["map", "random", "random-all", "permuted"]
PARTNERS: tuple[str, ...] = get_args(Partners)

#: the condition every other is compared with in the tables
BASELINE = "ce"


@dataclass(frozen=True)
class Condition:
    """One training condition (see the module docstring).

    Attributes:
        name: the key (``"ce+align"``), in configs, run directories and tables.
        label: as the paper writes it (``"CE + Align CKA"``).
        terms: the loss terms, summed (``align`` weighted by lambda).
        heads: which student heads train.
        partners: which teacher head each trained head is paired with.
        shuffle: derange the teacher's examples in the alignment term.
        default: part of the default experiment grid.
    """

    name: str
    label: str
    terms: tuple[Term, ...]
    heads: HeadChoice = "map"
    partners: Partners = "map"
    shuffle: bool = False
    default: bool = True

    def __post_init__(self) -> None:
        if not self.terms or any(t not in TERMS for t in self.terms):
            raise ValueError(f"condition {self.name!r}: terms must be some of ce, align, kd")
        if self.heads not in HEAD_CHOICES:
            raise ValueError(f"condition {self.name!r}: heads must be map, random or all")
        if self.partners not in PARTNERS:
            raise ValueError(
                f"condition {self.name!r}: partners must be one of {', '.join(PARTNERS)} "
                f"(got {self.partners!r})"
            )
        if self.shuffle and "align" not in self.terms:
            raise ValueError(f"condition {self.name!r}: shuffle needs the align term")

    @property
    def uses_cka(self) -> bool:
        """The loss has the CKA alignment term (so the pairs' activations are captured)."""
        return "align" in self.terms

    @property
    def compares_logits(self) -> bool:
        """The loss reads the teacher's output distribution (one vocabulary needed)."""
        return "kd" in self.terms

    @property
    def trains_all(self) -> bool:
        return self.heads == "all"

    def loss(
        self,
        lam: float,
        ce: Tensor | None = None,
        align: Tensor | None = None,
        kd: Tensor | None = None,
    ) -> Tensor:
        """The sum of the condition's terms (``align`` times ``lam``)."""
        given = {"ce": ce, "align": align, "kd": kd}
        missing = [t for t in self.terms if given[t] is None]
        if missing:
            raise ValueError(f"condition {self.name!r} needs the term(s) {missing}")
        parts = [lam * given[t] if t == "align" else given[t] for t in self.terms]
        total = parts[0]
        for p in parts[1:]:
            total = total + p
        return total  # type: ignore[return-value]


_REGISTRY: dict[str, Condition] = {}
#: row names of the tables: the untrained rows and every registered condition's label
LABELS: dict[str, str] = {"student": "student (before training)", "teacher": "teacher"}


def register_condition(condition: Condition) -> Condition:
    """Add (or replace) a condition in the registry (and its label in :data:`LABELS`)."""
    _REGISTRY[condition.name] = condition
    LABELS[condition.name] = condition.label
    LOGIT_CONDITIONS.discard(condition.name)
    if condition.compares_logits:
        LOGIT_CONDITIONS.add(condition.name)
    return condition


def get_condition(name: str) -> Condition:
    """The registered condition called ``name``; a ValueError naming the valid ones."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown condition {name!r}; valid: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def condition_names(default_only: bool = False) -> tuple[str, ...]:
    """The registered conditions' names, in registration order."""
    return tuple(n for n, c in _REGISTRY.items() if c.default or not default_only)


for _c in (
    Condition("ce", "CE", ("ce",)),
    Condition("ce+align", "CE + Align CKA", ("ce", "align")),
    Condition("ce+rand", "CE + Rand CKA", ("ce", "align"), partners="random"),
    Condition("ce+shuffled", "CE + Shuffled CKA", ("ce", "align"), shuffle=True),
    Condition("align", "Align CKA", ("align",)),
    Condition("kd", "KD", ("kd",)),
    Condition("full-ce", "full fine-tuning CE", ("ce",), heads="all"),
    Condition("random-heads", "CE, random heads", ("ce",), heads="random", default=False),
    Condition(
        "random-heads+align",
        "CE + Align CKA, random heads",
        ("ce", "align"),
        heads="random",
        default=False,
    ),
    Condition(
        "ce+rand-all",
        "CE + Align CKA, random partners (all heads)",
        ("ce", "align"),
        partners="random-all",
        default=False,
    ),
    Condition(
        "random-heads+rand-all",
        "CE + Align CKA, random heads, random partners",
        ("ce", "align"),
        heads="random",
        partners="random-all",
        default=False,
    ),
    Condition(
        "ce+permuted",
        "CE + Align CKA, pairing permuted",
        ("ce", "align"),
        partners="permuted",
        default=False,
    ),
):
    register_condition(_c)


def _count_ways(n_groups: int, size: int, k: int) -> list[list[int]]:
    """``ways[i][r]``: the ways to pick ``r`` heads from groups ``i..n_groups-1`` of ``size``
    heads each with at least one head in every group (exact integers)."""
    ways = [[0] * (k + 1) for _ in range(n_groups + 1)]
    ways[n_groups][0] = 1
    for i in range(n_groups - 1, -1, -1):
        for r in range(k + 1):
            ways[i][r] = sum(
                math.comb(size, c) * ways[i + 1][r - c] for c in range(1, min(size, r) + 1)
            )
    return ways


def random_heads(
    student_sweep: AblationResult,
    like: Sequence[Head] | int,
    seed: int,
    n_kv_heads: int | None = None,
) -> list[Head]:
    """Student heads drawn at random (seeded), in (layer, head) order, matched in trained
    parameters to the heads ``like`` (the map's student heads).

    A head's trained parameters are its W_Q rows and W_O columns (its own) and the K/V head
    of its group (shared by ``n_heads / n_kv_heads`` query heads under grouped-query
    attention; :mod:`circuitlens.distill.masks`): a set of ``k`` heads touching ``g`` distinct
    (layer, K/V group)s trains ``2 k + 2 g`` head-slices of ``d_model x d_head`` (bias slices
    alike). So the draw is uniform over the ``k``-head sets touching exactly as many K/V groups
    as ``like``: ``g`` groups drawn uniformly, then the heads within them uniformly among the
    ways that touch every one (an exact count, :func:`_count_ways`), so the random heads train
    exactly as many parameters as the mapped ones (``kv="frozen"``: ``2 k`` slices whatever
    the groups, matched too).

    Args:
        student_sweep: the student's sweep (its shape: layers x heads).
        like: the mapped heads to match, or a count (any ``k`` heads, not matched).
        seed: the draw.
        n_kv_heads: K/V heads per layer (``model_facts(student).n_kv_heads``); None: one per
            query head (no grouping). Without grouping (or with a count) the draw is the
            uniform ``k`` of all heads it always was.

    Returns:
        ``k`` distinct heads, sorted by (layer, head).
    """
    n_layers, n_heads = (int(x) for x in student_sweep.delta.shape)
    every = [Head(layer, h) for layer in range(n_layers) for h in range(n_heads)]
    k = like if isinstance(like, int) else len(like)
    if not 0 < k <= len(every):
        raise ValueError(f"cannot draw {k} heads from a model of {len(every)}")
    n_kv = n_heads if n_kv_heads is None else int(n_kv_heads)
    if n_kv < 1 or n_heads % n_kv:
        raise ValueError(
            f"n_kv_heads={n_kv_heads} does not divide the student's {n_heads} heads per layer: "
            "pass model_facts(student).n_kv_heads"
        )
    size = n_heads // n_kv
    rng = random.Random(f"random-heads:{seed}")
    if isinstance(like, int) or size == 1:
        chosen = rng.sample(every, k)
        return sorted(chosen, key=lambda h: (h.layer, h.head))
    if any(not (0 <= h.layer < n_layers and 0 <= h.head < n_heads) for h in like):
        raise ValueError(f"heads {list(map(str, like))} do not fit a {n_layers} x {n_heads} model")
    g = len({(h.layer, h.head // size) for h in like})
    picked_groups = rng.sample([(layer, j) for layer in range(n_layers) for j in range(n_kv)], g)
    ways = _count_ways(g, size, k)
    chosen, left = [], k
    for i, (layer, j) in enumerate(picked_groups):
        weights = [
            math.comb(size, c) * ways[i + 1][left - c] if c <= left else 0
            for c in range(1, size + 1)
        ]
        c = 1 + _weighted_index(rng, weights)
        chosen += [Head(layer, j * size + h) for h in rng.sample(range(size), c)]
        left -= c
    return sorted(chosen, key=lambda h: (h.layer, h.head))


def _weighted_index(rng: random.Random, weights: list[int]) -> int:
    """An index drawn with probability proportional to ``weights`` (exact integers)."""
    x = rng.randrange(sum(weights))
    for i, w in enumerate(weights):
        if x < w:
            return i
        x -= w
    raise AssertionError("unreachable: x < sum(weights)")


def kv_groups(heads: Sequence[Head], n_heads: int, n_kv_heads: int) -> int:
    """The distinct (layer, K/V group)s ``heads`` touch (``n_heads / n_kv_heads`` query heads
    share one K/V head)."""
    size = n_heads // n_kv_heads
    return len({(h.layer, h.head // size) for h in heads})


@dataclass(frozen=True)
class PairSources:
    """What :func:`condition_map` draws a condition's pairs from: a setup's map and sweeps
    (:meth:`circuitlens.distill.setup.Setup.condition_map` builds it from the setup).

    Attributes:
        aligned: the setup's map, made with ``circuit``'s heads as candidates (its budget,
            one-to-one setting and map method are read from it).
        student_sweep, teacher_sweep: both models' sweeps.
        circuit: the teacher heads the map drew from (None: every teacher head).
        random_circuit: the teacher heads random partners are drawn from (None: every
            teacher head).
        n_kv_heads: the student's K/V heads per layer, to match random heads in trained
            parameters (:func:`random_heads`; None: one per query head).
        features: what else the map's method reads (e.g. the heads' ``z``), for random heads'
            partners.
    """

    aligned: HeadMap
    student_sweep: AblationResult
    teacher_sweep: AblationResult
    circuit: Circuit | None = None
    random_circuit: Circuit | None = None
    n_kv_heads: int | None = None
    features: CorrespondenceFeatures | None = None


def condition_map(condition: Condition | str, sources: PairSources, seed: int) -> HeadMap:
    """The pairs a condition trains, from the setup's map ``sources.aligned`` (made with
    ``sources.circuit``'s heads as candidates; its budget, one-to-one setting and map method
    are read from it): ``condition_map("ce+rand", PairSources(aligned, s_sweep, t_sweep), 3)``.

    Heads: ``"map"``: the map's student heads; ``"random"``: as many student heads drawn at
    random (``seed``), matched in trained parameters (:func:`random_heads`, with
    ``n_kv_heads``). Partners: ``"map"``: for the map's heads the map itself, for random heads
    the partners :func:`~circuitlens.mapping.map.map_heads` gives them by the map's
    method (``features``: what else the method reads, e.g. the heads' ``z``); ``"random"``:
    teacher heads drawn from ``random_circuit``'s heads (None: every teacher head), never the
    aligned partner (one to one: none of the map's partners); ``"random-all"``: drawn from the
    same pool with nothing left out; ``"permuted"``: the map's partners, the pairing permuted
    so that no head keeps its own (:func:`~circuitlens.mapping.map.permuted_map`)."""
    aligned, features = sources.aligned, sources.features
    student_sweep, teacher_sweep = sources.student_sweep, sources.teacher_sweep
    cond = get_condition(condition) if isinstance(condition, str) else condition
    budget = aligned.config.get("budget", DEFAULT_BUDGET)
    one_to_one = bool(aligned.config.get("one_to_one"))
    students = aligned.student_heads
    if cond.heads == "random":
        students = random_heads(student_sweep, aligned.student_heads, seed, sources.n_kv_heads)
        if cond.partners == "map":
            method = aligned.config.get("method", "impact")
            needs_z = method in METHODS and "z" in METHODS[method].needs
            if needs_z and (features is None or features.student_z is None):
                raise ValueError(
                    f"condition {cond.name!r}: the map method {method!r} reads the heads' z, "
                    "which setup.json does not keep: give PairSources features= (a setup read "
                    "from disk: circuitlens.distill.pipeline.with_map_features(setup, teacher, "
                    "student, task) measures them)"
                )
            return map_heads(
                student_sweep, teacher_sweep, sources.circuit,
                MapConfig(budget=budget, one_to_one=one_to_one, method=method),
                student_heads=students, features=features,
            )  # fmt: skip
    if cond.partners in ("random", "random-all"):
        return random_map(
            student_sweep,
            teacher_sweep,
            sources.random_circuit,
            MapConfig(budget=budget, one_to_one=one_to_one, seed=seed),
            student_heads=students,
            avoid=aligned if cond.partners == "random" else None,
        )
    if cond.partners == "permuted":
        if cond.heads == "random":
            raise ValueError(
                f"condition {cond.name!r}: permuted partners permute the map's own pairs; "
                "random heads have none (use partners='map' or 'random-all')"
            )
        return permuted_map(aligned, student_sweep, teacher_sweep, seed)
    return aligned


__all__ = [
    "BASELINE",
    "Condition",
    "condition_map",
    "condition_names",
    "LABELS",
    "PairSources",
    "get_condition",
    "kv_groups",
    "PARTNERS",
    "random_heads",
    "register_condition",
]
