"""The circuit trainer: train only the mapped student heads, with CE plus CKA alignment.

Loss (Wadhwa, Amir, Wallace 2025, with the CKA term averaged over pairs):
``L = L_CE + lambda * mean_pairs (1 - CKA(a_s[h_s], a_t[h_t]))`` where ``a`` is a head's
activation at a site (``site="z"``: its output ``z``, hook ``blocks.{l}.attn.hook_z``;
``site="result"``: ``z @ W_O[l, h]``, its write into the residual stream) at token positions
(``positions="last"``, ``"circuit"``: the teacher head's circuit position, or ``"tokens"``:
every non-BOS token, tokens as rows), over the examples of a batch. CKA is debiased (unbiased
HSIC) by default. The loss terms are pure functions in :mod:`circuitlens.distill.losses`. Teacher
activations are computed once per batch under ``no_grad``. Only the mapped heads'
W_Q/W_K/W_V/W_O entries change (masks from :mod:`circuitlens.distill.masks`): their gradients are
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

Stopping (``patience``): every evaluation's validation accuracy is compared with the best so
far; after ``patience`` evaluations in a row without a strictly higher one the run stops, and
at the end (early or at the ``steps`` cap) the weights of the best evaluation are put back
(ties: the earliest), at :attr:`CircuitTrainer.kept_step`. The best weights and the counter are
in the checkpoint, so a resumed run stops and keeps as an uninterrupted one does.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from circuitlens.core.devices import check_device, warn_slow_precision
from circuitlens.core.io import atomic_torch_save
from circuitlens.core.loop import LoopState, TrainLoop
from circuitlens.core.progress import heartbeat
from circuitlens.core.types import Circuit, HeadMap, Model
from circuitlens.core.validate import ConfigError
from circuitlens.distill.circuit_loss import CircuitLoss
from circuitlens.distill.head_sites import CKASiteError, HeadSites  # noqa: F401 (re-exported)
from circuitlens.distill.losses import CONDITIONS  # noqa: F401 (re-exported)
from circuitlens.distill.masked_optim import MaskedOptimizer
from circuitlens.distill.masks import TrainedFraction, head_parameter_masks, trained_fraction
from circuitlens.distill.teacher_cache import TeacherBatch, TeacherCache, TeacherFeed
from circuitlens.distill.train_config import (  # noqa: F401 (re-exported)
    POSITIONS,
    SITES,
    TrainConfig,
    TrainRun,
)
from circuitlens.measure.cka import CKAWithNull, cka_with_null
from circuitlens.tasks import (
    LabelTranslator,
    Task,
    evaluate,
    require_compatible_tokenizers,
)
from circuitlens.tasks.metrics import model_device

log = logging.getLogger(__name__)


def _rank_world() -> tuple[int, int]:
    """This process's rank and the world size under ``torch.distributed`` (``(0, 1)`` when
    it is not initialised)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _check_inputs(
    student: Model, teacher: Model, head_map: HeadMap, cfg: TrainConfig, circuit: Circuit | None
) -> None:
    """Refuse a trainer that cannot run, before any work."""
    from circuitlens.models.registry import model_facts

    if cfg.uses_cka and not len(head_map):
        raise ValueError("the CKA conditions need a head map with at least one pair")
    if cfg.positions == "circuit" and circuit is None:
        raise ValueError('positions="circuit" needs the circuit: pass circuit=...')
    fs, ft = model_facts(student), model_facts(teacher)
    if cfg.dtype == "bfloat16":  # a GPU without bf16 is named before any work
        warn_slow_precision(check_device(model_device(student), torch.bfloat16), "bfloat16")
    for s, t in head_map.pairs:
        s.check(fs.n_layers, fs.n_heads)
        t.check(ft.n_layers, ft.n_heads)


def _masks(
    student: Model, head_map: HeadMap, cfg: TrainConfig
) -> tuple[dict[str, Tensor], TrainedFraction]:
    """The trainable entries (the mapped heads' slices, or every entry for a condition that
    trains the whole student) and what fraction of the student they are."""
    from circuitlens.models.registry import model_facts

    if cfg.cond.trains_all:
        masks = {n: torch.ones_like(p, dtype=torch.bool) for n, p in student.named_parameters()}
        fraction = trained_fraction(student, [], masks, kv=cfg.kv)
        n = model_facts(student).n_total_heads
        return masks, dataclasses.replace(fraction, heads=n, heads_touched=n)
    masks = head_parameter_masks(student, head_map.student_heads, kv=cfg.kv)
    return masks, trained_fraction(student, head_map.student_heads, masks, kv=cfg.kv)


