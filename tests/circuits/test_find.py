from __future__ import annotations

import json

import pytest
import torch

from circuitlens import get_task, load_model
from circuitlens.circuits.find import CircuitConfig, circuit_accuracy, find_circuit
from circuitlens.core.types import Circuit


@pytest.fixture(scope="module")
def model(make_llama_dir):
    return load_model(make_llama_dir(seed=6, n_layers=3))


def test_find_circuit_runs_and_reports(model) -> None:
    task = get_task("entity_tracking", n_boxes=3, seed=0, n_test=12)
    # a random model has tiny effects: accept every negative score to exercise all groups
    circuit = find_circuit(
        model, task, CircuitConfig(n=12, top_k=2, min_effect=-1.0, prune_tol=-1.0), progress=False
    )
    assert {"A", "B", "C", "D", "E"} <= set(circuit.groups)
    assert circuit.positions["C"] == "query_label"
    assert circuit.groups["A"], "group A is empty"
    # each later group only holds heads below the group it feeds
    for group, into in (("B", "A"), ("C", "B"), ("D", "C")):
        if circuit.groups[group] and circuit.groups[into]:
            assert max(h.layer for h in circuit.groups[group]) < min(
                h.layer for h in circuit.groups[into]
            )
    assert {"full_accuracy", "circuit_accuracy", "faithfulness"} <= set(circuit.meta)
    back = Circuit.from_dict(circuit.to_dict())
    assert back.groups == circuit.groups


def test_find_circuit_follows_the_tasks_own_plan(model) -> None:
    """The path-patching plan is the task's (named positions), not hard-coded: a task that
    gives a shorter plan gets just those groups, at its positions."""
    task = get_task("entity_tracking", n_boxes=3, seed=0, n_test=12)
    task.circuit_plan = (("A", None, "logits", "last"), ("X", "A", "k", "query_label"))
    cfg = CircuitConfig(n=12, top_k=2, min_effect=-1.0, prune_tol=-1.0, complete_to=0)
    circuit = find_circuit(model, task, cfg, progress=False)
    assert set(circuit.meta["before_pruning"]) == {"A", "X"}
    assert circuit.positions == {"A": "last", "X": "query_label"}
    assert "A" in circuit.meta["scores"] and set(circuit.meta["scores"]) <= {"A", "X:k"}


def test_circuit_accuracy_with_every_head_is_the_model(model) -> None:
    from circuitlens import evaluate
    from circuitlens.circuits.find import _all_heads

    task = get_task("entity_tracking", n_boxes=3, seed=0, n_test=12)
    full = evaluate(model, task, "test", 12)
    assert circuit_accuracy(model, task, _all_heads(model), 12) == pytest.approx(full)
    before = model(task.batch(model, "test", 4).tokens)
    circuit_accuracy(model, task, [], 12)
    torch.testing.assert_close(model(task.batch(model, "test", 4).tokens), before)


def test_circuit_accuracy_with_means_given_equals_computing_them(model) -> None:
    """The circuit search computes the ablation means once and passes them in: the same
    accuracy as each call taking its own, for several head sets."""
    from circuitlens.circuits.evaluation import ablation_means
    from circuitlens.circuits.find import _all_heads

    task = get_task("entity_tracking", n_boxes=3, seed=0, n_test=12)
    means = ablation_means(model, task, "test", 12)
    heads = _all_heads(model)
    for keep in (heads, heads[:5], heads[3:4], []):
        assert circuit_accuracy(model, task, keep, 12, means=means) == circuit_accuracy(
            model, task, keep, 12
        )


def test_other_tasks_use_activation_patching(model) -> None:
    task = get_task("theory_of_mind", seed=0, n_test=8, instruction=False)
    circuit = find_circuit(
        model, task, CircuitConfig(n=8, threshold=-10.0, prune_tol=-1.0), progress=False
    )
    assert circuit.groups["heads"] and len(circuit.heads) == 12


def test_patching_plots_render(model, tmp_path) -> None:
    from circuitlens import make_metric
    from circuitlens.circuits import activation_patch, path_patch
    from circuitlens.report.figures import plot_circuit, plot_patching

    task = get_task("entity_tracking", n_boxes=3, seed=0, n_test=6)
    batch = task.batch(model, "test")
    res = activation_patch(
        model, batch.tokens, batch.corrupted_tokens, make_metric("prob", batch), progress=False
    )
    circuit = Circuit(
        {"A": ["L2H1"], "B": ["L0H3"]}, positions={"A": "last"}, meta={"faithfulness": 0.9}
    )
    fig = plot_patching(res, circuit)
    fig.write_html(tmp_path / "p.html")
    assert "L2H1" in (tmp_path / "p.html").read_text() and len(fig.layout.shapes) == 2
    assert fig.data[0].zmid == 0
    pp = path_patch(model, batch, ["L0H0", "L1H2"], ["L2H0"], via="q", progress=False)
    assert plot_patching(pp).data[0].z[1][2] == pytest.approx(float(pp.scores[1]))
    fig = plot_circuit(circuit, 3, 4)
    fig.write_html(tmp_path / "c.html")
    assert "0.90" in fig.layout.title.text and len(fig.data) == 2


