"""Options of the circuit trainer (:class:`TrainConfig`), validated on construction, and
where and how one run of it goes (:class:`TrainRun`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import torch

from circuitlens.core.devices import dtype_name
from circuitlens.core.validate import ConfigError, check_fields
from circuitlens.distill.conditions import Condition, get_condition
from circuitlens.distill.masks import KV_POLICIES, KVPolicy
from circuitlens.distill.teacher_cache import TeacherCache
from circuitlens.measure.cka import ESTIMATORS, KERNELS, MIN_ROWS, Estimator, Kernel

Site = Literal["z", "result"]
SITES: tuple[str, ...] = get_args(Site)
#: training precisions (:attr:`TrainConfig.dtype`)
DType = Literal["float32", "bfloat16"]
DTYPES: tuple[str, ...] = get_args(DType)
Positions = Literal["last", "circuit", "tokens"]
POSITIONS: tuple[str, ...] = get_args(Positions)
Labels = Literal["teacher", "gold"]
LABEL_SOURCES: tuple[str, ...] = get_args(Labels)
#: where an experiment's learning rate per condition comes from (:attr:`TrainConfig.lr_from`):
#: ``"first-seed"`` or the path of a pilot run's directory
FIRST_SEED = "first-seed"


def lr_grid_around(lr: float, factor: float = 2.0, n: int = 3) -> tuple[float, ...]:
    """A geometric grid of ``n`` learning rates centred on ``lr``, ``factor`` apart:
    ``lr_grid_around(2e-4)`` is ``(1e-4, 2e-4, 4e-4)``, the grid new experiment designs use
    (one step either side of the lr chosen before: enough to see which side is better)."""
    if n < 1 or factor <= 1 or lr <= 0:
        raise ConfigError(
            f"lr_grid_around needs lr > 0, factor > 1, n >= 1 (got {lr}, {factor}, {n})"
        )
    return tuple(float(lr * factor ** (i - (n - 1) / 2)) for i in range(n))


#: numeric ranges of TrainConfig's fields (types and finiteness come from the annotations)
_TRAIN_RANGES: dict[str, tuple[float | None, float | None]] = {
    "steps": (0, None),
    "batch_size": (1, None),
    "lr": (0, None),
    "weight_decay": (0, None),
    "lam": (0, None),
    "kd_temperature": (0, None),
    "eval_every": (0, None),
    "eval_n": (1, None),
    "checkpoint_every": (0, None),
    "cka_eval_n": (1, None),
    "null_perms": (1, None),
    "patience": (1, None),
    "train_prompts": (1, None),
}


@dataclass(frozen=True)
class TrainConfig:
    """Options of :class:`CircuitTrainer`.

    Attributes:
        condition: a registered condition (:mod:`circuitlens.distill.conditions`), e.g.
            ``"ce+align"``.
        steps, batch_size, lr, weight_decay: the optimisation (AdamW).
        lam: lambda, the weight of the CKA term, which is averaged over the mapped pairs
            (ours: 1.0; the paper does not give it).
        cka: kernel, ``"linear"`` or ``"rbf"`` (RBF with sigma = 0.5 x median distance).
        cka_estimator: ``"unbiased"`` (debiased CKA, the default: ~0 for unrelated features)
            or ``"biased"`` (~0.67 for unrelated 64-dim features over 32 rows).
        site: ``"z"`` (the head's output, the input of W_O) or ``"result"`` (``z @ W_O[l, h]``).
        positions: ``"last"`` (the last prompt token), ``"circuit"`` (each teacher head's
            circuit-group position, when a circuit is given) or ``"tokens"`` (every non-BOS
            token of every example is a row; prompts of equal length).
        labels: ``"teacher"`` (the teacher's top token) or ``"gold"`` (the task's answer).
        kd_temperature: T of the ``kd`` condition.
        kv: grouped K/V policy, ``"shared"`` or ``"frozen"`` (see :mod:`circuitlens.distill.masks`).
        eval_every, eval_n: validation accuracy every N steps on n prompts (0: never).
        eval_cka: at each evaluation also record the mapped pairs' mean CKA on held-out
            prompts (``val_cka``), in every condition (CE alone too: does it align the heads?).
        cka_eval_n: held-out prompts for a reported CKA (and its null).
        null_perms: permutations of the CKA null (mean and sd over them; at least 20).
        checkpoint_every: save a resumable checkpoint every N steps (needs a checkpoint dir).
        patience: stop after this many evaluations in a row without a higher validation
            accuracy than the best so far, and put back the weights of the best evaluation
            (ties: the earliest), at step ``kept_step``; ``steps`` stays the cap (and at the
            cap too the best evaluation's weights are kept). None (the default): train all
            ``steps`` and keep the last weights, as before the option existed. Needs
            ``eval_every``.
        lr_grid: learning rates an experiment tries per condition on validation
            (:func:`circuitlens.experiments.runner.run_experiment`: each condition's best kept
            validation accuracy chooses its ``lr``; ties: the smaller lr); None (the default):
            every condition trains at ``lr``. :func:`lr_grid_around` makes the usual grid.
            Read by the experiment runner, not the trainer.
        lr_from: where the runner's choice comes from: ``"first-seed"`` (train the first of
            the experiment's seeds at every grid lr, then every seed uses the choice) or the
            path of a pilot run's directory whose ``<task>/lr.json`` holds the choices (made on
            the same grid).
        seed: every random choice (batches, initial state, shuffles) follows from it.
        train_prompts: how many distinct training prompts there are: None (the default)
            draws every batch fresh from the task (none of the val/test/probe prompts), as
            before the option existed; N draws N distinct prompts once (from ``seed``, so
            conditions at one seed share them) and every batch is ``batch_size`` distinct
            prompts of those N: a limited-data regime. At least ``batch_size``.
        dtype: the precision of the student's training forward and backward:
            ``"float32"``, or ``"bfloat16"`` (autocast: matrix products in bf16, the weights
            and their AdamW state stay float32 master copies, the losses, CKA included, are
            computed in float32). Evaluation and held-out CKA always run in the model's own
            precision. Load the teacher in bf16 too (``load_model(..., dtype=torch.bfloat16)``)
            for its memory and speed. A ``torch.dtype`` is taken as its name
            (``dtype=torch.bfloat16`` is ``"bfloat16"``).
    """

    condition: str = "ce+align"
    steps: int = 200
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    lam: float = 1.0
    cka: Kernel = "linear"
    cka_estimator: Estimator = "unbiased"
    site: Site = "z"
    positions: Positions = "last"
    labels: Labels = "teacher"
    kd_temperature: float = 2.0
    kv: KVPolicy = "shared"
    eval_every: int = 50
    eval_n: int = 200
    eval_cka: bool = False
    cka_eval_n: int = 128
    null_perms: int = 20
    checkpoint_every: int = 50
    seed: int = 0
    dtype: DType | torch.dtype = "float32"
    patience: int | None = None
    lr_grid: tuple[float, ...] | list[float] | None = None
    lr_from: str = FIRST_SEED
    train_prompts: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", dtype_name(self.dtype))  # saved and compared as text
        if self.lr_grid is not None:  # a list from a file: one tuple of floats, however given
            grid = self.lr_grid
            if not isinstance(grid, list | tuple) or any(
                isinstance(g, bool) or not isinstance(g, int | float) for g in grid
            ):
                raise ConfigError(f"TrainConfig.lr_grid must be a list of numbers (got {grid!r})")
            object.__setattr__(self, "lr_grid", tuple(float(g) for g in grid))
        check_fields(self, _TRAIN_RANGES)
        self._check_choosing()
        if self.lr <= 0 or self.kd_temperature <= 0:
            raise ConfigError(
                "TrainConfig.lr and kd_temperature must be > 0 "
                f"(got {self.lr}, {self.kd_temperature})"
            )

        def bad(name: str, valid: tuple[str, ...]) -> None:
            value = getattr(self, name)
            if value not in valid:
                raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(valid)}")

        get_condition(self.condition)  # a ValueError naming the valid ones
        bad("cka", KERNELS)
        bad("cka_estimator", ESTIMATORS)
        bad("site", SITES)
        bad("positions", POSITIONS)
        bad("labels", LABEL_SOURCES)
        bad("dtype", DTYPES)
        bad("kv", KV_POLICIES)
        if self.lam < 0:
            raise ValueError(f"lam (the CKA weight) must be >= 0 (got {self.lam})")
        if self.batch_size < 4 and self.uses_cka:
            raise ValueError(
                f"CKA over a batch needs batch_size >= 4 (got {self.batch_size}); raise batch_size"
            )
        if self.steps < 0 or self.batch_size < 1:
            raise ValueError("steps must be >= 0 and batch_size >= 1")
        if self.train_prompts is not None and self.train_prompts < self.batch_size:
            raise ConfigError(
                f"TrainConfig.train_prompts ({self.train_prompts}) is below batch_size "
                f"({self.batch_size}): a batch is distinct prompts of the pool; raise "
                "train_prompts or lower batch_size"
            )
        if self.null_perms < 20:
            raise ValueError(
                f"null_perms must be >= 20 for a usable null sd (got {self.null_perms})"
            )
        if self.cka_eval_n < MIN_ROWS["unbiased"]:
            raise ValueError(f"cka_eval_n must be >= 4 held-out prompts (got {self.cka_eval_n})")

    def _check_choosing(self) -> None:
        """``patience``, ``lr_grid`` and ``lr_from``: what chooses on validation needs it."""
        if self.lr_grid is not None:
            if not self.lr_grid or any(not math.isfinite(g) or g <= 0 for g in self.lr_grid):
                raise ConfigError(
                    f"TrainConfig.lr_grid must hold learning rates > 0 (got {self.lr_grid!r})"
                )
            if len(set(self.lr_grid)) != len(self.lr_grid):
                raise ConfigError(f"TrainConfig.lr_grid repeats a value: {self.lr_grid!r}")
        if (self.patience is not None or self.lr_grid is not None) and not self.eval_every:
            raise ConfigError(
                "TrainConfig.patience and lr_grid choose on validation accuracy: set eval_every > 0"
            )
        if not self.lr_from:
            raise ConfigError(
                f"TrainConfig.lr_from must be {FIRST_SEED!r} or a pilot run's directory"
            )

    @property
    def cond(self) -> Condition:
        """The condition's registry entry (what it trains, with which terms)."""
        return get_condition(self.condition)

    @property
    def uses_cka(self) -> bool:
        return self.cond.uses_cka


@dataclass(frozen=True)
class TrainRun:
    """Where and how one training run goes, beside what it trains (:class:`TrainConfig`):
    taken by :class:`~circuitlens.distill.trainer.CircuitTrainer`,
    :func:`~circuitlens.distill.pipeline.train_condition` and
    :func:`~circuitlens.distill.pipeline.distill_circuit`. The defaults are a plain run: no
    checkpoints, the trainer's own teacher cache, one process, progress bars.

    Attributes:
        checkpoint_dir: where resumable checkpoints go (None: no checkpoints;
            :func:`~circuitlens.distill.pipeline.distill_circuit` also keeps the sweeps there,
            for a rerun).
        teacher_cache: a :class:`~circuitlens.distill.teacher_cache.TeacherCache` to share the
            teacher's outputs with other trainers (other conditions of the same seed draw the
            same batches); None (or True): the trainer keeps its own, in memory. The teacher
            runs once over every batch of the run before the first step, never during
            training. ``False``: no cache, the teacher runs at every step (less memory: the
            ``kd`` condition caches ``d_vocab`` logits per prompt).
        fsdp: under ``torch.distributed``, shard the student's weights, gradients and
            optimizer state over the processes (FSDP2; :mod:`circuitlens.distill.fsdp`), for a
            student too large for one device. The student is sharded in place: load a fresh
            one per trainer. :func:`~circuitlens.distill.pipeline.distill_circuit` refuses it
            (its student fits one device).
        progress: show progress bars (in training, unless
            :meth:`~circuitlens.distill.trainer.CircuitTrainer.train` is told otherwise; in
            the sweeps and the cost estimate of
            :func:`~circuitlens.distill.pipeline.distill_circuit`).
        circuit_only: after training, also measure the circuit-only accuracy (every student
            head outside the map mean-ablated: the reference means and the test prompts, two
            passes as long as the test accuracy's); False skips it (``circuit_accuracy`` is
            None), which changes no other measure. On the real pairs it was a third of a cell's
            time.
    """

    checkpoint_dir: str | Path | None = None
    teacher_cache: TeacherCache | None | bool = None
    fsdp: bool = False
    progress: bool = True
    circuit_only: bool = True
