"""Task metrics with TransformerLens' signature (logits -> scalar), and ``evaluate``.

Every metric reads the logits at each prompt's ``last`` position and compares the first
answer token: ``accuracy`` (argmax is the answer), ``prob`` (softmax probability of the
answer) and ``logit_diff`` (answer logit minus the mean logit of the wrong answers).
``make_metric(name, batch)`` binds a metric to a batch, giving a ``logits -> scalar`` callable
for patching code; the per-example forms (``reduce=False``) return ``[batch]``. Metrics accept
full logits ``[batch, pos, d_vocab]`` or the scored position's ``[batch, d_vocab]``.

Speed: :func:`logits_at` computes the final norm and the unembedding only at the scored
positions (one per prompt) where the model allows it, instead of at every position (SmolLM2's
vocabulary is 49,152 wide); ``evaluate``, ``prompt_scores``, the sweeps and patching use it
by default.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from circuitlens.core.types import Model
from circuitlens.tasks.base import PromptBatch, Task, TaskError, tokenize_prompts
from circuitlens.tasks.formats import check_task_format


def answer_logits(
    logits: Float[Tensor, "batch pos d_vocab"] | Float[Tensor, "batch d_vocab"], batch: PromptBatch
) -> Float[Tensor, "batch d_vocab"]:
    """Logits at each prompt's last position (``[batch, d_vocab]`` logits pass through)."""
    if logits.ndim == 2:
        return logits
    rows = torch.arange(logits.shape[0], device=logits.device)
    return logits[rows, batch.positions["last"].to(logits.device)]


def accuracy(logits: Tensor, batch: PromptBatch, reduce: bool = True) -> Tensor:
    """1 where the top token at the last position is the answer's first token."""
    hit = (answer_logits(logits, batch).argmax(-1) == batch.answer_ids.to(logits.device)).float()
    return hit.mean() if reduce else hit


def answer_prob(logits: Tensor, batch: PromptBatch, reduce: bool = True) -> Tensor:
    """Softmax probability of the answer's first token at the last position."""
    probs = answer_logits(logits, batch).float().softmax(-1)
    p = probs.gather(-1, batch.answer_ids.to(logits.device)[:, None])[:, 0]
    return p.mean() if reduce else p


def logit_diff(logits: Tensor, batch: PromptBatch, reduce: bool = True) -> Tensor:
    """Answer logit minus the mean logit of the prompt's wrong answers."""
    last = answer_logits(logits, batch).float()
    wrong = batch.wrong_ids.to(logits.device)
    if wrong.shape[1] == 0:
        raise TaskError("logit_diff needs wrong answers, and this task's prompts have none")
    right = last.gather(-1, batch.answer_ids.to(logits.device)[:, None])[:, 0]
    valid = wrong >= 0
    wrong_logits = last.gather(-1, wrong.clamp(min=0)) * valid
    diff = right - wrong_logits.sum(-1) / valid.sum(-1).clamp(min=1)
    return diff.mean() if reduce else diff


METRICS: dict[str, Callable[..., Tensor]] = {
    "accuracy": accuracy,
    "prob": answer_prob,
    "logit_diff": logit_diff,
}


def _metric(name: str) -> Callable[..., Tensor]:
    if name not in METRICS:
        raise TaskError(f"unknown metric {name!r}; valid metrics: {', '.join(METRICS)}")
    return METRICS[name]


def make_metric(name: str, batch: PromptBatch, reduce: bool = True) -> Callable[[Tensor], Tensor]:
    """A ``logits -> scalar`` (or ``-> [batch]``) metric bound to ``batch``."""
    fn = _metric(name)
    return lambda logits: fn(logits, batch, reduce=reduce)


def model_logits(model: Model, tokens: Tensor, **kwargs: Any) -> Tensor:
    """Logits ``[batch, pos, d_vocab]`` of a bridge, HookedTransformer or Hugging Face model."""
    out = model(tokens, **kwargs)
    return out if isinstance(out, Tensor) else out.logits


def _hf_model(model: Model) -> Any:
    driver = getattr(model, "_driver", None)
    inner = getattr(driver, "underlying_model", None) or getattr(model, "original_model", None)
    return inner if inner is not None else model


