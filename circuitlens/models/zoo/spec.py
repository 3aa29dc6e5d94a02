"""The zoo's registry: each model's architecture, training recipe and task, and its card.

``ZOO`` names the four embedded models; ``data/zoo/<name>/card.json`` records what training
produced (architecture, recipe, steps, accuracy, the sha256 of the weights, checked by
:func:`zoo_path` at every load).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from circuitlens.core.io import sha256_file
from circuitlens.tasks import get_task
from circuitlens.tasks.base import Task

ZOO_DIR = Path(__file__).resolve().parents[3] / "data" / "zoo"
#: the task seed whose test split the model cards report (fresh: never used in training)
CARD_SEED = 12345
#: accuracy targets on held-out prompts: teachers at least this, students inside this range
TEACHER_TARGET = 0.95
STUDENT_RANGE = (0.4, 0.75)


class ZooError(ValueError):
    """A zoo name or file that does not exist or does not check out."""


@dataclass(frozen=True)
class ZooArch:
    """A tiny Llama: width, depth, heads (query and K/V) and MLP width."""

    d_model: int = 64
    n_layers: int = 4
    n_heads: int = 8
    n_kv_heads: int = 4
    d_mlp: int = 128
    max_pos: int = 512


@dataclass(frozen=True)
class ZooRecipe:
    """How a zoo model is trained (every field is in its model card)."""

    steps: int = 20_000  # upper bound; teachers stop early at ``stop_at`` too
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 500
    weight_decay: float = 0.01
    n_queries: int = 8  # queries (answers scored) per training sequence
    min_boxes: int = 2  # entity tracking: boxes drawn per batch from min..max
    max_boxes: int = 7
    aux_weight: float = 1.0  # weight of the auxiliary probe losses (0 disables them)
    aux_layer: int = 1  # hidden state read by the probes (1 = after the first block)
    mixed_forms: float = 0.0  # entity tracking: share of context clauses in the query's form
    mixed_until: int = 0  # ... during the first steps only (the real template after)
    attn_weight: float = 0.0  # entity tracking: supervise one head's attention to the queried
    attn_layer: int = 1  # label from the query's end: head 0 of this block
    tom_head1: str = "filler"  # theory of mind: head 1's target, "filler" or "container"
    tom_distinct: bool = False  # theory of mind: the questions of a story are all different
    tom_probe_filler: bool = False  # theory of mind: probe each container mention for its filler
    tom_probe_knows: bool = False  # theory of mind: probe the answer slot for "can it be known"
    aux2_layer: int = 2  # hidden state read by the second probe
    # theory of mind, the binding step: head ``tom_bind_head`` of block ``tom_bind_layer`` looks
    # from the answer slot at the questioned character's own "<name> grabs" in the story (which
    # tells whether they filled the first or the second container), weighted by
    # ``tom_bind_weight`` (0 disables it); ``tom_probe_cq`` asks the second probe (at
    # ``aux2_layer``) for the questioned character at the answer slot
    tom_bind_weight: float = 0.0
    tom_bind_layer: int = 2
    tom_bind_head: int = 0
    tom_probe_cq: bool = False
    eval_every: int = 250
    eval_n: int = 200
    stop_at: float = 0.99  # stop at the first evaluation with this validation accuracy
    seed: int = 0


@dataclass(frozen=True)
class ZooSpec:
    name: str
    task: str
    role: str  # "teacher" or "student"
    arch: ZooArch
    recipe: ZooRecipe
    task_options: dict[str, Any] = field(default_factory=dict)


ZOO: dict[str, ZooSpec] = {
    "entity-tracking-teacher": ZooSpec(
        "entity-tracking-teacher",
        "entity_tracking",
        "teacher",
        ZooArch(d_model=64, n_layers=4, n_heads=8, n_kv_heads=4, d_mlp=128),
        ZooRecipe(steps=20_000, lr=1e-3, stop_at=0.995, attn_weight=1.0, attn_layer=1),
    ),
    "entity-tracking-student": ZooSpec(
        "entity-tracking-student",
        "entity_tracking",
        "student",
        ZooArch(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_mlp=64),
        ZooRecipe(steps=20_000, lr=1e-3, stop_at=0.55, seed=1, attn_weight=1.0, attn_layer=1),
    ),
    "theory-of-mind-teacher": ZooSpec(
        "theory-of-mind-teacher",
        "theory_of_mind",
        "teacher",
        ZooArch(d_model=64, n_layers=4, n_heads=8, n_kv_heads=4, d_mlp=128),
        ZooRecipe(
            steps=5_000,
            batch_size=32,
            n_queries=4,
            stop_at=0.97,
            aux_weight=0.1,
            attn_weight=0.1,
            attn_layer=1,
            aux2_layer=1,
            tom_bind_weight=1.0,
            tom_bind_layer=2,
            tom_probe_cq=True,
        ),
        # the constant instruction block is left out of the zoo's prompts (shorter sequences)
        task_options={"instruction": False},
    ),
    "theory-of-mind-student": ZooSpec(
        "theory-of-mind-student",
        "theory_of_mind",
        "student",
        ZooArch(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_mlp=64),
        ZooRecipe(
            steps=20_000,
            batch_size=32,
            n_queries=4,
            stop_at=0.6,
            seed=1,
            attn_weight=1.0,
            attn_layer=1,
        ),
        task_options={"instruction": False},
    ),
}


# -- the shipped models ----------------------------------------------------------------------------
def zoo_path(name: str) -> Path:
    """The directory of an embedded zoo model, checked against its card's sha256."""
    if name not in ZOO:
        raise ZooError(f"unknown zoo model {name!r}; the zoo holds: {', '.join(ZOO)}")
    path = ZOO_DIR / name
    card_file = path / "card.json"
    if not card_file.is_file():
        raise ZooError(
            f"zoo model {name!r} is not built in {path}; "
            f"build it with `circuitlens zoo train {name}`"
        )
    card = json.loads(card_file.read_text())
    want = card["sha256"]["model.safetensors"]
    got = sha256_file(path / "model.safetensors")
    if got != want:
        raise ZooError(
            f"zoo model {name!r}: model.safetensors has sha256 {got[:12]}..., its card says "
            f"{want[:12]}...; the file is damaged or was changed. Restore it (git checkout "
            f"data/zoo/{name}) or rebuild it with `circuitlens zoo train {name}`."
        )
    return path


def zoo_task(task: str, **options: Any) -> Task:
    """A task in the prompt format the zoo's models were trained on (theory of mind: no
    instruction block); ``options`` (seed, split sizes, ...) are passed on."""
    fmt = next((dict(s.task_options) for s in ZOO.values() if s.task == task), {})
    return get_task(task, **(fmt | options))


def zoo_cards() -> list[dict[str, Any]]:
    """The model cards of every built zoo model (name order)."""
    cards = []
    for name in ZOO:
        f = ZOO_DIR / name / "card.json"
        if f.is_file():
            cards.append(json.loads(f.read_text()))
    return cards
