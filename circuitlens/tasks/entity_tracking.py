"""Entity tracking (Prakash et al., ICLR 2024).

"The apple is in Box O, the computer is in Box Q, ... the map is in Box W. Box Q contains the"
-> " computer". Box labels are distinct capital letters, objects distinct words from the
84-word list of the paper, kept only where they are one token for every tokenizer given.

Named positions: ``last`` (the final "the"), ``query_label`` (the label in the question),
``prev_query_label`` (the earlier occurrence of that label in the context), and ``label_i``
(the label of the i-th box).

Counterfactuals: the ``corrupted`` prompt is a fresh context (new objects and labels) that
queries a different box; the mean-ablation ``ablation`` prompt keeps the context and replaces
the queried label by a letter that labels no box, so the query carries no information.
"""

from __future__ import annotations

import random
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from circuitlens.core.types import PlanStep
from circuitlens.tasks.base import Prompt, Task, TaskError, get_tokenizer, single_token_id

OBJECTS: tuple[str, ...] = tuple(
    """book car paper letter game computer picture plant cup machine bill glass note stone fish
    drug television card document rock radio ball tea file newspaper branch train fig flower bag
    boat key painting phone drink engine bus coffee sheet plate magazine egg block brain map crown
    ring leaf dress fan milk ticket gift cross plane mirror coat wheel string ice rose boot hat
    suit creature bomb camera bread meat apple pipe guitar disk medicine clock chemical seed tie
    watch shell wire pot brick bell magnet""".split()
)
LABELS: tuple[str, ...] = tuple(string.ascii_uppercase)
MAX_BOXES = 7


@dataclass(frozen=True)
class EntityTrackingConfig:
    """Options of the entity-tracking task.

    Attributes:
        n_boxes: boxes in the context, 2 to 7 (the paper uses 7).
        seed: every prompt and split follows from it.
        n_train, n_val, n_test: split sizes (the splits share no prompt).
        n_probe: the ``probe`` split's size: the prompts that choose (sweeps, the circuit
            search, the head map), drawn after the others (200: the default sweep's prompts).
        objects: candidate objects (already filtered to single tokens when tokenizers are given).
        labels: candidate box labels.
    """

    n_boxes: int = 7
    seed: int = 0
    n_train: int = 2000
    n_val: int = 200
    n_test: int = 500
    n_probe: int = 200
    objects: tuple[str, ...] = OBJECTS
    labels: tuple[str, ...] = LABELS

    def __post_init__(self) -> None:
        if not 2 <= self.n_boxes <= MAX_BOXES:
            raise TaskError(
                f"entity_tracking: n_boxes must be between 2 and {MAX_BOXES} (got {self.n_boxes})"
            )
        for k in ("n_train", "n_val", "n_test", "n_probe"):
            if getattr(self, k) < 0:
                raise TaskError(f"entity_tracking: {k} must be >= 0 (got {getattr(self, k)})")
        if len(self.objects) < self.n_boxes:
            raise TaskError(
                f"entity_tracking: {self.n_boxes} boxes need at least {self.n_boxes} distinct "
                f"single-token objects, but only {len(self.objects)} remain "
                f"({list(self.objects)}); "
                "use fewer boxes or a tokenizer that keeps more of the object words whole."
            )
        if len(self.labels) < self.n_boxes + 1:
            raise TaskError(
                f"entity_tracking: need at least n_boxes + 1 = {self.n_boxes + 1} labels "
                f"(got {len(self.labels)})"
            )


def _render(objects: Sequence[str], labels: Sequence[str], query: str) -> tuple[str, dict]:
    text = ""
    label_at: dict[str, tuple[int, int]] = {}
    for i, (obj, lab) in enumerate(zip(objects, labels, strict=True)):
        head = "The" if i == 0 else " the"
        clause = f"{head} {obj} is in Box "
        start = len(text) + len(clause)
        label_at[lab] = (start, start + len(lab))
        sep = "," if i < len(objects) - 1 else "."
        text += clause + lab + sep
    q_start = len(text) + len(" Box ")
    text += f" Box {query} contains the"
    spans = {"query_label": (q_start, q_start + len(query))}
    spans.update({f"label_{i}": label_at[lab] for i, lab in enumerate(labels)})
    if query in label_at:
        spans["prev_query_label"] = label_at[query]
    else:  # the ablation reference names no box: point at the first label, a fixed slot
        spans["prev_query_label"] = label_at[labels[0]]
    return text, spans


class EntityTracking(Task):
    """The entity-tracking task; see the module docstring."""

    name = "entity_tracking"
    position_names = ("last", "query_label", "prev_query_label")
    # Prakash et al. (2024): A, heads that move the answer to the last token; B, position
    # transmitters (into A's queries); C, position detectors (into B's values at the query's
    # label); D, structure readers (into C's values at the previous label); ours, E: what A
    # reads where it attends (its keys and values at the queried label)
    circuit_plan = (
        PlanStep("A", None, "logits", "last"),
        PlanStep("B", "A", "q", "last"),
        PlanStep("C", "B", "v", "query_label"),
        PlanStep("D", "C", "v", "prev_query_label"),
        PlanStep("E", "A", "k", "prev_query_label"),
        PlanStep("E", "A", "v", "prev_query_label"),
    )

    def __init__(self, config: EntityTrackingConfig) -> None:
        super().__init__(config)

    def _context(self, rng: random.Random) -> tuple[list[str], list[str]]:
        cfg = self.config
        return rng.sample(cfg.objects, cfg.n_boxes), rng.sample(cfg.labels, cfg.n_boxes)

    def make_prompt(self, rng: random.Random) -> Prompt:
        cfg = self.config
        objects, labels = self._context(rng)
        q = rng.randrange(cfg.n_boxes)
        text, spans = _render(objects, labels, labels[q])

        c_objects, c_labels = self._context(rng)
        cq = rng.choice([i for i in range(cfg.n_boxes) if i != q])
        c_text, c_spans = _render(c_objects, c_labels, c_labels[cq])

        free = [lab for lab in cfg.labels if lab not in labels]
        a_text, _ = _render(objects, labels, rng.choice(free))
        return Prompt(
            text=text,
            answer=" " + objects[q],
            wrong_answers=tuple(" " + o for i, o in enumerate(objects) if i != q),
            spans=spans,
            corrupted=c_text,
            corrupted_answer=" " + c_objects[cq],
            corrupted_spans=c_spans,
            ablation=a_text,
            meta={"query_box": q, "labels": tuple(labels), "objects": tuple(objects)},
        )


def single_token_words(words: Sequence[str], tokenizers: Sequence[Any]) -> tuple[str, ...]:
    """The words that are one token (after a space) for every tokenizer."""
    toks = [get_tokenizer(t) for t in tokenizers]
    return tuple(w for w in words if all(single_token_id(t, " " + w) is not None for t in toks))


def entity_tracking(
    tokenizers: Sequence[Any] | Any | None = None, **options: Any
) -> EntityTracking:
    """Build the task; ``tokenizers`` (models or tokenizers) filter objects to single tokens."""
    if tokenizers is not None:
        toks = tokenizers if isinstance(tokenizers, (list, tuple)) else [tokenizers]
        options.setdefault("objects", single_token_words(OBJECTS, toks))
        options.setdefault("labels", single_token_words(LABELS, toks))
    return EntityTracking(EntityTrackingConfig(**options))
