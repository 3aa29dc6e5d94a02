"""The circuit trainer's one loss function: CE (or KD) plus the CKA term over the mapped pairs,
for one process or the rank's part of a data-parallel batch, and the same pairs measured on
held-out prompts.

``L = L_CE + lambda * mean_pairs (1 - CKA(a_s[h_s], a_t[h_t]))`` (the terms are the pure
functions of :mod:`circuitlens.distill.losses`; which terms a condition uses is its
:class:`~circuitlens.distill.conditions.Condition`). The student's activations come from
:class:`~circuitlens.distill.head_sites.HeadSites`, the teacher's from its
:class:`~circuitlens.distill.teacher_cache.TeacherFeed`. The loop that calls it is
:class:`circuitlens.core.loop.TrainLoop`, wired by
:class:`~circuitlens.distill.trainer.CircuitTrainer`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from circuitlens.distill.head_sites import HeadSites
from circuitlens.distill.losses import (
    alignment_loss,
    cross_entropy,
    derangement,
    kd_loss,
    shuffle_generator,
    shuffled_teacher,
    total_loss,
)
from circuitlens.distill.teacher_cache import TeacherBatch, TeacherFeed
from circuitlens.distill.train_config import TrainConfig
from circuitlens.tasks import LabelTranslator, PromptBatch


def _labels(
    cfg: TrainConfig,
    translate: LabelTranslator | None,
    tout_labels: Tensor,
    sb: PromptBatch,
    dev: torch.device,
) -> Tensor:
    """The CE targets: the teacher's top tokens (crossed by text into the student's
    vocabulary for a cross-tokenizer pair; where a text is no single student token, the
    task's answer), or the task's answers (``labels="gold"``)."""
    if cfg.labels != "teacher":
        return sb.answer_ids.to(dev)
    target = tout_labels.to(dev)
    if translate is not None:
        t = translate(tout_labels).to(dev)
        target = torch.where(t >= 0, t, sb.answer_ids.to(dev))
    return target


class CircuitLoss:
    """Loss parts of a list of prompts; see the module docstring.

    Args:
        config: the trainer's options (condition, lambda, CKA kernel and estimator, labels).
        sites: the pairs' activations (the student's captured with gradients).
        feed: the teacher's outputs per batch.
        translate: the label translator of a cross-tokenizer pair (None: one vocabulary).
        rank_world: this process's rank and the world size (``(0, 1)``: one process).
    """

    def __init__(
        self,
        config: TrainConfig,
        sites: HeadSites,
        feed: TeacherFeed,
        translate: LabelTranslator | None = None,
        rank_world: tuple[int, int] = (0, 1),
    ) -> None:
        self.config, self.sites, self.feed = config, sites, feed
        self.translate, self.rank_world = translate, rank_world

    def __call__(self, prompts: list, step: int | None, shuffle_step: int) -> dict[str, Tensor]:
        """Loss parts on one list of prompts (student with gradients, teacher without).

        ``step``: the schedule's step the prompts are (the teacher's outputs then come from the
        feed's cached pass; None: other prompts). ``shuffle_step`` seeds the ``ce+shuffled``
        derangement. Under ``torch.distributed`` (``torchrun``, data parallel), the rank's
        part of the global batch's loss: the student runs on the rank's contiguous shard; CE
        and KD are shard means weighted by the shard's share; the CKA term is the global
        batch's (student activations gathered from every rank with autograd, the teacher's
        global batch from the cache), divided by the world size. Summing the ranks' gradients
        (the optimiser's step) gives the single-process gradient.
        """
        cfg = self.config
        rank, world = self.rank_world
        k = len(prompts) // world
        mine = slice(rank * k, (rank + 1) * k)
        s_last, sb, saved = self.sites.student_forward(prompts if world == 1 else prompts[mine])
        tb, tout = self.feed.get(prompts, step)
        dev = s_last.device
        labels = tout.labels if world == 1 else tout.labels[mine]
        out: dict[str, Tensor] = {
            "ce": cross_entropy(s_last, _labels(cfg, self.translate, labels, sb, dev))
        }
        if cfg.cond.compares_logits:
            assert tout.logits is not None
            logits = tout.logits if world == 1 else tout.logits[mine]
            out["kd"] = kd_loss(s_last, logits.to(dev), cfg.kd_temperature)
        if cfg.uses_cka:
            out |= self._align(len(prompts), shuffle_step, sb, tb, saved, tout)
        if world > 1:
            for name in ("ce", "kd"):
                if name in out:
                    out[name] = out[name] * (k / len(prompts))
        out["loss"] = total_loss(cfg.condition, cfg.lam, out["ce"], out.get("align"), out.get("kd"))
        if world > 1:
            import torch.distributed as dist

            for name in ("loss", "ce", "kd"):  # what the history shows: the global batch's
                if name in out:
                    shown = out[name].detach().clone()
                    dist.all_reduce(shown)
                    out[f"{name}_global"] = shown
        return out

    def _align(
        self,
        n: int,
        shuffle_step: int,
        sb: PromptBatch,
        tb: PromptBatch,
        saved: dict[int, Tensor],
        tout: TeacherBatch,
    ) -> dict[str, Tensor]:
        """The CKA term of the batch of ``n`` prompts (the global batch's under data
        parallelism)."""
        cfg = self.config
        world = self.rank_world[1]
        xs, ys = self.sites.pair_activations(sb, tb, saved, tout)
        if world > 1:
            from torch.distributed.nn.functional import all_gather

            xs = torch.cat(all_gather(xs.contiguous()), dim=1)  # [pair, global n, rows, p]
        if cfg.cond.shuffle:
            perm = derangement(n, shuffle_generator(cfg.seed, shuffle_step))
            ys = shuffled_teacher(ys, perm)
        align, value = self._alignment(xs, ys)
        return {"cka": value.detach(), "align": align / world if world > 1 else align}

    def _alignment(self, xs: Tensor, ys: Tensor) -> tuple[Tensor, Tensor]:
        """The CKA term and the per-pair CKA of ``[pair, n, rows, p]`` activations (rows
        flattened into examples), with the config's kernel and estimator."""
        cfg = self.config
        return alignment_loss(xs.flatten(1, 2), ys.flatten(1, 2), cfg.cka, cfg.cka_estimator)

    def heldout_pairs(self, prompts: list) -> tuple[Tensor, Tensor]:
        """Both models' activations of every pair on held-out ``prompts`` (no graph)."""
        with self.sites.measuring(), torch.no_grad():  # a measurement: no graph
            _, sb, saved = self.sites.student_forward(prompts)
            tb, tout = self.feed.get(prompts, None)
            return self.sites.pair_activations(sb, tb, saved, tout)

    def mean_cka(self, prompts: list) -> float:
        """Mean CKA of the pairs on held-out ``prompts``, with the config's kernel and
        estimator."""
        xs, ys = self.heldout_pairs(prompts)
        with torch.no_grad():
            _, value = self._alignment(xs, ys)
        return float(value.float().mean())