def _check_parallel(cfg: TrainConfig, world: int, fsdp: bool) -> None:
    if world > 1 and cfg.batch_size % world:
        raise ConfigError(
            f"data-parallel training splits each batch of {cfg.batch_size} over "
            f"{world} processes: make batch_size a multiple of the world size"
        )
    if fsdp and cfg.site == "result":
        raise ConfigError(
            'fsdp=True cannot use site="result": it reads whole W_O weights outside '
            'a forward pass, and a sharded student holds only a part; use site="z"'
        )


@dataclass
class EarlyStop:
    """Early stopping on validation accuracy (:attr:`TrainConfig.patience`): the best
    evaluation so far, and the evaluations since it.

    Attributes:
        patience: evaluations in a row without a strictly higher accuracy that stop the run.
        best: the best validation accuracy so far (-inf: none yet).
        step: the step of the best evaluation (the earliest among ties; 0: none yet).
        since: evaluations since the best one.
        stopped: whether the run has stopped early.
    """

    patience: int
    best: float = -math.inf
    step: int = 0
    since: int = 0
    stopped: bool = False

    def see(self, step: int, accuracy: float) -> bool:
        """Record one evaluation; whether it is the new best (then keep its weights)."""
        if accuracy > self.best:
            self.best, self.step, self.since = accuracy, step, 0
            return True
        self.since += 1
        self.stopped = self.since >= self.patience
        return False


