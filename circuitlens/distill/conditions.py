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
  beside): the map's closest-impact partner (``"map"``), or a random candidate that is never
  the aligned one (``"random"``, the CE + Rand control).
- ``shuffle``: the alignment target's examples are deranged within the batch (content-free).

The controls that separate circuit transfer from a CKA term that merely regularises:
``ce+rand`` (the right heads, random partners), ``ce+shuffled`` (the right pairs, no content),
``random-heads`` (CE on random heads, the same count) and ``random-heads+align`` (those heads
aligned to the teacher heads the map would give them).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from circuitlens.analysis.ablation import AblationResult
from circuitlens.analysis.mapping import map_heads, random_map
from circuitlens.core.types import Circuit, Head, HeadMap
from circuitlens.tasks.tokenizers import LOGIT_CONDITIONS

Term = Literal["ce", "align", "kd"]
HeadChoice = Literal["map", "random", "all"]
Partners = Literal["map", "random"]

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
        if not self.terms or any(t not in ("ce", "align", "kd") for t in self.terms):
            raise ValueError(f"condition {self.name!r}: terms must be some of ce, align, kd")
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
):
    register_condition(_c)


def random_heads(student_sweep: AblationResult, k: int, seed: int) -> list[Head]:
    """``k`` student heads drawn uniformly at random (seeded), in (layer, head) order."""
    n_layers, n_heads = student_sweep.delta.shape
    every = [Head(layer, h) for layer in range(n_layers) for h in range(n_heads)]
    if not 0 < k <= len(every):
        raise ValueError(f"cannot draw {k} heads from a model of {len(every)}")
    chosen = random.Random(f"random-heads:{seed}").sample(every, k)
    return sorted(chosen, key=lambda h: (h.layer, h.head))


def condition_map(
    condition: Condition | str,
    aligned: HeadMap,
    student_sweep: AblationResult,
    teacher_sweep: AblationResult,
    circuit: Circuit | None,
    seed: int,
    random_circuit: Circuit | None = None,
) -> HeadMap:
    """The pairs a condition trains, from the closest-impact map ``aligned`` (made with
    ``circuit``'s heads as candidates; its budget and one-to-one setting are read from it).

    ``"random"`` partners: the same student heads, teacher heads drawn from
    ``random_circuit``'s heads (None: every teacher head), never the aligned partner.
    ``"random"`` heads: as many student heads drawn at random (``seed``), each paired with the
    teacher head the map would give it."""
    cond = get_condition(condition) if isinstance(condition, str) else condition
    budget, one_to_one = aligned.config.get("budget", 0.13), aligned.config.get("one_to_one")
    if cond.heads == "random":
        heads = random_heads(student_sweep, len(aligned), seed)
        return map_heads(
            student_sweep, teacher_sweep, circuit, budget, bool(one_to_one), student_heads=heads
        )
    if cond.partners == "random":
        return random_map(
            student_sweep,
            teacher_sweep,
            random_circuit,
            budget,
            bool(one_to_one),
            seed,
            student_heads=aligned.student_heads,
            avoid=aligned,
        )
    return aligned


__all__ = [
    "BASELINE",
    "Condition",
    "condition_map",
    "condition_names",
    "LABELS",
    "get_condition",
    "random_heads",
    "register_condition",
]
