"""A data-parallel training run, launched by the distributed test under ``torchrun``:

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/distill/dp_worker.py \\
        TEACHER_DIR STUDENT_DIR OUT.pt CONDITION [CONDITION ...] [--fsdp] [--resume=DIR]

Each rank trains the same student from the same start on its shard of every batch; rank 0
saves the trained parameters and histories, per condition, to OUT.pt.
"""

from __future__ import annotations

import dataclasses
import sys

import torch
import torch.distributed as dist

from circuitlens import get_task, load_model
from circuitlens.core.types import HeadMap
from circuitlens.distill.trainer import CircuitTrainer, TrainConfig, TrainRun

TASK = dict(n_boxes=3, seed=0, n_val=16, n_test=16)
MAP = HeadMap(pairs=[("L1H3", "L2H0"), ("L0H0", "L1H1")])


def config(condition: str) -> TrainConfig:
    return TrainConfig(
        condition=condition, steps=3, batch_size=8, lr=1e-2, eval_every=0, checkpoint_every=0
    )


def run(
    teacher_dir: str,
    student_dir: str,
    conditions: list[str],
    fsdp: bool = False,
    resume_dir: str | None = None,
) -> dict:
    """Train each condition from the same start. ``fsdp``: a fresh student per condition,
    sharded by the trainer (its weights gathered whole for the comparison). ``resume_dir``:
    stop after the first step, checkpoint, and finish in a new trainer on a fresh student that
    resumes from the checkpoint."""
    from circuitlens.distill.fsdp import full

    teacher, student = load_model(teacher_dir), load_model(student_dir)
    task = get_task("entity_tracking", **TASK)
    start = {n: p.detach().clone() for n, p in student.named_parameters()}
    out = {}
    for condition in conditions:
        if fsdp:
            student = load_model(student_dir)
        with torch.no_grad():
            for n, p in student.named_parameters():
                p.copy_(start[n])
        cfg = config(condition)
        where = None if resume_dir is None else f"{resume_dir}/{condition}"
        trainer = CircuitTrainer(student, teacher, task, MAP, cfg, run=TrainRun(where, fsdp=fsdp))
        if where is not None:  # one step, a checkpoint, then a new trainer resumes from it
            trainer.teacher_outputs()
            for n, p in student.named_parameters():
                p.requires_grad_(n in trainer.masks)
            one_step = dataclasses.replace(trainer.loop(), steps=1, evaluate=None, checkpoint=None)
            with trainer.sites.capturing():
                one_step.run(trainer.state, progress=False)
            trainer.save_checkpoint()
            student = load_model(student_dir)
            trainer = CircuitTrainer(
                student, teacher, task, MAP, cfg, run=TrainRun(where, fsdp=fsdp)
            )
        history = trainer.train(False)
        out[condition] = {
            "params": {n: full(p.detach()).clone() for n, p in student.named_parameters()},
            "history": history,
            # the last step's (masked) gradients: a sum over the ranks equals one process's
            "grads": {n: full(p.grad).clone() for n, p in trainer.params.items()},
        }
    return out


def main() -> None:
    args = sys.argv[1:]
    fsdp = "--fsdp" in args
    resume = next((a.split("=", 1)[1] for a in args if a.startswith("--resume=")), None)
    teacher_dir, student_dir, path, *conditions = [a for a in args if not a.startswith("--")]
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    try:
        out = run(teacher_dir, student_dir, conditions, fsdp, resume)
        if dist.get_rank() == 0:
            torch.save(out, path)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
