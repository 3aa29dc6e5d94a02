"""Tasks: prompts with answers, counterfactuals and named positions; metrics; evaluation."""

from __future__ import annotations

from typing import Any

from circuitlens.tasks.base import (
    Prompt,
    PromptBatch,
    Task,
    TaskError,
    get_tokenizer,
    tokenize_prompts,
)
from circuitlens.tasks.entity_tracking import EntityTracking, EntityTrackingConfig, entity_tracking
from circuitlens.tasks.jsonl import JsonlTask, JsonlTaskConfig, jsonl_task
from circuitlens.tasks.metrics import METRICS, evaluate, make_metric, prompt_scores
from circuitlens.tasks.theory_of_mind import TheoryOfMind, TheoryOfMindConfig, theory_of_mind

TASKS = {
    "entity_tracking": entity_tracking,
    "theory_of_mind": theory_of_mind,
    "jsonl": jsonl_task,
}


def get_task(name: str, **options: Any) -> Task:
    """Build a task by name.

    Args:
        name: ``"entity_tracking"``, ``"theory_of_mind"`` or ``"jsonl"`` (with ``path=...``).
        **options: the task's config fields (``n_boxes=7``, ``seed=0``, ``n_test=500``, ...),
            and ``tokenizers=[model, ...]`` to keep only words that are single tokens for them.

    >>> task = get_task("entity_tracking", n_boxes=3, seed=0)
    >>> task.split("test", 1)[0].text
    'The bag is in Box S, the suit is in Box G, the bread is in Box V. Box S contains the'
    """
    if name not in TASKS:
        raise TaskError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}")
    try:
        return TASKS[name](**options)
    except TypeError as e:
        raise TaskError(f"{name}: bad option ({e}); see help(circuitlens.tasks.{name})") from e


__all__ = [
    "METRICS",
    "TASKS",
    "EntityTracking",
    "EntityTrackingConfig",
    "JsonlTask",
    "JsonlTaskConfig",
    "Prompt",
    "PromptBatch",
    "Task",
    "TaskError",
    "TheoryOfMind",
    "TheoryOfMindConfig",
    "evaluate",
    "prompt_scores",
    "get_task",
    "get_tokenizer",
    "make_metric",
    "tokenize_prompts",
]
