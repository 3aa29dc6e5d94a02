"""The training loop: its calls, in order, on a hand-checked schedule; a resumed run equal bit
for bit to an uninterrupted one; a stopping evaluation."""

from __future__ import annotations

import copy

import pytest
import torch

from circuitlens.core.loop import LoopState, TrainLoop, due


def test_due_is_every_nth_step_and_the_last() -> None:
    assert [k for k in range(1, 11) if due(k, 4, 10)] == [4, 8, 10]
    assert [k for k in range(1, 11) if due(k, 0, 10)] == []
    assert [k for k in range(1, 4) if due(k, 1, 3)] == [1, 2, 3]


class Quadratic:
    """Least squares on fixed batches by SGD: a loop whose every value is checkable."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.w = torch.zeros(3, requires_grad=True)
        self.data = [
            (torch.randn(4, 3, generator=g), torch.randn(4, generator=g)) for _ in range(7)
        ]
        self.opt = torch.optim.SGD([self.w], lr=0.1)
        self.calls: list[tuple[str, int]] = []

    def batches(self, step: int):
        self.calls.append(("batch", step))
        return self.data[step - 1]

    def loss(self, batch, step: int) -> dict[str, torch.Tensor]:
        self.calls.append(("loss", step))
        x, y = batch
        return {"loss": ((x @ self.w - y) ** 2).mean()}

    def update(self, loss: torch.Tensor) -> None:
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()

    def evaluate(self, row: dict[str, float], bar) -> bool:
        self.calls.append(("eval", int(row["step"])))
        row["w0"] = float(self.w[0].detach())
        return False

    def checkpoint(self, state: LoopState) -> None:
        self.calls.append(("ckpt", state.step))
        self.saved = (
            self.w.detach().clone(),
            copy.deepcopy(self.opt.state_dict()),
            copy.deepcopy(state),
        )

    def loop(self, steps: int = 7, **kw) -> TrainLoop:
        return TrainLoop(
            steps=steps, batches=self.batches, loss=self.loss, update=self.update,
            row=lambda parts, step: {"step": step, "loss": parts["loss"].item()},
            evaluate=self.evaluate, eval_every=3, checkpoint=self.checkpoint,
            checkpoint_every=2, **kw,
        )  # fmt: skip


def test_the_calls_come_in_order_on_the_schedule() -> None:
    q = Quadratic()
    state = q.loop().run(progress=False)
    assert state.step == 7 and [r["step"] for r in state.history] == list(range(1, 8))
    evals = [k for kind, k in q.calls if kind == "eval"]
    ckpts = [k for kind, k in q.calls if kind == "ckpt"]
    assert evals == [3, 6, 7] and ckpts == [2, 4, 6, 7]
    # each step: its batch, then its loss; an evaluation before that step's checkpoint
    assert q.calls[:5] == [("batch", 1), ("loss", 1), ("batch", 2), ("loss", 2), ("ckpt", 2)]
    assert q.calls[-3:] == [("loss", 7), ("eval", 7), ("ckpt", 7)]
    assert "w0" in state.history[2] and "w0" not in state.history[0]
    # the rows' losses are the slow obvious computation's: SGD by hand on the same batches
    w = torch.zeros(3)
    for (x, y), row in zip(q.data, state.history, strict=True):
        assert row["loss"] == pytest.approx(float(((x @ w - y) ** 2).mean()), rel=1e-6)
        w = w - 0.1 * (2 / len(y)) * x.T @ (x @ w - y)
    torch.testing.assert_close(q.w.detach(), w)


def test_a_resumed_run_equals_the_uninterrupted_one() -> None:
    straight = Quadratic()
    done = straight.loop().run(progress=False)
    cut = Quadratic()
    cut.loop(steps=4).run(progress=False)  # stopped after the step-4 checkpoint
    w, opt, state = cut.saved
    again = Quadratic()  # a new process: the weights in memory are the initial ones
    with torch.no_grad():
        again.w.copy_(w)
    again.opt.load_state_dict(opt)
    resumed = again.loop().run(state, progress=False)
    assert torch.equal(again.w, straight.w)
    assert resumed.step == 7
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in done.history]


def test_a_true_evaluation_stops_and_keep_evaluated_keeps_those_rows() -> None:
    q = Quadratic()
    q.evaluate = lambda row, bar: row["step"] >= 6  # type: ignore[method-assign]
    state = q.loop(keep="evaluated").run(progress=False)
    assert state.step == 6
    assert [r["step"] for r in state.history] == [3, 6]
    assert [k for kind, k in q.calls if kind == "ckpt"] == [2, 4, 6]  # the stop's step saved
