"""Domain objects named once: :class:`Head` (printed ``L3H5``), :class:`Circuit` (named groups
of heads with the token position each acts at), :class:`PlanStep` (one step of the path-patching
plan that finds a circuit's groups) and :class:`HeadMap` (student head -> teacher head). Users
may write heads as ``"L3H5"`` strings anywhere a Head is accepted."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

from circuitlens.core.io import atomic_write_text

#: A model the analyses, the trainer and the pipeline run: a TransformerLens 4
#: ``TransformerBridge`` (what :func:`circuitlens.load_model` returns) or a legacy
#: ``HookedTransformer``. Both offer what they read: ``cfg`` (``n_layers``, ``n_heads``,
#: ``d_head``, ...), ``run_with_hooks``, ``run_with_cache`` and the hook names of
#: :mod:`circuitlens.core.hooks`. An alias of ``Any`` on purpose: the two classes share no base
#: class, and a structural type would be checked at run time (beartype, in the tests) against
#: objects that gain their hook points as they run.
Model: TypeAlias = Any

_HEAD_RE = re.compile(r"^L(\d+)H(\d+)$")


@dataclass(frozen=True, order=True)
class Head:
    """One attention head: ``Head(3, 5)`` is ``L3H5`` (layer 3, head 5, both from 0)."""

    layer: int
    head: int

    def __post_init__(self) -> None:
        if self.layer < 0 or self.head < 0:
            raise ValueError(
                f"a head's layer and index are >= 0 (got layer {self.layer}, head {self.head})"
            )

    def __str__(self) -> str:
        return f"L{self.layer}H{self.head}"

    @classmethod
    def parse(cls, value: Head | str | tuple[int, int] | Any) -> Head:
        """A :class:`Head` from ``"L3H5"``, ``(3, 5)`` or a Head."""
        if isinstance(value, Head):
            return value
        if isinstance(value, str):
            m = _HEAD_RE.match(value.strip())
            if m is None:
                raise ValueError(f"cannot read a head from {value!r}; write it like 'L3H5'")
            return cls(int(m.group(1)), int(m.group(2)))
        if isinstance(value, tuple) and len(value) == 2:
            return cls(int(value[0]), int(value[1]))
        raise ValueError(f"cannot read a head from {value!r}; write it like 'L3H5' or (3, 5)")

    def check(self, n_layers: int, n_heads: int) -> Head:
        """Self, or a clear error when the model has no such head."""
        if self.layer >= n_layers or self.head >= n_heads:
            raise ValueError(
                f"head {self} is outside the model ({n_layers} layers x {n_heads} "
                f"heads: L0H0 to L{n_layers - 1}H{n_heads - 1})"
            )
        return self


#: a head as users may write it: a Head, ``"L3H5"`` or ``(3, 5)`` (read by :meth:`Head.parse`)
HeadLike = Head | str | tuple[int, int]


def parse_heads(heads: Any) -> list[Head]:
    """A list of :class:`Head` from heads, ``"L3H5"`` strings or ``(layer, head)`` tuples."""
    if isinstance(heads, (str, Head)):
        heads = [heads]
    return [Head.parse(h) for h in heads]


#: what a plan step's senders send into: the logits (direct effect), or a receiver's q, k, v
PLAN_VIA = ("logits", "q", "k", "v")


@dataclass(frozen=True)
class PlanStep:
    """One step of a circuit plan: group ``group`` is the senders that matter most through
    ``into``'s ``via`` input at the task position ``position``.

    ``PlanStep("B", "A", "q", "last")``: B is the heads whose output most changes the answer
    through group A's queries at the last token. The first step of a plan sends into the logits
    (``into=None, via="logits"``, at ``"last"``). A plan is checked as a whole (groups named
    before they receive, positions the task defines) by
    :func:`circuitlens.tasks.plan.check_plan`.

    Attributes:
        group: the group the step's senders join (a step may add to a group named before).
        into: the receiving group, or ``None`` for the logits.
        via: ``"logits"``, or the receivers' input: ``"q"``, ``"k"`` or ``"v"``.
        position: the task position where the receivers' input is patched.
    """

    group: str
    into: str | None
    via: str
    position: str

    def __post_init__(self) -> None:
        if self.via not in PLAN_VIA:
            raise ValueError(
                f"plan step {self.group!r}: unknown via {self.via!r}; valid: {', '.join(PLAN_VIA)}"
            )
        if (self.via == "logits") != (self.into is None):
            raise ValueError(
                f"plan step {self.group!r}: via='logits' goes with into=None, and 'q'/'k'/'v' "
                f"with the receiving group's name (got into={self.into!r}, via={self.via!r})"
            )

    @classmethod
    def parse(cls, value: PlanStep | tuple[Any, ...] | list[Any]) -> PlanStep:
        """A step from a :class:`PlanStep` or a ``(group, into, via, position)`` tuple."""
        if isinstance(value, PlanStep):
            return value
        if isinstance(value, tuple | list) and len(value) == 4:
            return cls(*value)
        raise ValueError(
            f"cannot read a plan step from {value!r}: write PlanStep(group, into, via, "
            "position) or a (group, into, via, position) tuple"
        )


@dataclass
class Circuit:
    """Named groups of heads, each acting at a named token position.

    Attributes:
        groups: group name -> heads (e.g. ``{"A": [L3H1, L3H5], "B": [...]}``; given as
            :data:`HeadLike`, held as :class:`Head`).
        positions: group name -> the task position the group acts at (``"last"``, ...).
        meta: how the circuit was found (method, scores, faithfulness, ...).
    """

    groups: dict[str, list[HeadLike]]
    positions: dict[str, str] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.groups = {g: parse_heads(hs) for g, hs in self.groups.items()}

    @property
    def heads(self) -> list[Head]:
        """Every head of the circuit once, in layer, head order."""
        return sorted({h for hs in self.groups.values() for h in hs})

    def position_of(self, head: Head | str) -> str:
        """The position of the first group holding ``head`` (``"last"`` if none is named)."""
        head = Head.parse(head)
        for g, hs in self.groups.items():
            if head in hs:
                return self.positions.get(g, "last")
        raise KeyError(f"{head} is not in the circuit ({' '.join(map(str, self.heads))})")

    def __str__(self) -> str:
        lines = []
        for g, hs in self.groups.items():
            at = f" @ {self.positions[g]}" if g in self.positions else ""
            lines.append(f"{g}{at}: {' '.join(str(h) for h in hs)}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "groups": {g: [str(h) for h in hs] for g, hs in self.groups.items()},
            "positions": dict(self.positions),
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Circuit:
        return cls(groups=d["groups"], positions=d.get("positions", {}), meta=d.get("meta", {}))

    def save(self, path: str | Path) -> None:
        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> Circuit:
        return cls.from_dict(json.loads(Path(path).read_text()))


@dataclass
class HeadMap:
    """Student head -> teacher head pairs, with the distance that chose each pair.

    Attributes:
        pairs: ``(student_head, teacher_head)`` in the order the student heads were chosen
            (given as :data:`HeadLike`, held as :class:`Head`).
        distances: the cost that chose each pair: ``|dP_s - dP_t|`` for the impact map and
            the controls, the method's own cost for another method (``distance_label``).
        kind: ``"ablation"`` (closest impact), another correspondence method's name,
            ``"random"`` or ``"permuted"`` (the controls).
        config: the options that made the map.
    """

    pairs: list[tuple[HeadLike, HeadLike]]
    distances: list[float] = field(default_factory=list)
    kind: str = "ablation"
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def distance_label(self) -> str:
        """What ``distances`` hold, for a table's header: ``|ΔP_s − ΔP_t|`` (the impact map,
        ``"random"``, ``"permuted"``), else ``"<kind> cost"``.

        >>> HeadMap([("L0H0", "L1H0")], [0.1], kind="weights-ov-qk").distance_label
        'weights-ov-qk cost'
        """
        impact = self.kind in ("ablation", "random", "permuted")
        return "|ΔP_s − ΔP_t|" if impact else f"{self.kind} cost"

    def __post_init__(self) -> None:
        self.pairs = [(Head.parse(s), Head.parse(t)) for s, t in self.pairs]

    @property
    def student_heads(self) -> list[Head]:
        return [s for s, _ in self.pairs]

    @property
    def teacher_heads(self) -> list[Head]:
        return [t for _, t in self.pairs]

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def warnings(self) -> list[str]:
        """What in the map is decided by noise, by ties, or not by the cost at all (a line
        containing "degenerate"): ``config["warnings"]`` ([] when none were recorded)."""
        return list(self.config.get("warnings", []))

    def to_frame(self) -> Any:
        import pandas as pd

        return pd.DataFrame(
            {
                "student": [str(s) for s, _ in self.pairs],
                "teacher": [str(t) for _, t in self.pairs],
                "distance": self.distances or [float("nan")] * len(self.pairs),
            }
        )

    def __str__(self) -> str:
        return f"HeadMap ({self.kind}, {len(self)} pairs)\n" + self.to_frame().to_string(
            index=False
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "pairs": [[str(s), str(t)] for s, t in self.pairs],
            "distances": self.distances,
            "kind": self.kind,
            "config": self.config,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HeadMap:
        return cls(
            pairs=[tuple(p) for p in d["pairs"]],
            distances=list(d.get("distances", [])),
            kind=d.get("kind", "ablation"),
            config=d.get("config", {}),
        )

    def save(self, path: str | Path) -> None:
        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> HeadMap:
        return cls.from_dict(json.loads(Path(path).read_text()))
