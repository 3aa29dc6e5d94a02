"""The prompt format a model's card names for a task, and the checks that every entry uses it.

A model loaded by :func:`circuitlens.load_model` may carry a card (``model.circuitlens_card``)
whose ``"task_options"`` give, per task, the options of the prompt format the model was trained
on (the zoo's theory-of-mind models: ``{"instruction": False}``). A task built in another format
scores a model far below what it can do (the zoo's theory-of-mind teacher: 0.64 with the
instruction block, 0.97 without), so:

- :func:`card_options` reads the format from the models' cards (the first model's when several
  agree; :class:`TaskFormatError` when they disagree);
- ``get_task(name, model=m)`` / ``get_task(name, tokenizers=[m, ...])`` build the task in it,
  and warn loudly (:class:`TaskFormatWarning`) where the caller's own options override it;
- :func:`check_task_format` warns when a ready task differs from the models' format.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from typing import Any

from circuitlens.core.types import Model
from circuitlens.tasks.base import TaskError

#: the attribute :func:`circuitlens.load_model` attaches the card as
CARD_ATTR = "circuitlens_card"


class TaskFormatError(TaskError):
    """The models' cards ask for different prompt formats of one task."""


class TaskFormatWarning(UserWarning):
    """A task is built in another prompt format than a model's card names."""


def _card(model: Model) -> dict[str, Any] | None:
    card = getattr(model, CARD_ATTR, None)
    return card if isinstance(card, dict) else None


def model_label(model: Model) -> str:
    """A short name for messages: the card's name or source, else the model's own name."""
    card = _card(model) or {}
    for key in ("name", "source"):
        if card.get(key):
            return str(card[key])
    cfg_name = getattr(getattr(model, "cfg", None), "model_name", None)
    return str(cfg_name or type(model).__name__)


def card_options(task: str, models: Sequence[Any]) -> dict[str, Any]:
    """The prompt-format options the models' cards give for ``task`` ({} when none does).

    Raises:
        TaskFormatError: two models' cards give different options for ``task``.
    """
    found: list[tuple[Any, dict[str, Any]]] = []
    for m in models:
        card = _card(m)
        if card is None:
            continue
        opts = (card.get("task_options") or {}).get(task)
        if opts is not None:
            found.append((m, dict(opts)))
    if not found:
        return {}
    first_model, first = found[0]
    for m, opts in found[1:]:
        if opts != first:
            raise TaskFormatError(
                f"the models' cards ask for different prompt formats of {task!r}: "
                f"{model_label(first_model)} {first} and {model_label(m)} {opts}. One task "
                "cannot be in both formats: pick one and pass its options explicitly, e.g. "
                f"get_task({task!r}, tokenizers=[...], **{first!r}) (each model is then "
                "scored in that format, and a warning names the model it overrides)."
            )
    return first


def _warn(message: str) -> None:
    # a warning, not a log line: shown by default, once per call site, and testable
    warnings.warn(message, TaskFormatWarning, stacklevel=4)


def merge_options(task: str, models: Sequence[Any], options: dict[str, Any]) -> dict[str, Any]:
    """``options`` on top of the format the models' cards name for ``task``; an explicit
    option that differs from a card is kept, with a loud warning. Models that disagree with
    each other raise :class:`TaskFormatError` unless the caller sets every option they differ
    on."""
    try:
        fmt = card_options(task, models)
    except TaskFormatError:
        # the caller may settle the disagreement by setting the options explicitly
        conflicting = {
            k for m in models for k in ((_card(m) or {}).get("task_options") or {}).get(task, {})
        }
        if not conflicting <= set(options):
            raise
        fmt = {}
        for m in models:
            fmt |= ((_card(m) or {}).get("task_options") or {}).get(task, {})
    for k, v in options.items():
        if k in fmt and fmt[k] != v:
            owners = [
                model_label(m)
                for m in models
                if ((_card(m) or {}).get("task_options") or {}).get(task, {}).get(k, v) != v
            ]
            _warn(
                f"get_task({task!r}): {k}={v!r} overrides the prompt format on the card of "
                f"{', '.join(owners) or 'a model'} ({k}={fmt[k]!r}); that model was trained on "
                "the card's format and will score lower in this one. Leave the option out to "
                "use the card's format."
            )
    return fmt | options


def check_task_format(task: Any, models: Sequence[Any]) -> None:
    """Warn (:class:`TaskFormatWarning`) where a ready task's options differ from the format a
    model's card names for it; raise :class:`TaskFormatError` when the cards disagree."""
    config = getattr(task, "config", None)
    name = getattr(task, "name", None)
    if config is None or name is None or not dataclasses.is_dataclass(config):
        return
    fmt = card_options(name, models)
    diff = {
        k: (getattr(config, k), v)
        for k, v in fmt.items()
        if hasattr(config, k) and getattr(config, k) != v
    }
    if diff:
        labels = ", ".join(model_label(m) for m in models if _card(m) is not None)
        parts = ", ".join(f"{k}={have!r} (card: {want!r})" for k, (have, want) in diff.items())
        _warn(
            f"task {name!r} is in another prompt format than the card of {labels} names: "
            f"{parts}. Scores will be far lower than the model can do; build the task with "
            f"get_task({name!r}, model=...) or get_task({name!r}, tokenizers=[...]) to use "
            "the card's format."
        )
