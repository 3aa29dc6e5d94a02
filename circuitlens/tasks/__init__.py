"""Tasks: prompts with answers, counterfactuals and named positions; metrics; evaluation."""

from __future__ import annotations

from typing import Any

from circuitlens.core.types import Model
from circuitlens.tasks.base import (
    Prompt,
    PromptBatch,
    Task,
    TaskError,
    get_tokenizer,
    tokenize_prompts,
)
from circuitlens.tasks.entity_tracking import EntityTracking, EntityTrackingConfig, entity_tracking
from circuitlens.tasks.formats import (
    TaskFormatError,
    TaskFormatWarning,
    card_options,
    check_task_format,
    merge_options,
)
from circuitlens.tasks.jsonl import JsonlTask, JsonlTaskConfig, jsonl_task
from circuitlens.tasks.metrics import METRICS, evaluate, make_metric, prompt_scores
from circuitlens.tasks.plan import PlanError, check_plan, read_plan
from circuitlens.tasks.theory_of_mind import TheoryOfMind, TheoryOfMindConfig, theory_of_mind
from circuitlens.tasks.tokenizers import (
    LabelTranslator,
    TokenizerMismatchError,
    check_tokenizers,
    require_compatible_tokenizers,
    require_same_tokenizers,
)

TASKS = {
    "entity_tracking": entity_tracking,
    "theory_of_mind": theory_of_mind,
    "jsonl": jsonl_task,
}


def get_task(name: str, model: Model = None, **options: Any) -> Task:
    """Build a task by name, in the prompt format the models' cards name.

    Args:
        name: ``"entity_tracking"``, ``"theory_of_mind"`` or ``"jsonl"`` (with ``path=...``).
        model: a loaded model: the task takes the prompt format on its card (see
            :mod:`circuitlens.tasks.formats`) and keeps only words that are one token for it.
        **options: the task's config fields (``n_boxes=7``, ``seed=0``, ``n_test=500``, ...),
            and ``tokenizers=[model, ...]`` to keep only words that are single tokens for them
            (the format is then the first card's; cards that disagree raise
            :class:`~circuitlens.tasks.formats.TaskFormatError`). An option that differs from
            a card's format is used, with a :class:`~circuitlens.tasks.formats.TaskFormatWarning`.

    >>> task = get_task("entity_tracking", n_boxes=3, seed=0)
    >>> task.split("test", 1)[0].text
    'The bag is in Box S, the suit is in Box G, the bread is in Box V. Box S contains the'
    """
    if name not in TASKS:
        raise TaskError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}")
    toks = options.get("tokenizers")
    toks = [] if toks is None else list(toks) if isinstance(toks, list | tuple) else [toks]
    if model is not None:
        if not any(t is model for t in toks):
            toks = [model, *toks]
        options["tokenizers"] = toks
    options = merge_options(name, toks, options)
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
    "PlanError",
    "Prompt",
    "PromptBatch",
    "Task",
    "TaskError",
    "TaskFormatError",
    "TaskFormatWarning",
    "TokenizerMismatchError",
    "TheoryOfMind",
    "TheoryOfMindConfig",
    "card_options",
    "check_task_format",
    "check_plan",
    "check_tokenizers",
    "LabelTranslator",
    "require_compatible_tokenizers",
    "evaluate",
    "prompt_scores",
    "get_task",
    "get_tokenizer",
    "make_metric",
    "read_plan",
    "require_same_tokenizers",
    "tokenize_prompts",
]
