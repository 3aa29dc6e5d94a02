from __future__ import annotations

import pytest
import torch

from circuitlens import get_task, load_model
from circuitlens.distill import DistillConfig, DistillResult, distill_circuit
from circuitlens.training import TrainConfig


def test_distill_end_to_end_and_round_trip(make_llama_dir, tmp_path) -> None:
    teacher = make_llama_dir(seed=1, n_layers=3)
    student = load_model(make_llama_dir(seed=2))
    task = get_task("entity_tracking", n_boxes=3, n_val=16, n_test=32)
    fast = dict(
        sweep_n=16, test_n=32, eval_n=16, budget=2, batch_size=8, eval_every=0, progress=False
    )
    result = distill_circuit(teacher, student, task, steps=3, **fast)
    m = result.metrics
    assert m["heads_trained"] == 2 and m["head_fraction"] == pytest.approx(2 / 8)
    assert 0 < m["param_fraction"] < 0.2 and m["steps"] == 3
    # debiased CKA (the default) may fall slightly below 0; the null sd is positive
    assert -1 <= m["mean_cka_before"] <= 1 and -1 <= m["mean_cka_after"] <= 1
    assert m["cka_null_sd"] > 0 and 0 <= m["circuit_accuracy_after"] <= 1
    assert len(result.history) == 3 and result.config.train.steps == 3
    assert result.head_map.kind == "ablation" and len(result.head_map) == 2
    assert "student_accuracy_after" in result.table().index
    result.save(tmp_path / "run")
    result.save(tmp_path / "run")  # overwriting an earlier result is atomic too
    fresh = load_model(make_llama_dir(seed=2))
    back = DistillResult.load(tmp_path / "run", fresh)
    assert back.metrics == m and back.head_map.pairs == result.head_map.pairs
    assert back.config == result.config
    trained = result.student
    for (n, p), (_, q) in zip(fresh.named_parameters(), trained.named_parameters(), strict=True):
        assert torch.equal(p, q), n
    rand = distill_circuit(teacher, student, task, steps=1, condition="ce+rand", **fast)
    assert rand.head_map.kind == "random"
    assert rand.head_map.student_heads == result.head_map.student_heads
    avoided = dict(rand.head_map.config["avoid"])  # the aligned map of that call
    assert all(str(t) != avoided[str(s)] for s, t in rand.head_map.pairs)


def test_config_files(tmp_path) -> None:
    path = tmp_path / "run.toml"
    path.write_text('teacher = "zoo:a"\nbudget = 0.2\n[train]\ncondition = "ce"\nlam = 0.5\n')
    cfg = DistillConfig.load(path)
    assert cfg.budget == 0.2 and cfg.train == TrainConfig(condition="ce", lam=0.5)
    path.write_text("budgett = 0.2\n")
    with pytest.raises(
        ValueError, match=r"unknown config keys \['budgett'\]; valid keys: .*budget"
    ):
        DistillConfig.load(path)
    path.write_text("[train]\nlambda = 0.2\n")
    with pytest.raises(ValueError, match=r"unknown \[train\] keys \['lambda'\].*lam"):
        DistillConfig.load(path)
    assert DistillConfig().with_overrides(lam=3.0, budget=4).train.lam == 3.0
    with pytest.raises(ValueError, match="lam"):
        DistillConfig().with_overrides(lam=-1.0)


def test_screened_sweeps_measure_the_circuit_and_the_budget(make_llama_dir, monkeypatch) -> None:
    """With screening forced on (the zoo's 8 heads are below AUTO_SCREEN_ABOVE), the teacher's
    sweep measures the circuit's heads and the student's at least the budget's heads, and the
    measured heads carry intervals."""
    import circuitlens.ablation as ablation
    from circuitlens.distill import sweeps
    from circuitlens.types import Circuit

    monkeypatch.setattr(ablation, "AUTO_SCREEN_ABOVE", 0)
    teacher = load_model(make_llama_dir(seed=1, n_layers=3))
    student = load_model(make_llama_dir(seed=2))
    task = get_task("entity_tracking", n_boxes=3, n_test=16)
    circuit = Circuit({"A": ["L0H0", "L2H3"]})
    cfg = DistillConfig(sweep_n=16, budget=7, n_boot=50)
    t, s = sweeps(teacher, student, task, cfg, progress=False, circuit=circuit)
    assert t.config.method == "screened" and s.config.method == "screened"
    assert bool(t.exact[0, 0]) and bool(t.exact[2, 3])
    assert s.config.top == 7 and int(s.exact.sum()) >= 7
    for sw in (t, s):
        assert not bool(sw.delta_ci[:, sw.exact].isnan().any())
        assert bool(sw.delta_ci[:, ~sw.exact].isnan().all())
