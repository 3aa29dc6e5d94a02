"""Data-parallel training under torchrun (gloo, two CPU processes): the same trained slices
as one process with the same global batch, frozen slices bit for bit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from circuitlens.training import CircuitTrainer

WORKER = Path(__file__).parent / "dp_worker.py"
CONDITIONS = ["ce+align", "kd", "ce+shuffled"]


@pytest.mark.slow
def test_two_processes_train_as_one(make_llama_dir, tmp_path) -> None:
    sys.path.insert(0, str(WORKER.parent))
    import dp_worker

    teacher_dir = make_llama_dir(seed=1, n_layers=3, n_heads=4, n_kv_heads=2, d_model=32)
    student_dir = make_llama_dir(seed=2)
    out = tmp_path / "dp.pt"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        str(WORKER), str(teacher_dir), str(student_dir), str(out), *CONDITIONS,
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    parallel = torch.load(out, weights_only=False)
    single = dp_worker.run(str(teacher_dir), str(student_dir), CONDITIONS)

    from circuitlens import load_model
    from circuitlens.types import HeadMap

    student = load_model(student_dir)
    start = {n: p.detach().clone() for n, p in student.named_parameters()}
    masks = CircuitTrainer(
        student, load_model(teacher_dir), dp_worker.get_task("entity_tracking", **dp_worker.TASK),
        HeadMap(pairs=dp_worker.MAP.pairs), dp_worker.config("ce"),
    ).masks  # fmt: skip
    for condition in CONDITIONS:
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
        for ra, rb in zip(a["history"], b["history"], strict=True):
            assert ra["loss"] == pytest.approx(rb["loss"], abs=1e-5), condition
