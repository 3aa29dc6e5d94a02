"""Curves over lambda and the budget: one run per point, sharing what the points share."""

from __future__ import annotations

import json

import pytest

import circuitlens.distill.sweeps as distill
from circuitlens.experiments import ExperimentConfig
from circuitlens.experiments.curves import SweepResult, point_name, run_sweep


def tiny() -> ExperimentConfig:
    return ExperimentConfig(
        tasks=("entity_tracking",), conditions=("student", "ce", "ce+align"), seeds=(0, 1),
        use_circuit=False,
    ).with_overrides(sweep_n=16, test_n=24, steps=2, batch_size=8, eval_every=0, eval_n=16,
                     cka_eval_n=16)  # fmt: skip


def _cell(d, condition: str, seed: int) -> dict:
    return json.loads((d / "entity_tracking" / condition / f"seed{seed}" / "cell.json").read_text())


def test_lambda_points_share_the_setup_and_the_cells_lambda_does_not_enter(
    tmp_path, monkeypatch
) -> None:
    first = run_sweep(tiny(), tmp_path, "lam", [0.5], progress=False)
    a = tmp_path / point_name("lam", 0.5)
    assert first.points[0.5].config.distill.train.lam == 0.5

    def never(*_: object, **__: object) -> None:
        raise AssertionError("a lambda point recomputed the sweeps")

    monkeypatch.setattr(distill, "sweeps", never)  # the second point reuses the first's setup
    result = run_sweep(tiny(), tmp_path, "lam", [0.5, 2], progress=False)
    b = tmp_path / point_name("lam", 2)
    assert (a / "entity_tracking" / "setup.json").read_bytes() == (
        b / "entity_tracking" / "setup.json"
    ).read_bytes()
    for seed in (0, 1):
        assert _cell(a, "ce", seed) == _cell(b, "ce", seed)  # CE: lambda is not in its loss
    assert json.loads((b / "config.json").read_text())["distill"]["train"]["lam"] == 2
    df = result.frame()
    assert set(df.lam) == {0.5, 2} and set(df.condition) == {"ce", "ce+align"}
    row = df[(df.lam == 2) & (df.condition == "ce+align")].iloc[0]
    accs = [_cell(b, "ce+align", s)["accuracy"] for s in (0, 1)]
    assert row.seeds == 2 and row.accuracy == pytest.approx(sum(accs) / 2)
    assert row.ci_low <= row.accuracy <= row.ci_high
    again = SweepResult.load(tmp_path, "lam", [0.5, 2])
    assert again.frame().equals(df)
    assert "accuracy over lam" in result.markdown()
    from circuitlens.report.figures import plot_sweep
    from circuitlens.report.page import write_sweep_page

    fig = plot_sweep(result, "entity_tracking")
    assert {t.name for t in fig.data} == {"CE", "CE + Align CKA"} and len(fig.data) == 4
    page = write_sweep_page(result).read_text()
    assert "lam=0.5/report.html" in page and '<script src="plotly.min.js">' in page


def test_budget_points_reuse_the_exact_sweeps_and_map_anew(tmp_path, monkeypatch) -> None:
    calls = []
    real = distill.sweeps

    def counted(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(distill, "sweeps", counted)
    result = run_sweep(tiny(), tmp_path, "budget", [1, 3], progress=False)
    assert len(calls) == 1  # an exact sweep does not read the budget: computed once
    sizes = {
        v: len(json.loads((tmp_path / point_name("budget", v) / "entity_tracking" /
                           "setup.json").read_text())["head_map"]["pairs"])
        for v in (1, 3)
    }  # fmt: skip
    assert sizes == {1: 1, 3: 3}
    df = result.frame()
    assert sorted(df[df.condition == "ce"].head_fraction) == [1 / 8, 3 / 8]
    with pytest.raises(ValueError, match="one of lam, budget"):
        run_sweep(tiny(), tmp_path, "steps", [1, 2])
