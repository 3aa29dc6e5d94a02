"""Data-parallel training under torchrun (gloo, two CPU processes): the same trained slices
as one process with the same global batch, frozen slices bit for bit."""

from __future__ import annotations

import dataclasses
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from circuitlens.distill.trainer import CircuitTrainer, TrainRun

WORKER = Path(__file__).parent / "dp_worker.py"
CONDITIONS = ["ce+align", "kd", "ce+shuffled"]


def _worker():
    """The script torchrun runs (``dp_worker.py``, beside this file) as a module: its ``run``
    is the one-process reference."""
    spec = importlib.util.spec_from_file_location("dp_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _launch(teacher_dir, student_dir, out, conditions, *flags) -> dict:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        str(WORKER), str(teacher_dir), str(student_dir), str(out), *conditions, *flags,
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(out, weights_only=False)


def _assert_same_training(parallel: dict, single: dict, student_dir, teacher_dir, conditions):
    """The trained slices equal the one-process run's within 1e-5, the frozen entries bit for
    bit, and the losses of every step agree."""
    from circuitlens import load_model
    from circuitlens.core.types import HeadMap

    dp_worker = _worker()
    student = load_model(student_dir)
    start = {n: p.detach().clone() for n, p in student.named_parameters()}
    masks = CircuitTrainer(
        student, load_model(teacher_dir), dp_worker.get_task("entity_tracking", **dp_worker.TASK),
        HeadMap(pairs=dp_worker.MAP.pairs), dp_worker.config("ce"),
    ).masks  # fmt: skip
    for condition in conditions:
        a, b = parallel[condition], single[condition]
        moved = 0
        for n, p in b["params"].items():
            q = a["params"][n]
            mask = masks.get(n)
            if mask is None:
                assert torch.equal(q, p) and torch.equal(q, start[n]), (condition, n)
                continue
            assert torch.equal(q[~mask], p[~mask]), (condition, n)  # frozen: bit for bit
            torch.testing.assert_close(q[mask], p[mask], atol=1e-5, rtol=0)
            moved += int((q[mask] != start[n][mask]).sum())
        assert moved > 0, condition  # training did move the mapped slices
        for n, g in b["grads"].items():  # Adam hides a gradient's scale: compare them too
            torch.testing.assert_close(a["grads"][n], g, atol=1e-6, rtol=1e-4)
        for ra, rb in zip(a["history"], b["history"], strict=True):
            assert ra["loss"] == pytest.approx(rb["loss"], abs=1e-5), condition


def test_two_processes_train_as_one(make_llama_dir, tmp_path) -> None:
    dp_worker = _worker()

    teacher_dir = make_llama_dir(seed=1, n_layers=3, n_heads=4, n_kv_heads=2, d_model=32)
    student_dir = make_llama_dir(seed=2)
    parallel = _launch(teacher_dir, student_dir, tmp_path / "dp.pt", CONDITIONS)
    single = dp_worker.run(str(teacher_dir), str(student_dir), CONDITIONS)
    _assert_same_training(parallel, single, student_dir, teacher_dir, CONDITIONS)


def test_fsdp_two_processes_train_as_one_and_resume(make_llama_dir, tmp_path) -> None:
    """FSDP (the student's weights sharded over two gloo processes), interrupted after one
    step and resumed by a new trainer from its checkpoint: the same training as one process
    run straight through."""
    dp_worker = _worker()

    teacher_dir = make_llama_dir(seed=1, n_layers=3, n_heads=4, n_kv_heads=2, d_model=32)
    student_dir = make_llama_dir(seed=2)
    conditions = ["ce+align", "kd"]
    flags = ["--fsdp", f"--resume={tmp_path / 'ckpt'}"]
    parallel = _launch(teacher_dir, student_dir, tmp_path / "fsdp.pt", conditions, *flags)
    single = dp_worker.run(str(teacher_dir), str(student_dir), conditions)
    _assert_same_training(parallel, single, student_dir, teacher_dir, conditions)
    # the checkpoint is an unsharded run's: whole tensors, readable without any process group
    saved = torch.load(tmp_path / "ckpt" / "kd" / "trainer.pt", weights_only=False)
    assert all(type(t) is torch.Tensor for t in saved["params"].values())


@pytest.mark.unit  # refused before any process starts
def test_fsdp_refusals_name_the_fix(make_llama_dir) -> None:
    """fsdp=True without a process group, and with site="result" (whole W_O outside a
    forward), are refused by name before any work."""
    from circuitlens import get_task, load_model
    from circuitlens.core.types import HeadMap
    from circuitlens.core.validate import ConfigError

    dp_worker = _worker()

    teacher = load_model(make_llama_dir(seed=1, n_layers=3, n_heads=4, n_kv_heads=2, d_model=32))
    student = load_model(make_llama_dir(seed=2))
    task = get_task("entity_tracking", **dp_worker.TASK)
    pairs = HeadMap(pairs=dp_worker.MAP.pairs)
    with pytest.raises(ConfigError, match="torchrun"):
        CircuitTrainer(
            student, teacher, task, pairs, dp_worker.config("ce"), run=TrainRun(fsdp=True)
        )
    cfg = dataclasses.replace(dp_worker.config("ce+align"), site="result")
    with pytest.raises(ConfigError, match='site="z"'):
        CircuitTrainer(student, teacher, task, pairs, cfg, run=TrainRun(fsdp=True))
