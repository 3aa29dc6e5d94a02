from __future__ import annotations

import json

import pytest
import torch

from circuitlens import get_task, load_model
from circuitlens.core.validate import ConfigError
from circuitlens.distill.config import DistillConfig
from circuitlens.distill.pipeline import distill_circuit
from circuitlens.distill.result import DistillResult
from circuitlens.distill.trainer import TrainConfig, TrainRun

QUIET = TrainRun(progress=False)


def test_distill_end_to_end_and_round_trip(make_llama_dir, tmp_path) -> None:
    teacher = make_llama_dir(seed=1, n_layers=3)
    student = load_model(make_llama_dir(seed=2))
    task = get_task("entity_tracking", n_boxes=3, n_val=16, n_test=32)
    fast = dict(sweep_n=16, test_n=32, eval_n=16, budget=2, batch_size=8, eval_every=0, run=QUIET)
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
    assert cfg.map.budget == 0.2 and cfg.train == TrainConfig(condition="ce", lam=0.5)
    # the composed form reads the same, and so does what to_dict writes
    path.write_text('[map]\nbudget = 0.2\n[train]\ncondition = "ce"\nlam = 0.5\n')
    assert DistillConfig.load(path) == cfg == DistillConfig.from_dict(cfg.to_dict())
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
    """With screening forced on ("auto" is exact at every size for now), the teacher's
    sweep measures the circuit's heads and the student's at least the budget's heads, and the
    measured heads carry intervals."""
    import circuitlens.ablation.screening as screening
    from circuitlens.core.types import Circuit
    from circuitlens.distill.sweeps import sweeps

    monkeypatch.setattr(screening, "AUTO_SCREEN_ABOVE", 0)
    teacher = load_model(make_llama_dir(seed=1, n_layers=3))
    student = load_model(make_llama_dir(seed=2))
    task = get_task("entity_tracking", n_boxes=3, n_test=16)
    circuit = Circuit({"A": ["L0H0", "L2H3"]})
    cfg = DistillConfig().with_overrides(sweep_n=16, budget=7, n_boot=50)
    t, s = sweeps(teacher, student, task, cfg, progress=False, circuit=circuit)
    assert t.config.method == "screened" and s.config.method == "screened"
    assert bool(t.exact[0, 0]) and bool(t.exact[2, 3])
    assert s.config.top == 7 and int(s.exact.sum()) >= 7
    for sw in (t, s):
        assert not bool(sw.delta_ci[:, sw.exact].isnan().any())
        assert bool(sw.delta_ci[:, ~sw.exact].isnan().all())


FAST = dict(sweep_n=16, test_n=32, eval_n=16, budget=2, batch_size=8, eval_every=0, run=QUIET)


def test_a_tied_student_saves_as_a_small_delta_and_loads_bit_for_bit(
    make_llama_dir, tmp_path
) -> None:
    """SmolLM2, Gemma-3 and Llama-3.2 tie their embeddings: the result stores the trained
    entries only and restores the trained student exactly (on main before deltas, safetensors'
    save_file refused the shared tensors and the whole result was lost)."""
    from safetensors.torch import load_file

    from circuitlens.core.deltas import DeltaError

    student_dir = make_llama_dir(seed=2, tie=True)
    task = get_task("entity_tracking", n_boxes=3, n_val=16, n_test=32)
    result = distill_circuit(make_llama_dir(seed=1, n_layers=3), student_dir, task, steps=2, **FAST)
    assert result.student_spec == str(student_dir)
    result.save(tmp_path / "run", full=True)
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert "student_delta.safetensors" in files and "student.safetensors" not in files
    stored = load_file(tmp_path / "run" / "student_delta.safetensors")
    n_trained = sum(int(m.sum()) for m in result.masks.values())
    assert sum(t.numel() for k, t in stored.items() if k.endswith("::block")) == n_trained
    total = sum(p.numel() for p in result.student.parameters())
    assert n_trained < 0.2 * total
    for back in (
        DistillResult.load(tmp_path / "run"),  # the student loaded from the spec it names
        DistillResult.load(tmp_path / "run", load_model(student_dir)),
        DistillResult.load(tmp_path / "run", load_model(tmp_path / "run" / "student")),
    ):
        assert back.metrics == result.metrics and back.config == result.config
        pairs = zip(back.student.named_parameters(), result.student.named_parameters(), strict=True)
        for (n, p), (_, q) in pairs:
            assert torch.equal(p, q), n
    # the full export is the model's own save_pretrained: tied weights once, a plain HF dir
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "student")
    assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()
    with pytest.raises(DeltaError, match="differ"):  # not the student the run started from
        DistillResult.load(tmp_path / "run", load_model(make_llama_dir(seed=4, tie=True)))


