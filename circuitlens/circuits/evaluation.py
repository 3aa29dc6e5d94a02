"""Evaluation beyond full-model accuracy: circuit-only accuracy and accuracy per prompt format.

- **Circuit-only** (the paper's second number): every head *outside* a kept set (the student's
  mapped heads, or a teacher's circuit) is mean-ablated (:func:`circuitlens.ablation.sweep.
  mean_ablated`, means over the split's ``ablation`` reference prompts, per position), and the
  task is scored with the kept heads alone carrying head-specific information.
- **Per format**: a task may offer several prompt formats (``Task.formats``; theory of mind:
  ``plain`` and ``instruction``). The same prompts are scored in each, so a gain that appears
  in one format only shows as such.

Both return per-prompt scores (``[n]``: 1.0 / 0.0 for accuracy), the paired data of McNemar's
test; their mean is the accuracy.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from circuitlens.ablation.means import compute_means, mean_ablated
from circuitlens.core.types import Head, Model, parse_heads
from circuitlens.models.registry import model_facts
from circuitlens.tasks import Task, TaskFormatWarning, evaluate, prompt_scores


@torch.no_grad()
def ablation_means(
    model: Model, task: Task, split: str = "test", n: int | None = None
) -> Float[Tensor, "layer pos head_index d_head"]:
    """The heads' means over the ablation reference prompts of ``split``'s first ``n`` prompts
    (what circuit-only scores ablate with; compute once to score many head sets)."""
    batch = task.batch(model, split, n)
    if batch.ablation_tokens is None:
        raise ValueError(
            f"task {task.name!r} has no ablation reference prompts: pass means="
            "compute_means(model, reference_tokens)"
        )
    return compute_means(model, batch.ablation_tokens)


@torch.no_grad()
def circuit_only_scores(
    model: Model,
    task: Task,
    keep: Sequence[Head | str],
    split: str = "test",
    n: int | None = None,
    metric: str = "accuracy",
    means: Tensor | None = None,
) -> Float[Tensor, " n"]:
    """Per-prompt metric with every head but ``keep`` mean-ablated.

    Args:
        keep: the heads left intact (e.g. the student's mapped heads).
        means: ``[layer, pos, head_index, d_head]``; default: over the split's ablation
            reference prompts.
    """
    f = model_facts(model)
    kept = set(parse_heads(keep))
    others = [
        Head(layer, h)
        for layer in range(f.n_layers)
        for h in range(f.n_heads)
        if Head(layer, h) not in kept
    ]
    if means is None:
        means = ablation_means(model, task, split, n)
    with mean_ablated(model, others, means):
        return prompt_scores(model, task, split, n, metric)


def format_tasks(task: Task, make: Any) -> dict[str, Task]:
    """One task per prompt format that ``task``'s kind offers (``Task.formats``):
    ``make(**format_options)`` builds each (the same seed, so the same stories; only the
    format differs)."""
    return {name: make(**opts) for name, opts in type(task).formats.items()}


def format_accuracy(
    model: Model, formats: dict[str, Task], n: int, known: tuple[Task, float] | None = None
) -> dict[str, float]:
    """Test accuracy on the first ``n`` test prompts in each prompt format (``formats``: name
    -> the task in that format, from :func:`format_tasks`); ``known``: a task whose test
    accuracy is measured already, reused for the format whose test prompts are that task's
    (the card's format)."""

    def same(t: Task) -> bool:
        return known is not None and t.split("test")[:n] == known[0].split("test")[:n]

    with warnings.catch_warnings():  # other formats than the card's, on purpose
        warnings.simplefilter("ignore", TaskFormatWarning)
        return {
            name: known[1] if known is not None and same(t) else evaluate(model, t, "test", n)
            for name, t in formats.items()
        }


__all__ = ["ablation_means", "circuit_only_scores", "format_accuracy", "format_tasks"]