@pytest.fixture(scope="module")
def zoo_teacher():
    return load_model("zoo:entity-tracking-teacher")


@pytest.mark.acceptance  # the whole search on a trained model, against the bar
def test_zoo_teacher_circuit_is_faithful(zoo_teacher) -> None:
    """The issue's bar: the circuit alone keeps at least 80% of the full model's accuracy."""
    task = get_task("entity_tracking", seed=0, n_test=100)
    circuit = find_circuit(zoo_teacher, task, CircuitConfig(n=100), progress=False)
    assert circuit.groups["A"], "no head with a direct effect on the logits"
    assert circuit.meta["faithfulness"] >= 0.8, circuit.meta
    assert len(circuit.heads) < 32 // 2  # a circuit, not the model


@pytest.mark.integration
def test_attribution_patching_ranks_heads_like_exact_patching(zoo_teacher) -> None:
    from circuitlens import make_metric
    from circuitlens.circuits import (
        activation_patch,
        atp_rank_correlation,
        attribution_patch,
    )

    batch = get_task("entity_tracking", seed=0, n_test=100).batch(zoo_teacher, "test")
    metric = make_metric("logit_diff", batch)
    exact = activation_patch(
        zoo_teacher, batch.tokens, batch.corrupted_tokens, metric, progress=False
    )
    atp = attribution_patch(zoo_teacher, batch.tokens, batch.corrupted_tokens, metric)
    assert atp_rank_correlation(atp, exact) > 0  # measured: 0.71 (docs/patching.md)