def accepts_logits_to_keep(model: Model) -> bool:
    """Whether ``model(tokens, logits_to_keep=...)`` computes logits at chosen positions only
    (a bridge over a Hugging Face causal LM, or such a model itself; not a HookedTransformer)."""
    forward = getattr(_hf_model(model), "forward", None)
    if forward is None:
        return False
    try:
        return "logits_to_keep" in inspect.signature(forward).parameters
    except (TypeError, ValueError):
        return False


def no_logits(model: Model) -> dict[str, Any]:
    """Forward keyword arguments for a pass whose logits are not read (a caching run): the
    final norm and unembedding then run at one position instead of all."""
    return {"logits_to_keep": 1} if accepts_logits_to_keep(model) else {}


def keep_positions(
    model: Model, positions: Int[Tensor, " batch"]
) -> tuple[dict[str, Any], Callable[[Tensor], Tensor]]:
    """Forward keyword arguments that compute logits only at ``positions`` (one per prompt)
    where the model allows it, and the function that takes that forward's logits to
    ``[batch, d_vocab]``, ``logits[i, positions[i]]``: for a caller that runs the forward itself
    (``run_with_cache``)."""
    rows = torch.arange(positions.shape[0], device=positions.device)
    if not accepts_logits_to_keep(model):
        return {}, lambda logits: logits[rows, positions]
    keep = positions.unique()  # sorted: the distinct scored positions
    index = torch.searchsorted(keep, positions)
    return {"logits_to_keep": keep}, lambda logits: logits[rows, index]


def logits_at(
    model: Model, input: Tensor, positions: Int[Tensor, " batch"], **kwargs: Any
) -> Float[Tensor, "batch d_vocab"]:
    """Logits at one position per prompt, ``logits[i, positions[i]]``, computing the final norm
    and unembedding only at the positions asked for where the model allows it (Hugging Face's
    ``logits_to_keep``; the values equal the full computation's, which tests check). ``input``
    is tokens (moved to the model's device), or a residual stream with ``start_at_layer=`` in
    ``kwargs``."""
    if not input.is_floating_point():
        input = input.to(model_device(model))
    keep, gather = keep_positions(model, positions.to(input.device))
    return gather(model_logits(model, input, **keep, **kwargs))


def model_device(model: Model) -> torch.device:
    cfg_device = getattr(getattr(model, "cfg", None), "device", None)
    if cfg_device is not None:
        return torch.device(cfg_device)
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


@torch.no_grad()
def prompt_scores(
    model: Model,
    task: Task,
    split: str = "test",
    n: int | None = None,
    metric: str = "accuracy",
    batch_size: int = 64,
    tokenizer: Any = None,
) -> Float[Tensor, " n"]:
    """The metric of each of the first ``n`` prompts of ``split`` (accuracy: 1.0 / 0.0 per
    prompt, the paired data McNemar's test needs); ``evaluate`` is its mean."""
    fn = _metric(metric)
    prompts = task.split(split, n)
    device = model_device(model)
    out = []
    for start in range(0, len(prompts), batch_size):
        batch = tokenize_prompts(tokenizer or model, prompts[start : start + batch_size]).to(device)
        logits = logits_at(model, batch.tokens, batch.positions["last"])
        out.append(fn(logits, batch, reduce=False).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def evaluate(
    model: Model,
    task: Task,
    split: str = "test",
    n: int | None = None,
    metric: str = "accuracy",
    batch_size: int = 64,
    tokenizer: Any = None,
) -> float:
    """Score ``model`` on ``task``: mean ``metric`` over the first ``n`` prompts of ``split``.

    Args:
        model: a TransformerBridge, HookedTransformer or Hugging Face causal LM.
        tokenizer: only needed when ``model`` carries no tokenizer (a bare Hugging Face model).

    Returns:
        The mean metric, a float (accuracy in [0, 1]).

    Raises:
        TaskError: ``n`` below 1, or an empty split (nothing to score).
    """
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise TaskError(
            f"evaluate: n must be a whole number >= 1, or None for the whole split (got {n!r})"
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise TaskError(f"evaluate: batch_size must be a whole number >= 1 (got {batch_size!r})")
    check_task_format(task, [model])
    prompts = task.split(split, n)
    if not prompts:
        raise TaskError(
            f"evaluate: the {split} split of task {task.name!r} is empty: "
            f"{task.empty_split_hint(split)}; or score another split"
        )
    scores = prompt_scores(model, task, split, n, metric, batch_size, tokenizer)
    return float(scores.double().sum()) / len(prompts)