class CircuitTrainer:
    """Trains the student's mapped heads; see the module docstring.

    The trainer only wires its parts and keeps their state: the batches (every step's prompts,
    drawn up front) and the teacher's outputs for them
    (:class:`~circuitlens.distill.teacher_cache.TeacherFeed`), the one loss function
    (:class:`~circuitlens.distill.circuit_loss.CircuitLoss`: the pairs' activations from
    :class:`~circuitlens.distill.head_sites.HeadSites`, the terms from
    :mod:`circuitlens.distill.losses`), the masked step
    (:class:`~circuitlens.distill.masked_optim.MaskedOptimizer`) and the checkpoint callback,
    run by the loop (:class:`~circuitlens.core.loop.TrainLoop`, :meth:`loop`).

    Args:
        student, teacher: bridges (the teacher is only run under ``no_grad``).
        task: prompts; training batches are fresh samples that avoid the val/test prompts.
        head_map: student head -> teacher head pairs (the heads trained, and the CKA pairs).
        config: :class:`TrainConfig`.
        circuit: the teacher's circuit (used for ``positions="circuit"``).
        run: where and how the run goes (:class:`TrainRun`: the checkpoint directory, a
            shared teacher cache, FSDP sharding, progress bars); None: ``TrainRun()``, no
            checkpoints, the trainer's own cache, one process.
    """

    def __init__(
        self,
        student: Model,
        teacher: Model,
        task: Task,
        head_map: HeadMap,
        config: TrainConfig | None = None,
        circuit: Circuit | None = None,
        run: TrainRun | None = None,
    ) -> None:
        self.student, self.teacher, self.task = student, teacher, task
        self.head_map, self.config, self.circuit = head_map, config or TrainConfig(), circuit
        self.run = run = run or TrainRun()
        checkpoint_dir, teacher_cache, fsdp = run.checkpoint_dir, run.teacher_cache, run.fsdp
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.fsdp = fsdp
        cfg = self.config
        _check_inputs(student, teacher, head_map, cfg, circuit)
        self.masks, self.fraction = _masks(student, head_map, cfg)
        # a cross-tokenizer pair (another model family): the teacher's labels cross by text
        self.translate: LabelTranslator | None = None
        if not require_compatible_tokenizers(
            teacher, student, conditions=[cfg.condition], positions=cfg.positions
        ):
            self.translate = LabelTranslator(teacher, student)
        self.rank_world = _rank_world()
        _check_parallel(cfg, self.rank_world[1], fsdp)
        if fsdp:
            from circuitlens.distill.fsdp import shard_student

            # the masks were derived on the whole model; shard them like their weights
            self.masks = shard_student(student, self.masks)
        params = dict(student.named_parameters())
        self.params = {n: params[n] for n in self.masks}
        self.optimizer = MaskedOptimizer(
            self.params,
            self.masks,
            cfg.lr,
            cfg.weight_decay,
            all_reduce=self.rank_world[1] > 1 and not fsdp,  # FSDP reduces its shards itself
        )
        self.rng = random.Random(f"train:{cfg.seed}")
        # every step's prompts, drawn up front (the same draws, in the same order, as one per
        # step): the teacher's outputs for all of them come from one cached pass
        heldout = task.heldout_texts()
        if cfg.train_prompts is None:
            self.schedule = [
                task.sample(self.rng, cfg.batch_size, exclude=heldout) for _ in range(cfg.steps)
            ]
        else:  # a fixed pool of distinct prompts, each batch distinct prompts of it
            pool = task.pool(self.rng, cfg.train_prompts, heldout)
            self.schedule = [self.rng.sample(pool, cfg.batch_size) for _ in range(cfg.steps)]
        if teacher_cache is True or teacher_cache is None:
            teacher_cache = TeacherCache()
        self.teacher_cache: TeacherCache | None = teacher_cache or None
        self.sites = HeadSites(student, teacher, task, head_map, cfg, circuit)
        self.feed = TeacherFeed(teacher, self.schedule, self.teacher_cache, self._request())
        self.loss = CircuitLoss(cfg, self.sites, self.feed, self.translate, self.rank_world)
        self.state = LoopState()
        self.early = None if cfg.patience is None else EarlyStop(cfg.patience)
        self.best_params: dict[str, Tensor] | None = None  # the best evaluation's weights

    @property
    def kept_step(self) -> int:
        """The step whose weights the student holds after :meth:`train`: the best validation
        evaluation's with ``patience`` (0: none evaluated yet), else the last step taken."""
        if self.early is None or self.best_params is None:
            return self.state.step
        return self.early.step

    # -- one batch ---------------------------------------------------------------------------
    def _request(self) -> dict[str, Any]:
        """What the trainer reads from the teacher: the mapped teacher heads' layers at the
        pairs' positions, and the logits where the condition compares them."""
        layers = sorted({t.layer for _, t in self.head_map.pairs})
        return {
            "layers": layers,
            "positions": sorted(set(self.sites.position_names())) if layers else [],
            "logits": self.config.cond.compares_logits,
        }

    def teacher_outputs(self, progress: bool = False) -> list[TeacherBatch]:
        """The teacher's outputs for every step's batch (from the cache, or computed now;
        training computes them a chunk of steps at a time, as it reaches them)."""
        return self.feed.all(progress)

    def losses(self, prompts: list, step: int | None = None) -> dict[str, Tensor]:
        """Loss parts on one list of prompts (:class:`~circuitlens.distill.circuit_loss.
        CircuitLoss`; under data parallelism the rank's part of the global batch's).

        ``step``: the schedule's step the prompts are (None: other prompts); it seeds the
        ``ce+shuffled`` derangement (None: the trainer's next step).
        """
        return self.loss(prompts, step, self.state.step + 1 if step is None else step)

    def _heldout_pairs(self, split: str, n: int | None) -> tuple[Tensor, Tensor]:
        """Both models' activations of every pair on held-out prompts (no graph)."""
        if not len(self.head_map):
            raise ValueError("no mapped pairs to measure CKA on")
        return self.loss.heldout_pairs(self._heldout_prompts(split, n))

    def _heldout_prompts(self, split: str, n: int | None) -> list:
        """The first ``n`` prompts of ``split`` (default ``cka_eval_n``): where CKA is measured."""
        return self.task.split(split)[: n or self.config.cka_eval_n]

    @torch.no_grad()
    def heldout_cka(
        self, split: str = "val", n: int | None = None, n_perm: int | None = None
    ) -> CKAWithNull:
        """CKA of every mapped pair on held-out prompts, with its permutation null (the
        teacher's examples permuted), with the config's kernel, estimator, site and positions.
        Measured in every condition (does CE alone align the heads?)."""
        cfg = self.config
        xs, ys = self._heldout_pairs(split, n)
        return cka_with_null(
            xs, ys, n_perm or cfg.null_perms, seed=0, kernel=cfg.cka, estimator=cfg.cka_estimator
        )

    def mean_cka(self, split: str = "val", n: int | None = None) -> float:
        """Mean CKA of the mapped pairs on held-out prompts (no null; see :meth:`heldout_cka`)."""
        if not len(self.head_map):
            return float("nan")
        return self.loss.mean_cka(self._heldout_prompts(split, n))

    # -- the loop --------------------------------------------------------------------------
    def _row(self, parts: dict[str, Tensor], step: int) -> dict[str, float]:
        """A step's history row: the loss parts (the global batch's under data parallelism)."""
        shown = {k: parts.get(f"{k}_global", parts.get(k)) for k in ("loss", "ce", "kd")}
        row = {"step": step, "loss": shown["loss"].item(), "ce": shown["ce"].item()}
        if "cka" in parts:
            row["mean_cka"] = float(parts["cka"].float().mean())
        if shown["kd"] is not None:
            row["kd"] = float(shown["kd"].detach())
        return row

    def loop(self) -> TrainLoop:
        """The loop this trainer runs (:class:`~circuitlens.core.loop.TrainLoop`): its batches
        are the schedule's (the teacher's outputs for them come from the feed), its loss
        :meth:`losses`, its update the masked optimizer's step, its checkpoint
        :meth:`save_checkpoint`."""
        cfg = self.config
        return TrainLoop(
            steps=cfg.steps,
            batches=lambda step: self.schedule[step - 1],
            loss=lambda prompts, step: self.losses(prompts, step=step),
            update=self.optimizer.step,
            row=self._row,
            evaluate=self._evaluate,
            eval_every=cfg.eval_every,
            checkpoint=None if self.checkpoint_dir is None else lambda _: self.save_checkpoint(),
            checkpoint_every=cfg.checkpoint_every,
            desc=f"train {cfg.condition}",
        )

    def train(self, progress: bool | None = None) -> list[dict[str, float]]:
        """Run (or resume) to ``config.steps``, or to an early stop (``patience``: then the
        best evaluation's weights are put back, :attr:`kept_step`); return the history (one
        row per step taken). ``progress``: progress bars (None: the run's, ``run.progress``)."""
        progress = self.run.progress if progress is None else progress
        self.load_checkpoint()
        stopped = self.early is not None and self.early.stopped
        flags = {n: p.requires_grad for n, p in self.student.named_parameters()}
        for n, p in self.student.named_parameters():  # no gradients for wholly frozen weights
            p.requires_grad_(n in self.masks)
        try:
            if not stopped:
                with self.sites.capturing():
                    self.loop().run(self.state, progress)
        finally:
            for n, p in self.student.named_parameters():
                p.requires_grad_(flags[n])
        if self.early is not None:
            if self.early.stopped and not stopped and self.checkpoint_dir is not None:
                self.save_checkpoint()  # the stop itself: a resumed run does not train on
            self._keep_best()
        return self.state.history

    def _keep_best(self) -> None:
        """Put the best evaluation's weights back (the run's end, with ``patience``)."""
        if self.best_params is None:
            return
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(self.best_params[n])
        log.info(
            "kept the weights of step %d (validation accuracy %.4f)",
            self.early.step if self.early else -1,
            self.early.best if self.early else math.nan,
        )

    def _evaluate(self, row: dict[str, float], bar: Any) -> bool:
        """Validation accuracy (and CKA) into ``row``; with ``patience``, whether to stop."""
        cfg = self.config
        with heartbeat(bar, f"evaluating on {cfg.eval_n} val prompts"):  # a long step
            row["val_accuracy"] = evaluate(self.student, self.task, "val", cfg.eval_n)
        if cfg.eval_cka and len(self.head_map):
            row["val_cka"] = self.mean_cka()
        bar.set_postfix(loss=f"{row['loss']:.3f}", val=f"{row['val_accuracy']:.3f}")
        if self.early is None:
            return False
        if self.early.see(int(row["step"]), row["val_accuracy"]):
            self.best_params = {n: p.detach().clone() for n, p in self.params.items()}
        return self.early.stopped

    # -- checkpoints -------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        assert self.checkpoint_dir is not None
        from circuitlens.distill.fsdp import full

        params, opt = self.optimizer.state()  # a collective when sharded
        best = None  # the best evaluation's weights (patience), whole: a collective too
        if self.best_params is not None:
            best = {n: full(t) for n, t in self.best_params.items()}
        if self.rank_world[0] != 0:  # data parallel: every rank holds the same state
            return
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        saved = {
            "params": params,
            "opt": opt,
            "rng": self.rng.getstate(),
            "state": dataclasses.asdict(self.state),
            "config": dataclasses.asdict(self.config),
            "pairs": self.head_map.to_dict()["pairs"],
        }
        if self.early is not None:
            saved |= {"early": dataclasses.asdict(self.early), "best": best}
        atomic_torch_save(saved, self.checkpoint_dir / "trainer.pt")

    def load_checkpoint(self) -> bool:
        if self.checkpoint_dir is None or not (self.checkpoint_dir / "trainer.pt").exists():
            return False
        saved = torch.load(self.checkpoint_dir / "trainer.pt", weights_only=False)
        # a checkpoint saved before a field existed ran as the field's default says
        config = dataclasses.asdict(TrainConfig()) | saved["config"]
        if (
            config != dataclasses.asdict(self.config)
            or saved["pairs"] != self.head_map.to_dict()["pairs"]
        ):
            raise ValueError(
                f"the checkpoint in {self.checkpoint_dir} is from another config or "
                "head map; use another directory, or delete it to start fresh"
            )
        self.optimizer.load(saved["params"], saved["opt"])
        self.rng.setstate(saved["rng"])
        self.state = LoopState(**saved["state"])
        if self.early is not None:
            from circuitlens.distill.fsdp import like

            self.early = EarlyStop(**saved["early"])
            best = saved["best"]
            self.best_params = None
            if best is not None:
                self.best_params = {n: like(best[n], p).clone() for n, p in self.params.items()}
        log.info("resumed training at step %d", self.state.step)
        return True
