"""What the CKA term compares: each mapped pair's student and teacher head at the trainer's
site and positions (:class:`HeadSites`, used by
:class:`circuitlens.distill.trainer.CircuitTrainer`).

``site="z"``: a head's output ``z`` (hook ``blocks.{l}.attn.hook_z``); ``site="result"``:
``z @ W_O[l, h]``, its write into the residual stream. Rows: the ``last`` token, the teacher
head's circuit position (``positions="circuit"``) or every token (``"tokens"``). The student's
``z`` of the mapped layers is kept by hooks installed once for a whole training loop; the
teacher's comes from its cached outputs (:mod:`circuitlens.distill.teacher_cache`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from circuitlens.core.hooks import hook_layer, hooked, z_name
from circuitlens.core.types import Circuit, Head, HeadMap, Model
from circuitlens.distill.teacher_cache import TeacherBatch, token_rows
from circuitlens.distill.train_config import TrainConfig
from circuitlens.tasks import PromptBatch, Task, tokenize_prompts
from circuitlens.tasks.metrics import logits_at, model_device


class CKASiteError(ValueError):
    """The CKA rows of student and teacher cannot be matched (e.g. tokens as rows with
    prompts of unequal length in tokens)."""


def at_least_float32(t: Tensor) -> Tensor:
    """``t`` in float32 if it is in a lower precision (bf16, fp16), else ``t`` itself."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


class HeadSites:
    """The mapped pairs' activations: the student's forward with its mapped layers' ``z``
    kept, and both models' rows at the config's site and positions.

    ``capture``: whether the student's forwards keep ``z`` (the CKA conditions, and every
    CKA measurement while :meth:`measuring`)."""

    def __init__(
        self,
        student: Model,
        teacher: Model,
        task: Task,
        head_map: HeadMap,
        config: TrainConfig,
        circuit: Circuit | None,
    ) -> None:
        self.student, self.teacher, self.task = student, teacher, task
        self.head_map, self.config, self.circuit = head_map, config, circuit
        self.capture = config.uses_cka
        self._saved: dict[int, Tensor] = {}
        self._hooks_on = False

    @contextmanager
    def capturing(self) -> Iterator[None]:
        """Hooks that keep the student's z of the mapped layers; installed once for a whole
        training loop (adding hooks to a bridge costs more than a tiny model's step), and only
        while the current condition (or a CKA measurement) needs them."""
        if self._hooks_on or not self.capture:
            yield
            return

        def keep(z: Tensor, hook: Any) -> None:
            self._saved[hook_layer(hook)] = z

        layers = sorted({s.layer for s, _ in self.head_map.pairs})
        self._hooks_on = True
        try:
            with hooked(self.student, [(z_name(layer), keep) for layer in layers]):
                yield
        finally:
            self._hooks_on = False

    @contextmanager
    def measuring(self) -> Iterator[None]:
        """Capture ``z`` whatever the condition (a CKA measurement), for the block."""
        capture = self.capture
        self.capture = True
        try:
            yield
        finally:
            self.capture = capture

    def position_names(self) -> list[str]:
        """Per pair, the position its CKA rows come from (``"tokens"``: every token)."""
        if self.config.positions == "tokens":
            return ["tokens"] * len(self.head_map)
        if self.config.positions == "last" or self.circuit is None:
            return ["last"] * len(self.head_map)
        names = [self.circuit.position_of(t) for _, t in self.head_map.pairs]
        known = getattr(self.task, "position_names", None)
        for (_, t), name in zip(self.head_map.pairs, names, strict=True):
            if known and name not in known:
                raise ValueError(
                    f"the circuit puts {t} at position {name!r}, which task "
                    f"{self.task.name!r} does not define ({sorted(known)})"
                )
        return names

    def _check_rows(self, batch: PromptBatch) -> None:
        names = set(self.position_names())
        if "tokens" in names:
            last = batch.positions["last"]
            if bool((last != last[0]).any()):
                raise CKASiteError(
                    'positions="tokens" makes every token a row and needs prompts of equal '
                    f"length in tokens (got {int(last.min()) + 1}..{int(last.max()) + 1}); use "
                    'positions="last" or a task whose prompts have one length'
                )
        missing = sorted(names - {"tokens"} - set(batch.positions))
        if missing:
            raise ValueError(
                f"the circuit puts heads at position(s) {missing}, which task "
                f"{self.task.name!r} does not define ({sorted(batch.positions)})"
            )

    def rows(self, batch: PromptBatch, model: Model) -> list[Tensor]:
        """Per pair, the token index of each row: ``[n_examples, rows]``."""
        self._check_rows(batch)
        return [token_rows(batch, model, name) for name in self.position_names()]

    def _site(self, model: Model, z: Tensor, rows: Tensor, layer: int, head: int) -> Tensor:
        """``z [batch, pos, head_index, d_head]`` of one head at ``rows [batch, r]``:
        ``[batch, r, d_head]`` (site z) or ``[batch, r, d_model]`` (site result)."""
        rows = rows.to(z.device)
        picked = z[torch.arange(z.shape[0], device=z.device)[:, None], rows, head]
        return self._site_rows(model, picked, Head(layer, head))

    def _site_rows(self, model: Model, picked: Tensor, head: Head) -> Tensor:
        """One head's ``z`` rows ``[batch, r, d_head]`` at the config's site."""
        if self.config.site == "result":
            w = model.W_O[head.layer, head.head]  # [d_head, d_model]
            picked = picked.to(w.device) @ w.to(picked.dtype)
        return picked

    def student_forward(self, prompts: list) -> tuple[Tensor, PromptBatch, dict[int, Tensor]]:
        """The student's answer-position logits, its batch and the mapped layers' z."""
        dev = model_device(self.student)
        sb = tokenize_prompts(self.student, prompts).to(dev)
        bf16 = self.config.dtype == "bfloat16"
        with self.capturing(), torch.autocast(dev.type, torch.bfloat16, enabled=bf16):
            self._saved.clear()
            s_last = logits_at(self.student, sb.tokens, sb.positions["last"])
        return s_last, sb, dict(self._saved)

    def pair_activations(
        self, sb: PromptBatch, tb: PromptBatch, saved: dict[int, Tensor], tout: TeacherBatch
    ) -> tuple[Tensor, Tensor]:
        """Student and teacher activations of every pair: ``[pair, n_examples, rows, p]``."""
        s_rows, t_rows = self.rows(sb, self.student), self.rows(tb, self.teacher)
        for (s, t), a, b in zip(self.head_map.pairs, s_rows, t_rows, strict=True):
            if a.shape[1] != b.shape[1]:
                raise CKASiteError(
                    f"student {s} has {a.shape[1]} rows per example and teacher {t} has "
                    f"{b.shape[1]}: with different tokenizers use positions 'last' or 'circuit'"
                )
        with torch.no_grad():
            ys = torch.stack(
                [
                    self._site_rows(self.teacher, tout.z[t.layer, name][:, :, t.head], t)
                    for (_, t), name in zip(self.head_map.pairs, self.position_names(), strict=True)
                ]
            )
        xs = torch.stack(
            [
                self._site(self.student, saved[s.layer], r, s.layer, s.head)
                for (s, _), r in zip(self.head_map.pairs, s_rows, strict=True)
            ]
        )
        # CKA in float32 at least, whatever precision the forwards ran in (bf16 autocast, a
        # bf16 teacher); a no-op in float32
        return at_least_float32(xs), at_least_float32(ys.to(xs.device))