def test_a_failed_weight_write_keeps_the_measurements(
    make_llama_dir, tmp_path, monkeypatch
) -> None:
    import circuitlens.distill.result as distill  # DistillResult.save writes with save_delta
    from circuitlens.distill.result import ResultSaveError

    task = get_task("entity_tracking", n_boxes=3, n_val=16, n_test=32)
    result = distill_circuit(
        make_llama_dir(seed=1, n_layers=3), make_llama_dir(seed=2), task, steps=1, **FAST
    )

    def full_disk(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(distill, "save_delta", full_disk)
    with pytest.raises(ResultSaveError, match="No space left") as e:
        result.save(tmp_path / "run")
    assert str(tmp_path / "run") in str(e.value) and "checkpoint" in str(e.value)
    kept = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert kept == result.metrics  # measured values survive
    with pytest.raises(ResultSaveError, match="holds no trained weights"):
        DistillResult.load(tmp_path / "run", load_model(make_llama_dir(seed=2)))
    monkeypatch.undo()
    result.save(tmp_path / "run")  # a complete result
    monkeypatch.setattr(distill, "save_delta", full_disk)
    with pytest.raises(ResultSaveError, match="run.partial"):
        result.save(tmp_path / "run")  # never over a complete one: beside it
    assert (tmp_path / "run" / "student_delta.safetensors").is_file()
    assert (tmp_path / "run.partial" / "metrics.json").is_file()


@pytest.mark.acceptance
def test_cli_distill_rerun_after_a_failed_save_repeats_no_work(
    make_llama_dir, tmp_path, monkeypatch, capsys
) -> None:
    import circuitlens.distill.result as distill
    import circuitlens.distill.sweeps as sweeps
    from circuitlens.cli import main
    from circuitlens.distill.trainer import CircuitTrainer

    args = [
        "distill", "--teacher", str(make_llama_dir(seed=1, n_layers=3)),
        "--student", str(make_llama_dir(seed=2, tie=True)), "--task", "entity_tracking",
        "--task-option", "n_boxes=3", "--task-option", "n_test=32", "--task-option", "n_val=200",
        "--steps", "2", "--sweep-n", "16", "--test-n", "32", "--budget", "2",
        "--out", str(tmp_path / "out"), "--no-progress",
    ]  # fmt: skip
    real_save = distill.save_delta

    def broken(*_: object) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(distill, "save_delta", broken)
    assert main(args) == 1
    out = capsys.readouterr()
    assert "student_accuracy_after" in out.out  # the table came out before the failed write
    assert "Input/output error" in out.err and "without retraining" in out.err
    monkeypatch.setattr(distill, "save_delta", real_save)

    def never(*_: object, **__: object) -> None:
        raise AssertionError("the rerun repeated work")

    monkeypatch.setattr(sweeps, "sweeps", never)  # kept in the checkpoint directory
    monkeypatch.setattr(CircuitTrainer, "losses", never)  # the checkpoint is at the last step
    assert main(args) == 0
    assert "saved to" in capsys.readouterr().out
    back = DistillResult.load(tmp_path / "out" / "result")
    assert back.metrics["steps"] == 2


def test_random_heads_control_trains_as_many_random_heads(make_llama_dir) -> None:
    from circuitlens.distill.masks import head_parameter_masks

    task = get_task("entity_tracking", n_boxes=3, n_val=16, n_test=32)
    fast = FAST | {"budget": 3}
    teacher, student = make_llama_dir(seed=1, n_layers=3), make_llama_dir(seed=2)
    aligned = distill_circuit(teacher, student, task, steps=1, condition="ce", **fast)
    rand = distill_circuit(teacher, student, task, steps=1, condition="random-heads", **fast)
    assert len(rand.head_map) == len(aligned.head_map) == 3
    assert rand.metrics["heads_trained"] == 3
    want = head_parameter_masks(load_model(student), rand.head_map.student_heads)
    assert set(rand.masks) == set(want)
    assert all(torch.equal(rand.masks[n], want[n]) for n in want)  # those heads' slices only
    # matched in trained parameters (as many K/V groups as the mapped heads)
    assert rand.metrics["param_fraction"] == aligned.metrics["param_fraction"]
    # their partners come from the configured map method (cka reads z, measured by prepare)
    by_cka = distill_circuit(
        teacher, student, task, steps=1, condition="random-heads+align", map_method="cka", **fast
    )
    assert by_cka.head_map.config["method"] == "cka"
    assert by_cka.head_map.student_heads == rand.head_map.student_heads


def test_prepare_is_the_setup_distill_circuit_measures(make_llama_dir) -> None:
    """``prepare`` is distill_circuit's setup: the map it trains and the untrained references
    of its metrics are the setup's, and the setup round-trips through its dict."""
    from circuitlens.distill.pipeline import prepare
    from circuitlens.distill.setup import Setup

    teacher = load_model(make_llama_dir(seed=1, n_layers=3))
    student = load_model(make_llama_dir(seed=2))
    task = get_task("entity_tracking", n_boxes=3, n_val=16, n_test=32)
    train = TrainConfig(steps=1, batch_size=8, eval_every=0, eval_n=16)
    cfg = DistillConfig().with_overrides(sweep_n=16, test_n=32, budget=2, n_boot=0, train=train)
    setup = prepare(teacher, student, task, cfg, progress=False)
    assert Setup.from_dict(setup.to_dict()).to_dict() == setup.to_dict()
    assert setup.student_shape == (2, 4, 2) and setup.teacher_shape[0] == 3
    assert setup.student_accuracy == sum(setup.student_test_correct) / 32
    assert setup.student_format_accuracy == {} and setup.fingerprints == {}
    result = distill_circuit(teacher, student, task, cfg, run=QUIET)
    m = result.metrics
    assert result.head_map.pairs == setup.head_map.pairs
    assert m["student_accuracy_before"] == setup.student_accuracy
    assert m["teacher_accuracy"] == setup.teacher_accuracy
    assert m["circuit_accuracy_before"] == setup.student_circuit_accuracy
    assert result.teacher_sweep.delta.equal(setup.teacher_sweep.delta)


def test_map_method_chooses_the_partners_of_the_same_student_heads(make_llama_dir) -> None:
    """``map_method``: the setup's map comes from that correspondence method (the same budget
    heads of the student, other partners possibly), and equals what ``correspond_features``
    gives on the setup's own sweeps; the default is the paper's impact map; an unknown name
    is refused with the valid ones."""
    from circuitlens.distill.pipeline import prepare
    from circuitlens.mapping.features import head_z
    from circuitlens.mapping.map import correspond_features, map_heads
    from circuitlens.mapping.methods import CorrespondenceFeatures

    teacher = load_model(make_llama_dir(seed=1, n_layers=3))
    student = load_model(make_llama_dir(seed=2))
    task = get_task("entity_tracking", n_boxes=3, n_val=16, n_test=32)
    train = TrainConfig(steps=1, batch_size=8, eval_every=0, eval_n=16)
    cfg = DistillConfig().with_overrides(
        sweep_n=16, test_n=32, budget=3, n_boot=0, one_to_one=True, train=train
    )
    impact = prepare(teacher, student, task, cfg, progress=False)
    s, t = impact.student_sweep, impact.teacher_sweep
    assert impact.head_map.pairs == map_heads(s, t, budget=3, one_to_one=True).pairs
    for method in ("profile", "cka"):
        setup = prepare(
            teacher, student, task, cfg.with_overrides(map_method=method), progress=False
        )
        assert setup.head_map.config["method"] == method
        assert setup.head_map.student_heads == impact.head_map.student_heads
        assert len(set(setup.head_map.teacher_heads)) == 3  # one to one
        zs = head_z(student, task, "probe", 16) if method == "cka" else None  # what chooses
        zt = head_z(teacher, task, "probe", 16) if method == "cka" else None
        again = correspond_features(
            CorrespondenceFeatures(s, t, zs, zt), method=method, budget=3, one_to_one=True
        )
        assert setup.head_map.pairs == again.pairs
    with pytest.raises(
        ConfigError, match=r"\(given as map_method\): unknown map method 'closest'.*profile"
    ):
        cfg.with_overrides(map_method="closest")
