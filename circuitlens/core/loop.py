"""The training loop and nothing else: batches in, one update per step, evaluations and
checkpoints on a schedule, resumable.

What a step *is* belongs to the caller: :class:`TrainLoop` takes the batch provider, the loss
function, the update (backward and optimizer step: masked, clipped, data-parallel, whatever the
caller's optimizer does), what a step's history row records, an evaluation and a checkpoint
callback. The circuit trainer (:class:`circuitlens.distill.trainer.CircuitTrainer`) and the
real models' adapter builder (:func:`circuitlens.models.real_build.train_adapter`) both run on
it; so a resumed run takes the same steps, in the same order, as an uninterrupted one.

    loop = TrainLoop(steps=100, batches=schedule.__getitem__, loss=loss_fn, update=opt.step,
                     row=lambda parts, step: {"step": step, "loss": parts["loss"].item()})
    state = loop.run(LoopState())  # or the state a checkpoint saved
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import Tensor
from tqdm.auto import tqdm

#: the loss function's result: named parts, the one to backpropagate under ``"loss"``
Parts = dict[str, Tensor]


@dataclass
class LoopState:
    """How far a run got: the steps taken and one history row per recorded step."""

    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


def due(step: int, every: int, last: int) -> bool:
    """Whether ``step`` (1-based, just taken) is an ``every``-th one or the ``last``
    (``every=0``: never)."""
    return bool(every) and (step % every == 0 or step == last)


@dataclass
class TrainLoop:
    """Runs ``steps`` steps: for step ``k`` (1-based), ``loss(batches(k), k)`` gives the parts,
    ``update(parts["loss"])`` takes the optimizer step, ``row(parts, k)`` the history row.

    Args:
        steps: the last step.
        batches: step -> that step's batch (the provider: a schedule drawn up front, a sampler).
        loss: (batch, step) -> the loss parts; ``"loss"`` is backpropagated.
        update: the optimizer step on the loss (zero grads, backward, step).
        row: (parts, step) -> the step's history row.
        evaluate: called with the row (every ``eval_every``-th step and the last) and the
            progress bar; it may add to the row; a true result ends the run there.
        checkpoint: called with the state every ``checkpoint_every``-th step and the last.
        keep: which rows the history keeps: ``"every"`` step's, or only the ``"evaluated"``.
        desc: the progress bar's label.
    """

    steps: int
    batches: Callable[[int], Any]
    loss: Callable[[Any, int], Parts]
    update: Callable[[Tensor], None]
    row: Callable[[Parts, int], dict[str, float]]
    evaluate: Callable[[dict[str, float], Any], bool | None] | None = None
    eval_every: int = 0
    checkpoint: Callable[[LoopState], None] | None = None
    checkpoint_every: int = 0
    keep: Literal["every", "evaluated"] = "every"
    desc: str = "train"

    def run(self, state: LoopState | None = None, progress: bool = True) -> LoopState:
        """Take the steps from ``state.step + 1`` to ``steps`` (or to a stopping evaluation);
        return the state (the same object, updated)."""
        state = state if state is not None else LoopState()
        bar = tqdm(total=self.steps, initial=state.step, desc=self.desc, disable=not progress)
        try:
            while state.step < self.steps:
                k = state.step + 1
                parts = self.loss(self.batches(k), k)
                self.update(parts["loss"])
                row = self.row(parts, k)
                state.step = k
                evaluated = self.evaluate is not None and due(k, self.eval_every, self.steps)
                stop = bool(self.evaluate(row, bar)) if evaluated else False
                if evaluated or self.keep == "every":
                    state.history.append(row)
                bar.update(1)
                if self.checkpoint is not None and due(k, self.checkpoint_every, self.steps):
                    self.checkpoint(state)
                if stop:
                    break
        finally:
            bar.close()
        return state
