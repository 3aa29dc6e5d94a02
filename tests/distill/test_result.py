"""A saved result reads back bit for bit, or fails naming the damaged file: never a model or a
metric that silently differs from the one measured (issue 39)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from circuitlens import load_model
from circuitlens.ablation.result import AblationResult
from circuitlens.core.types import HeadMap
from circuitlens.distill.config import DistillConfig
from circuitlens.distill.masks import head_parameter_masks
from circuitlens.distill.result import DELTA_FILE, SUMS_FILE, DistillResult, ResultIntegrityError

STUDENT = "zoo:entity-tracking-student"


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[DistillResult, object]:
    """A zoo student with two heads "trained" (moved at random) saved as a result, as
    ``distill_circuit`` returns one (the same ``save``; no training, so the test is fast):
    (the result, its directory)."""
    student = load_model(STUDENT)
    heads = ["L0H1", "L1H0"]
    masks = head_parameter_masks(student, heads)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in student.named_parameters():
            if n in masks:
                p[masks[n]] += torch.randn(int(masks[n].sum()), generator=g)
    n_layers, n_heads = student.cfg.n_layers, student.cfg.n_heads
    sweep = AblationResult(0.5, 0.5, torch.rand(n_layers, n_heads), torch.rand(n_layers, n_heads))
    result = DistillResult(
        student=student,
        head_map=HeadMap([(h, h) for h in heads], [0.1, 0.2]),
        circuit=None,
        teacher_sweep=sweep,
        student_sweep=sweep,
        history=[{"loss": 1.0}],
        metrics={"student_accuracy_after": 0.5, "steps": 1},
        config=DistillConfig(),
        student_spec=STUDENT,
        masks=masks,
    )
    out = tmp_path_factory.mktemp("zoo") / "result"
    result.save(out)
    return result, out


def _same_student(a: DistillResult, b: DistillResult) -> None:
    pairs = zip(a.student.named_parameters(), b.student.named_parameters(), strict=True)
    for (n, p), (_, q) in pairs:
        assert torch.equal(p, q), n


def test_an_intact_result_loads_bit_for_bit_and_sha256sum_checks_it(saved) -> None:
    import subprocess

    result, out = saved
    back = DistillResult.load(out)
    _same_student(back, result)
    assert back.metrics == result.metrics
    listed = {line.split("  ")[1] for line in (out / SUMS_FILE).read_text().splitlines()}
    parts = ["metrics", "head_map", "circuit", "teacher_sweep", "student_sweep", "history"]
    assert listed == {DELTA_FILE, "config.json", *(f"{p}.json" for p in parts)}
    if shutil.which("sha256sum"):  # the standard tool checks it by hand
        subprocess.run(["sha256sum", "-c", "--quiet", SUMS_FILE], cwd=out, check=True)


@pytest.mark.parametrize("tensor", ["block", "i0"])
def test_flipped_bytes_in_the_delta_are_a_named_error(saved, tmp_path, tensor, flip) -> None:
    _, out = saved
    damaged = tmp_path / "result"
    shutil.copytree(out, damaged)
    from safetensors import safe_open

    with safe_open(str(damaged / DELTA_FILE), framework="pt") as f:
        name = next(k for k in f.keys() if k.endswith(f"::{tensor}"))  # noqa: SIM118
    flip(damaged / DELTA_FILE, name, n=16)
    with pytest.raises(ResultIntegrityError, match=rf"{DELTA_FILE} is damaged.*same --out") as e:
        DistillResult.load(damaged)
    assert str(damaged / DELTA_FILE) in str(e.value) and isinstance(e.value, ValueError)
    # without the result's SHA256SUMS the delta's own checksums still catch it
    (damaged / SUMS_FILE).unlink()
    with pytest.raises(ResultIntegrityError, match=rf"{name}.*differs from its sha256"):
        DistillResult.load(damaged)


def test_a_changed_metric_is_a_named_error(saved, tmp_path) -> None:
    result, out = saved
    damaged = tmp_path / "result"
    shutil.copytree(out, damaged)
    metrics = dict(result.metrics, student_accuracy_after=0.99)
    (damaged / "metrics.json").write_text(json.dumps(metrics, indent=1))
    with pytest.raises(ResultIntegrityError, match=r"metrics\.json is damaged.*SHA256SUMS"):
        DistillResult.load(damaged)


def test_a_result_saved_before_checksums_loads_with_a_note(saved, tmp_path, caplog) -> None:
    from safetensors.torch import load_file, save_file

    from circuitlens.core.deltas import CHECKSUMS

    result, out = saved
    old = tmp_path / "result"
    shutil.copytree(out, old)
    (old / SUMS_FILE).unlink()
    from safetensors import safe_open

    with safe_open(str(old / DELTA_FILE), framework="pt") as f:
        meta = {k: v for k, v in f.metadata().items() if k != CHECKSUMS}
    save_file(load_file(old / DELTA_FILE), old / DELTA_FILE, metadata=meta)
    with caplog.at_level("INFO"):
        back = DistillResult.load(old)
    assert "saved before results carried checksums" in caplog.text
    assert "before deltas carried checksums" in caplog.text
    _same_student(back, result)