@pytest.mark.parametrize("task_name", ["entity_tracking", "theory_of_mind"])
def test_an_interrupted_search_resumes_after_its_finished_stages(
    model, tmp_path, monkeypatch, task_name
) -> None:
    """find_circuit(checkpoint_dir=...) stopped in its second stage and started again redoes
    only the unfinished stages and finds the circuit an uninterrupted search finds; a file of
    another search (another config) is refused by name."""
    import circuitlens.ablation.sweep as ablation
    import circuitlens.circuits.find as circuits

    if task_name == "entity_tracking":
        task = get_task("entity_tracking", n_boxes=3, seed=0, n_test=12)
        cfg = CircuitConfig(n=12, top_k=2, min_effect=-1.0, prune_tol=0.0, complete_to=1.0)
        name = "path_patch"
    else:
        task = get_task("theory_of_mind", seed=0, n_test=8, instruction=False)
        cfg = CircuitConfig(n=8, threshold=0.05, prune_tol=0.0, complete_to=1.0)
        name = "activation_patch"
    plain = find_circuit(model, task, cfg, progress=False)

    calls = []
    real = {"path_patch": circuits.path_patch, "activation_patch": circuits.activation_patch}
    sweep = ablation.ablation_sweep

    def counted(fn, label):
        def wrapper(*args, **kwargs):
            calls.append(label)
            if len(calls) == 2 and stop:  # stage 1 patching, stage 2 (here) the support sweep
                raise KeyboardInterrupt  # the session stops here
            return fn(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(circuits, name, counted(real[name], name))
    monkeypatch.setattr(ablation, "ablation_sweep", counted(sweep, "sweep"))
    stop = True
    with pytest.raises(KeyboardInterrupt):
        find_circuit(model, task, cfg, progress=False, checkpoint_dir=tmp_path)
    finished = len(calls) - 1
    calls.clear()
    stop = False
    resumed = find_circuit(model, task, cfg, progress=False, checkpoint_dir=tmp_path)
    total = len(calls)
    calls.clear()
    again = find_circuit(model, task, cfg, progress=False, checkpoint_dir=tmp_path)
    assert finished >= 1 and total >= 1 and not calls  # finished stages are not redone
    same = [json.dumps(c.to_dict(), sort_keys=True) for c in (plain, resumed, again)]
    assert same[0] == same[1] == same[2]  # (as text: a random model's faithfulness is NaN)
    other = CircuitConfig(**{**cfg.__dict__, "top_k": 1})
    with pytest.raises(circuits.CircuitStageError, match="another circuit search"):
        find_circuit(model, task, other, progress=False, checkpoint_dir=tmp_path)


def test_a_jsonl_task_with_a_plan_gets_path_patching(model, ioi_like_jsonl) -> None:
    """A user's own task with named positions and a plan file beside it: find_circuit follows
    the file's plan (its groups at its positions), by path patching; without the file, the
    same prompts get activation patching."""
    plan = [
        {"group": "name_movers", "via": "logits", "position": "last"},
        {"group": "s_inhibition", "into": "name_movers", "via": "q", "position": "last"},
        {"group": "induction", "into": "s_inhibition", "via": "v", "position": "S2"},
    ]
    path = ioi_like_jsonl(n=12, plan=plan)
    task = get_task("jsonl", path=path, probe_fraction=1, test_fraction=0, val_fraction=0)
    cfg = CircuitConfig(n=12, top_k=2, min_effect=-1.0, prune_tol=-1.0, complete_to=0)
    circuit = find_circuit(model, task, cfg, progress=False)
    assert circuit.meta["method"].startswith("path patching (jsonl's plan")
    assert circuit.positions == {"name_movers": "last", "s_inhibition": "last", "induction": "S2"}
    assert set(circuit.meta["before_pruning"]) == {"name_movers", "s_inhibition", "induction"}
    assert circuit.groups["name_movers"]
    assert set(circuit.meta["scores"]) <= {"name_movers", "s_inhibition:q", "induction:v"}
    bare = get_task(
        "jsonl",
        path=ioi_like_jsonl(n=12, name="bare"),
        probe_fraction=1,
        test_fraction=0,
        val_fraction=0,
    )
    assert find_circuit(model, bare, cfg, progress=False).meta["method"].startswith("activation")


def test_a_bad_plan_or_missing_prompts_fail_before_any_work(model, ioi_like_jsonl) -> None:
    from circuitlens.tasks.plan import PlanError

    task = get_task("entity_tracking", n_boxes=3, seed=0, n_test=12)
    task.circuit_plan = (("A", None, "logits", "last"), ("B", "A", "q", "S2"))
    with pytest.raises(PlanError, match=r"entity_tracking's circuit plan, step 2 .* 'S2'"):
        find_circuit(model, task, CircuitConfig(n=12), progress=False)

    def no_ablation(i, line):
        line.pop("ablation")
        return line

    path = ioi_like_jsonl(n=4, edit=no_ablation)
    bare = get_task("jsonl", path=path, probe_fraction=1, test_fraction=0, val_fraction=0)
    with pytest.raises(ValueError, match=r"has no ablation prompts: give every prompt 'ablation'"):
        find_circuit(model, bare, CircuitConfig(n=4), progress=False)


def test_the_search_reads_probe_and_reports_faithfulness_on_test(model) -> None:
    """What chooses the circuit reads the probe prompts only: other test prompts leave the
    search's scores and groups as they were, other probe prompts change the scores; the
    faithfulness it reports is the held-out test prompts' (reference: the full model's
    accuracy on them)."""
    import copy

    from circuitlens.tasks import evaluate

    cfg = CircuitConfig(n=8, top_k=2, min_effect=-1.0, prune_tol=-1.0, complete_to=0)
    task = get_task("entity_tracking", n_boxes=3, seed=0, n_test=6, n_probe=8)
    other = get_task("entity_tracking", n_boxes=3, seed=1, n_test=6, n_probe=8)
    assert not {p.text for p in task.split("probe")} & {p.text for p in task.split("test")}

    def swapped(split: str):
        t = copy.copy(task)
        t._splits = {**task._splits, split: other.split(split)}
        return t

    base = find_circuit(model, task, cfg, progress=False)
    new_test = find_circuit(model, swapped("test"), cfg, progress=False)
    new_probe = find_circuit(model, swapped("probe"), cfg, progress=False)
    assert new_test.meta["scores"] == base.meta["scores"] and new_test.groups == base.groups
    assert new_probe.meta["scores"] != base.meta["scores"]
    # faithfulness: on the test split, at most cfg.n prompts (it holds 6)
    assert base.meta["faithfulness_split"] == "test" and base.meta["faithfulness_n"] == 6
    assert base.meta["full_accuracy"] == pytest.approx(evaluate(model, task, "test", 6))
    alone = circuit_accuracy(model, task, base.heads, 6, "test")
    assert base.meta["circuit_accuracy"] == pytest.approx(alone)
