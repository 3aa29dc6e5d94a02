"""The circuit trainer: train only the mapped student heads, with CE plus CKA alignment.

Loss (Wadhwa, Amir, Wallace 2025, with the CKA term averaged over pairs):
``L = L_CE + lambda * mean_pairs (1 - CKA(a_s[h_s], a_t[h_t]))`` where ``a`` is a head's
activation at a site (``site="z"``: its output ``z``, hook ``blocks.{l}.attn.hook_z``;
``site="result"``: ``z @ W_O[l, h]``, its write into the residual stream) at token positions
(``positions="last"``, ``"circuit"``: the teacher head's circuit position, or ``"tokens"``:
every non-BOS token, tokens as rows), over the examples of a batch. CKA is debiased (unbiased
HSIC) by default. The loss terms are pure functions in :mod:`circuitlens.losses`. Teacher
activations are computed once per batch under ``no_grad``. Only the mapped heads'
W_Q/W_K/W_V/W_O entries change (masks from :mod:`circuitlens.heads`): their gradients are
masked, and after every optimizer step every other entry is restored bit for bit, since
AdamW's weight decay moves zero-gradient weights.

Conditions:
- ``ce``: cross-entropy on the teacher's labels (or ``labels="gold"``), mapped heads only:
  standard distillation restricted to the same heads;
- ``ce+align`` / ``ce+rand``: CE plus the CKA term with the ablation map / the random map;
- ``ce+shuffled``: CE plus the CKA term against the teacher's activations deranged across the
  batch's examples (the content-free control: the same loss, no example-level information);
- ``align``: the CKA term alone;
- ``kd``: KL divergence to the teacher's softened logits (temperature T, scaled by T^2);
- ``full-ce``: CE with the whole student trained.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from circuitlens.cka import CKAWithNull, cka_with_null
from circuitlens.devices import check_device
from circuitlens.heads import TrainedFraction, head_parameter_masks, trained_fraction
from circuitlens.hooks import hook_layer, hooked, z_name
from circuitlens.io import atomic_torch_save
from circuitlens.losses import (
    CONDITIONS,  # noqa: F401 (re-exported)
    alignment_loss,
    cross_entropy,
    derangement,
    kd_loss,
    shuffle_generator,
    shuffled_teacher,
    total_loss,
)
from circuitlens.progress import heartbeat
from circuitlens.tasks import (
    LabelTranslator,
    PromptBatch,
    Task,
    evaluate,
    require_compatible_tokenizers,
    tokenize_prompts,
)
from circuitlens.tasks.metrics import logits_at, model_device
from circuitlens.teacher_cache import TeacherBatch, TeacherCache, teacher_batch, token_rows
from circuitlens.train_config import POSITIONS, SITES, TrainConfig  # noqa: F401 (re-exported)
from circuitlens.types import Circuit, Head, HeadMap
from circuitlens.validate import ConfigError

log = logging.getLogger(__name__)


def _at_least_float32(t: Tensor) -> Tensor:
    """``t`` in float32 if it is in a lower precision (bf16, fp16), else ``t`` itself."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


