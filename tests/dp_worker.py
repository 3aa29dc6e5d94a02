"""A data-parallel training run, launched by the distributed test under ``torchrun``:

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/dp_worker.py \\
        TEACHER_DIR STUDENT_DIR OUT.pt CONDITION [CONDITION ...]

Each rank trains the same student from the same start on its shard of every batch; rank 0
saves the trained parameters and histories, per condition, to OUT.pt.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist

from circuitlens import get_task, load_model
from circuitlens.training import CircuitTrainer, TrainConfig
from circuitlens.types import HeadMap

TASK = dict(n_boxes=3, seed=0, n_val=16, n_test=16)
MAP = HeadMap(pairs=[("L1H3", "L2H0"), ("L0H0", "L1H1")])


def config(condition: str) -> TrainConfig:
    return TrainConfig(
        condition=condition, steps=3, batch_size=8, lr=1e-2, eval_every=0, checkpoint_every=0
    )


def run(teacher_dir: str, student_dir: str, conditions: list[str]) -> dict:
    teacher, student = load_model(teacher_dir), load_model(student_dir)
    task = get_task("entity_tracking", **TASK)
    start = {n: p.detach().clone() for n, p in student.named_parameters()}
    out = {}
    for condition in conditions:
        with torch.no_grad():
            for n, p in student.named_parameters():
                p.copy_(start[n])
        history = CircuitTrainer(student, teacher, task, MAP, config(condition)).train(False)
        out[condition] = {
            "params": {n: p.detach().clone() for n, p in student.named_parameters()},
            "history": history,
        }
    return out


def main() -> None:
    teacher_dir, student_dir, path, *conditions = sys.argv[1:]
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    try:
        out = run(teacher_dir, student_dir, conditions)
        if dist.get_rank() == 0:
            torch.save(out, path)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