def _rank_world() -> tuple[int, int]:
    """This process's rank and the world size under ``torch.distributed`` (``(0, 1)`` when
    it is not initialised)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class CKASiteError(ValueError):
    """The CKA rows of student and teacher cannot be matched (e.g. tokens as rows with
    prompts of unequal length in tokens)."""


@dataclass
class TrainState:
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


class CircuitTrainer:
    """Trains the student's mapped heads; see the module docstring.

    Args:
        student, teacher: bridges (the teacher is only run under ``no_grad``).
        task: prompts; training batches are fresh samples that avoid the val/test prompts.
        head_map: student head -> teacher head pairs (the heads trained, and the CKA pairs).
        config: :class:`TrainConfig`.
        circuit: the teacher's circuit (used for ``positions="circuit"``).
        checkpoint_dir: where resumable checkpoints go (None: no checkpoints).
        teacher_cache: a :class:`~circuitlens.teacher_cache.TeacherCache` to share the
            teacher's outputs with other trainers (other conditions of the same seed draw the
            same batches); by default the trainer keeps its own, in memory. The teacher runs
            once over every batch of the run before the first step, never during training.
            ``False``: no cache, the teacher runs at every step (less memory: the ``kd``
            condition caches ``d_vocab`` logits per prompt).
        fsdp: under ``torch.distributed``, shard the student's weights, gradients and
            optimizer state over the processes (FSDP2; :mod:`circuitlens.fsdp`), for a student
            too large for one device. The student is sharded in place: load a fresh one per
            trainer.
    """

    def __init__(
        self,
        student: Any,
        teacher: Any,
        task: Task,
        head_map: HeadMap,
        config: TrainConfig | None = None,
        circuit: Circuit | None = None,
        checkpoint_dir: str | Path | None = None,
        teacher_cache: TeacherCache | None | bool = None,
        fsdp: bool = False,
    ) -> None:
        self.student, self.teacher, self.task = student, teacher, task
        self.fsdp = fsdp
        if teacher_cache is True or teacher_cache is None:
            teacher_cache = TeacherCache()
        self.teacher_cache: TeacherCache | None = teacher_cache or None
        self.head_map, self.config, self.circuit = head_map, config or TrainConfig(), circuit
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        cfg = self.config
        if cfg.uses_cka and not len(head_map):
            raise ValueError("the CKA conditions need a head map with at least one pair")
        if cfg.positions == "circuit" and circuit is None:
            raise ValueError('positions="circuit" needs the circuit: pass circuit=...')
        from circuitlens.models import model_facts

        fs, ft = model_facts(student), model_facts(teacher)
        if cfg.dtype == "bfloat16":  # a GPU without bf16 is named before any work
            check_device(model_device(student), torch.bfloat16)
        for s, t in head_map.pairs:
            s.check(fs.n_layers, fs.n_heads)
            t.check(ft.n_layers, ft.n_heads)
        params = dict(student.named_parameters())
        if cfg.cond.trains_all:
            self.masks = {n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()}
        else:
            self.masks = head_parameter_masks(student, head_map.student_heads, kv=cfg.kv)
        self.fraction: TrainedFraction = trained_fraction(
            student,
            [] if cfg.cond.trains_all else head_map.student_heads,
            self.masks,
            kv=cfg.kv,
        )
        if cfg.cond.trains_all:
            self.fraction = dataclasses.replace(
                self.fraction, heads=fs.n_total_heads, heads_touched=fs.n_total_heads
            )
        # a cross-tokenizer pair (another model family): the teacher's labels cross by text
        self.translate: LabelTranslator | None = None
        if not require_compatible_tokenizers(
            teacher, student, conditions=[cfg.condition], positions=cfg.positions
        ):
            self.translate = LabelTranslator(teacher, student)
        self.rank_world = _rank_world()
        if self.rank_world[1] > 1 and cfg.batch_size % self.rank_world[1]:
            raise ConfigError(
                f"data-parallel training splits each batch of {cfg.batch_size} over "
                f"{self.rank_world[1]} processes: make batch_size a multiple of the world size"
            )
        if fsdp:
            if cfg.site == "result":
                raise ConfigError(
                    'fsdp=True cannot use site="result": it reads whole W_O weights outside '
                    'a forward pass, and a sharded student holds only a part; use site="z"'
                )
            from circuitlens.fsdp import shard_student

            # the masks were derived on the whole model; shard them like their weights
            self.masks = shard_student(student, self.masks)
            params = dict(student.named_parameters())
        self.params = {n: params[n] for n in self.masks}
        self.frozen = {n: p.detach().clone() for n, p in self.params.items()}
        self.opt = torch.optim.AdamW(
            list(self.params.values()), lr=cfg.lr, weight_decay=cfg.weight_decay
        )
        self.rng = random.Random(f"train:{cfg.seed}")
        self.heldout = task.heldout_texts()
        # every step's prompts, drawn up front (the same draws, in the same order, as one per
        # step): the teacher's outputs for all of them come from one cached pass
        self.schedule = [
            task.sample(self.rng, cfg.batch_size, exclude=self.heldout) for _ in range(cfg.steps)
        ]
        self._teacher_batches: list[TeacherBatch] | None = None
        self.state = TrainState()
        self._saved: dict[int, Tensor] = {}
        self._hooks_on = False
        self._capture = cfg.uses_cka

    # -- one batch ---------------------------------------------------------------------------
    @contextmanager
    def _capturing(self) -> Iterator[None]:
        """Hooks that keep the student's z of the mapped layers; installed once for a whole
        training loop (adding hooks to a bridge costs more than a tiny model's step), and only
        while the current condition (or a CKA measurement) needs them."""
        if self._hooks_on or not self._capture:
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

    def _position_names(self) -> list[str]:
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
        names = set(self._position_names())
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

    def _rows(self, batch: PromptBatch, model: Any) -> list[Tensor]:
        """Per pair, the token index of each row: ``[n_examples, rows]``."""
        self._check_rows(batch)
        return [token_rows(batch, model, name) for name in self._position_names()]

    def _site(self, model: Any, z: Tensor, rows: Tensor, layer: int, head: int) -> Tensor:
        """``z [batch, pos, head_index, d_head]`` of one head at ``rows [batch, r]``:
        ``[batch, r, d_head]`` (site z) or ``[batch, r, d_model]`` (site result)."""
        rows = rows.to(z.device)
        picked = z[torch.arange(z.shape[0], device=z.device)[:, None], rows, head]
        return self._site_rows(model, picked, Head(layer, head))

    def _site_rows(self, model: Any, picked: Tensor, head: Head) -> Tensor:
        """One head's ``z`` rows ``[batch, r, d_head]`` at the config's site."""
        if self.config.site == "result":
            w = model.W_O[head.layer, head.head]  # [d_head, d_model]
            picked = picked.to(w.device) @ w.to(picked.dtype)
        return picked

    def _teacher_request(self) -> dict[str, Any]:
        layers = sorted({t.layer for _, t in self.head_map.pairs})
        return {
            "layers": layers,
            "positions": sorted(set(self._position_names())) if layers else [],
            "logits": self.config.cond.compares_logits,
        }

    def teacher_outputs(self, progress: bool = False) -> list[TeacherBatch]:
        """The teacher's outputs for every step's batch (from the cache, or one pass)."""
        if self.teacher_cache is None:
            raise ValueError("this trainer runs without a teacher cache (teacher_cache=False)")
        if self._teacher_batches is None:
            self._teacher_batches = self.teacher_cache.get(
                self.teacher, self.schedule, progress=progress, **self._teacher_request()
            )
        return self._teacher_batches

    def _teacher(self, prompts: list, step: int | None) -> tuple[PromptBatch, TeacherBatch]:
        """The teacher's batch (tokenized) and outputs: step ``step``'s from the cache, or the
        held-out prompts' (cached as one batch too)."""
        tb = tokenize_prompts(self.teacher, prompts)
        if (
            self._teacher_batches is not None
            and step is not None
            and 1 <= step <= len(self.schedule)
            and self.schedule[step - 1] == prompts
        ):
            out = self._teacher_batches[step - 1]
        elif self.teacher_cache is None:
            out = teacher_batch(
                self.teacher, tb.to(model_device(self.teacher)), **self._teacher_request()
            )
        else:
            (out,) = self.teacher_cache.get(self.teacher, [prompts], **self._teacher_request())
        return tb, out

    def _forward(
        self, prompts: list, step: int | None = None
    ) -> tuple[Tensor, PromptBatch, PromptBatch, dict, TeacherBatch]:
        s_last, sb, saved = self._student(prompts)
        tb, tout = self._teacher(prompts, step)
        return s_last, sb, tb, saved, tout

    def _student(self, prompts: list) -> tuple[Tensor, PromptBatch, dict[int, Tensor]]:
        """The student's answer-position logits, its batch and the mapped layers' z."""
        dev = model_device(self.student)
        sb = tokenize_prompts(self.student, prompts).to(dev)
        bf16 = self.config.dtype == "bfloat16"
        with self._capturing(), torch.autocast(dev.type, torch.bfloat16, enabled=bf16):
            self._saved.clear()
            s_last = logits_at(self.student, sb.tokens, sb.positions["last"])
        return s_last, sb, dict(self._saved)

    def _pair_activations(
        self, sb: PromptBatch, tb: PromptBatch, saved: dict[int, Tensor], tout: TeacherBatch
    ) -> tuple[Tensor, Tensor]:
        """Student and teacher activations of every pair: ``[pair, n_examples, rows, p]``."""
        s_rows, t_rows = self._rows(sb, self.student), self._rows(tb, self.teacher)
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
                    for (_, t), name in zip(
                        self.head_map.pairs, self._position_names(), strict=True
                    )
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
        return _at_least_float32(xs), _at_least_float32(ys.to(xs.device))

    def _labels(self, tout_labels: Tensor, sb: PromptBatch, dev: torch.device) -> Tensor:
        if self.config.labels != "teacher":
            return sb.answer_ids.to(dev)
        target = tout_labels.to(dev)
        if self.translate is not None:  # the teacher's token in the student's vocabulary;
            # where its text is no single student token, the task's answer
            t = self.translate(tout_labels).to(dev)
            target = torch.where(t >= 0, t, sb.answer_ids.to(dev))
        return target

    def _losses_data_parallel(self, prompts: list, step: int) -> dict[str, Tensor]:
        """This rank's part of the loss of the global batch ``prompts`` (data parallel): the
        student runs on the rank's contiguous shard; CE and KD are shard means weighted by the
        shard's share; the CKA term is the global batch's (student activations gathered from
        every rank with autograd, the teacher's global batch from the cache), divided by the
        world size. Summing the ranks' gradients (``_step``) gives the single-process gradient.
        """
        import torch.distributed as dist
        from torch.distributed.nn.functional import all_gather

        cfg = self.config
        rank, world = self.rank_world
        k = len(prompts) // world
        s_last, sb, saved = self._student(prompts[rank * k : (rank + 1) * k])
        tb, tout = self._teacher(prompts, step)
        dev = s_last.device
        share = k / len(prompts)
        mine = slice(rank * k, (rank + 1) * k)
        out: dict[str, Tensor] = {
            "ce": cross_entropy(s_last, self._labels(tout.labels[mine], sb, dev)) * share
        }
        if cfg.cond.compares_logits:
            assert tout.logits is not None
            out["kd"] = kd_loss(s_last, tout.logits[mine].to(dev), cfg.kd_temperature) * share
        if cfg.uses_cka:
            xs, ys = self._pair_activations(sb, tb, saved, tout)
            xs = torch.cat(all_gather(xs.contiguous()), dim=1)  # [pair, global n, rows, p]
            if cfg.cond.shuffle:
                perm = derangement(len(prompts), shuffle_generator(cfg.seed, step))
                ys = shuffled_teacher(ys, perm)
            align, value = alignment_loss(
                xs.flatten(1, 2), ys.flatten(1, 2), cfg.cka, cfg.cka_estimator
            )
            out["cka"] = value.detach()
            out["align"] = align / world
        out["loss"] = total_loss(cfg.condition, cfg.lam, out["ce"], out.get("align"), out.get("kd"))
        for name in ("loss", "ce", "kd"):  # what the history shows: the global batch's values
            if name in out:
                shown = out[name].detach().clone()
                dist.all_reduce(shown)
                out[f"{name}_global"] = shown
        return out

    def losses(self, prompts: list, step: int | None = None) -> dict[str, Tensor]:
        """Loss parts on one list of prompts (student with gradients, teacher without).

        ``step`` seeds the ``ce+shuffled`` derangement (default: the trainer's next step).
        Under ``torch.distributed`` (``torchrun``), the rank's part of the global batch's loss
        (see :meth:`_losses_data_parallel`).
        """
        if self.rank_world[1] > 1:
            step = self.state.step + 1 if step is None else step
            return self._losses_data_parallel(prompts, step)
        cfg = self.config
        s_last, sb, tb, saved, tout = self._forward(prompts, step)
        dev = s_last.device
        out: dict[str, Tensor] = {"ce": cross_entropy(s_last, self._labels(tout.labels, sb, dev))}
        if cfg.cond.compares_logits:
            assert tout.logits is not None
            out["kd"] = kd_loss(s_last, tout.logits.to(dev), cfg.kd_temperature)
        if cfg.uses_cka:
            xs, ys = self._pair_activations(sb, tb, saved, tout)
            if cfg.cond.shuffle:
                step = self.state.step + 1 if step is None else step
                perm = derangement(len(prompts), shuffle_generator(cfg.seed, step))
                ys = shuffled_teacher(ys, perm)
            align, value = alignment_loss(
                xs.flatten(1, 2), ys.flatten(1, 2), cfg.cka, cfg.cka_estimator
            )
            out["cka"] = value.detach()
            out["align"] = align
        out["loss"] = total_loss(cfg.condition, cfg.lam, out["ce"], out.get("align"), out.get("kd"))
        return out

    @torch.no_grad()
    def heldout_cka(
        self, split: str = "val", n: int | None = None, n_perm: int | None = None
    ) -> CKAWithNull:
        """CKA of every mapped pair on held-out prompts, with its permutation null (the
        teacher's examples permuted), with the config's kernel, estimator, site and positions.
        Measured in every condition (does CE alone align the heads?)."""
        cfg = self.config
        if not len(self.head_map):
            raise ValueError("no mapped pairs to measure CKA on")
        prompts = self.task.split(split)[: n or cfg.cka_eval_n]
        capture = self._capture
        self._capture = True
        try:
            with torch.no_grad():  # a measurement: no graph through the student
                _, sb, tb, saved, tout = self._forward(prompts)
                xs, ys = self._pair_activations(sb, tb, saved, tout)
        finally:
            self._capture = capture
        return cka_with_null(
            xs, ys, n_perm or cfg.null_perms, seed=0, kernel=cfg.cka, estimator=cfg.cka_estimator
        )

    def mean_cka(self, split: str = "val", n: int | None = None) -> float:
        """Mean CKA of the mapped pairs on held-out prompts (no null; see :meth:`heldout_cka`)."""
        if not len(self.head_map):
            return float("nan")
        cfg = self.config
        prompts = self.task.split(split)[: n or cfg.cka_eval_n]
        capture = self._capture
        self._capture = True
        try:
            with torch.no_grad():
                _, sb, tb, saved, tout = self._forward(prompts)
                xs, ys = self._pair_activations(sb, tb, saved, tout)
                _, value = alignment_loss(
                    xs.flatten(1, 2), ys.flatten(1, 2), cfg.cka, cfg.cka_estimator
                )
        finally:
            self._capture = capture
        return float(value.float().mean())

    # -- the loop --------------------------------------------------------------------------
    def _step(self) -> dict[str, float]:
        prompts = self.schedule[self.state.step]
        parts = self.losses(prompts, step=self.state.step + 1)
        self.opt.zero_grad(set_to_none=True)
        parts["loss"].backward()
        if self.rank_world[1] > 1 and not self.fsdp:
            # data parallel: the ranks' parts sum to the full gradient (FSDP sums its shards
            # itself, in the backward pass)
            import torch.distributed as dist

            for p in self.params.values():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
        for n, p in self.params.items():
            if p.grad is not None:
                p.grad.mul_(self.masks[n])
        self.opt.step()
        with torch.no_grad():  # AdamW decays every entry: put the frozen ones back exactly
            for n, p in self.params.items():
                p.copy_(torch.where(self.masks[n], p, self.frozen[n]))
        shown = {k: parts.get(f"{k}_global", parts.get(k)) for k in ("loss", "ce", "kd")}
        row = {"step": self.state.step + 1, "loss": shown["loss"].item(), "ce": shown["ce"].item()}
        if "cka" in parts:
            row["mean_cka"] = float(parts["cka"].float().mean())
        if shown["kd"] is not None:
            row["kd"] = float(shown["kd"].detach())
        return row

    def train(self, progress: bool = True) -> list[dict[str, float]]:
        """Run (or resume) to ``config.steps``; return the history (one row per step)."""
        self.load_checkpoint()
        if self.teacher_cache is not None and self.state.step < self.config.steps:
            self.teacher_outputs(progress=progress)  # the teacher's one pass, before step 1
        flags = {n: p.requires_grad for n, p in self.student.named_parameters()}
        for n, p in self.student.named_parameters():  # no gradients for wholly frozen weights
            p.requires_grad_(n in self.masks)
        try:
            with self._capturing():
                return self._loop(progress)
        finally:
            for n, p in self.student.named_parameters():
                p.requires_grad_(flags[n])

    def _loop(self, progress: bool) -> list[dict[str, float]]:
        cfg = self.config
        bar = tqdm(
            total=cfg.steps,
            initial=self.state.step,
            desc=f"train {cfg.condition}",
            disable=not progress,
        )
        while self.state.step < cfg.steps:
            row = self._step()
            self.state.step += 1
            if cfg.eval_every and (
                self.state.step % cfg.eval_every == 0 or self.state.step == cfg.steps
            ):
                with heartbeat(bar, f"evaluating on {cfg.eval_n} val prompts"):  # a long step
                    row["val_accuracy"] = evaluate(self.student, self.task, "val", cfg.eval_n)
                if cfg.eval_cka and len(self.head_map):
                    row["val_cka"] = self.mean_cka()
                bar.set_postfix(loss=f"{row['loss']:.3f}", val=f"{row['val_accuracy']:.3f}")
            self.state.history.append(row)
            bar.update(1)
            if (
                self.checkpoint_dir is not None
                and cfg.checkpoint_every
                and (self.state.step % cfg.checkpoint_every == 0 or self.state.step == cfg.steps)
            ):
                self.save_checkpoint()
        bar.close()
        return self.state.history

    # -- checkpoints -------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        from circuitlens.fsdp import gather_state

        assert self.checkpoint_dir is not None
        params, opt = gather_state(self.params, self.opt)  # a collective when sharded
        if self.rank_world[0] != 0:  # data parallel: every rank holds the same state
            return
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(
            {
                "params": params,
                "opt": opt,
                "rng": self.rng.getstate(),
                "state": dataclasses.asdict(self.state),
                "config": dataclasses.asdict(self.config),
                "pairs": self.head_map.to_dict()["pairs"],
            },
            self.checkpoint_dir / "trainer.pt",
        )

    def load_checkpoint(self) -> bool:
        if self.checkpoint_dir is None or not (self.checkpoint_dir / "trainer.pt").exists():
            return False
        saved = torch.load(self.checkpoint_dir / "trainer.pt", weights_only=False)
        if (
            saved["config"] != dataclasses.asdict(self.config)
            or saved["pairs"] != self.head_map.to_dict()["pairs"]
        ):
            raise ValueError(
                f"the checkpoint in {self.checkpoint_dir} is from another config or "
                "head map; use another directory, or delete it to start fresh"
            )
        from circuitlens.fsdp import scatter_state

        scatter_state(self.params, self.opt, saved["params"], saved["opt"])
        self.rng.setstate(saved["rng"])
        self.state = TrainState(**saved["state"])
        log.info("resumed training at step %d", self.state.step)
        return True
