"""The design: what n seeds and m primary contrasts can reject, the exact test's power, the
seeds a design needs, the declared primary family, and the verdict line."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import circuitlens as cl
from circuitlens.cli import main
from circuitlens.core.types import Head
from circuitlens.core.validate import ConfigError
from circuitlens.distill.setup import Setup
from circuitlens.experiments import ExperimentConfig, ExperimentResult
from circuitlens.experiments.cell import Cell
from circuitlens.experiments.design import (
    ContrastEstimate,
    DesignConfig,
    SeedSearch,
    _standard_samples,
    contrast_verdict,
    design_can_reject,
    design_note,
    min_seeds_to_reject,
    parse_contrast,
    plan_seeds,
    sign_flip_p,
    sign_flip_power,
)
from circuitlens.experiments.stats import sign_flip_test
from circuitlens.measure.cka import CKAWithNull

FIVE = ("ce+align - ce", "ce+rand - ce", "ce+shuffled - ce", "align - ce", "kd - ce")


# -- what a design can reject ----------------------------------------------------------------
def test_smallest_p_and_the_seeds_that_can_reject_hand_enumerated() -> None:
    """Six differences of one sign: only the observed signs and their mirror reach |sum|, so
    p = 2/64; 2/2^n <= alpha/m first at n = 6 (m = 1: 0.031 <= 0.05), 7 (m = 2: 0.0156 <=
    0.025; 6 gives 0.031 > 0.025) and 8 (m = 5: 0.0078 <= 0.01; 7 gives 0.0156 > 0.01)."""
    assert sign_flip_test([0.1, 0.2, 0.3, 0.4, 0.5, 0.6]) == 2 / 64
    assert sign_flip_p([0.1, 0.2, 0.3, 0.4, 0.5, 0.6]) == 2 / 64
    assert [min_seeds_to_reject(m) for m in (1, 2, 5)] == [6, 7, 8]
    assert design_can_reject(6, 1) and not design_can_reject(5, 1)
    assert not design_can_reject(6, 5) and not design_can_reject(7, 5) and design_can_reject(8, 5)
    assert design_can_reject(5, 1, alpha=0.0625)  # 2/32 = 0.0625: p <= alpha rejects
    assert not design_can_reject(1, 1, alpha=0.99)  # one seed: p is always 1
    for bad in ((0, 1, 0.05), (6, 0, 0.05), (6, 1, 1.5)):
        with pytest.raises(ValueError, match="n_seeds|alpha"):
            design_can_reject(*bad)


def test_sign_flip_p_is_the_brute_force_test() -> None:
    """Meeting in the middle counts the same sign assignments as enumerating all 2^n: hand
    cases, then random, tied and zero differences for n = 1..12."""
    # [1, 2, 3]: |sums| 6, 0, 2, 4, 4, 2, 0, 6 over the 8 assignments: 2 reach 6
    assert sign_flip_p([1.0, 2.0, 3.0]) == 2 / 8
    assert sign_flip_p([1.0, 1.0]) == 2 / 4  # |sums| 2, 0, 0, 2
    assert sign_flip_p([1.0, -1.0]) == 1.0  # the observed sum is 0: every assignment reaches it
    assert sign_flip_p([2.0, -1.0, 1.0]) == 6 / 8  # |sums| 2, 0, 4, 2 (and mirrors): 6 reach 2
    rng = np.random.default_rng(0)
    for n in range(1, 13):
        for d in (
            rng.normal(0.02, 0.03, n),
            rng.integers(-2, 3, n).astype(float),  # ties and zeros
            np.full(n, 0.1),
            np.zeros(n),
        ):
            assert sign_flip_p(d) == sign_flip_test(d), d
    assert sign_flip_p(rng.normal(size=24)) <= 1  # past the brute-force test's 20 seeds


# -- power ------------------------------------------------------------------------------------
def test_power_is_the_brute_force_test_on_the_same_samples() -> None:
    """The simulated power is the fraction of the samples effect/sd + Z whose brute-force
    sign-flip p is at most alpha/m, for designs that can and cannot reject."""
    for n, m in ((4, 1), (6, 1), (6, 5), (7, 2), (8, 5)):
        z = _standard_samples(n, 400, 0)
        want = np.mean([sign_flip_test(0.03 / 0.02 + row) <= 0.05 / m + 1e-12 for row in z])
        assert sign_flip_power(0.03, 0.02, n, m, n_sim=400) == pytest.approx(want, abs=0)
        assert sign_flip_power(-0.03, 0.02, n, m, n_sim=400) == pytest.approx(want, abs=0)


def test_power_at_a_huge_effect_is_one_iff_the_smallest_p_reaches_alpha_over_m() -> None:
    for n in range(1, 10):
        for m in (1, 2, 5):
            want = 1.0 if 2 / 2**n <= 0.05 / m else 0.0
            assert sign_flip_power(100.0, 1.0, n, m, n_sim=100) == want, (n, m)
            assert sign_flip_power(0.05, 0.0, n, m) == want, (n, m)  # no spread: exact


def test_power_under_h0_is_at_most_the_level_and_near_a_reference() -> None:
    """At effect ~0 the test's size is at most alpha (up to Monte-Carlo error), and the power
    at a real effect agrees with an independent simulation within 4 standard errors."""
    assert sign_flip_power(1e-9, 1.0, 8, 1, n_sim=4000) <= 0.05 + 4 * (0.05 * 0.95 / 4000) ** 0.5
    p = sign_flip_power(0.03, 0.032, 10, 2)
    rng = np.random.default_rng(123)  # another stream, no antithetic pairs
    ref = np.mean([sign_flip_p(rng.normal(0.03, 0.032, 10)) <= 0.025 for _ in range(4000)])
    assert abs(p - ref) < 4 * (2 * 0.25 / 4000) ** 0.5


def test_power_never_falls_as_the_effect_grows_or_the_sd_shrinks() -> None:
    """Exactly, not only on average: the samples are common to every effect and sd (antithetic
    pairs make each pair's rejections non-decreasing in |effect| / sd)."""
    for n in (6, 9):
        powers = [sign_flip_power(e, 0.03, n, 1, n_sim=600) for e in np.linspace(0, 0.08, 17)]
        assert all(a <= b for a, b in zip(powers, powers[1:], strict=False)), powers
        by_sd = [sign_flip_power(0.03, s, n, 1, n_sim=600) for s in (0.01, 0.02, 0.03, 0.05)]
        assert all(a >= b for a, b in zip(by_sd, by_sd[1:], strict=False)), by_sd


def test_plan_seeds_is_the_first_n_with_the_power_and_monotone() -> None:
    assert plan_seeds(0.05, 0.0) == 6 and plan_seeds(0.05, 0.0, n_contrasts=5) == 8
    n = plan_seeds(0.03, 0.032, 2, search=SeedSearch(n_sim=1000))
    assert sign_flip_power(0.03, 0.032, n, 2, n_sim=1000) >= 0.8
    assert sign_flip_power(0.03, 0.032, n - 1, 2, n_sim=1000) < 0.8
    by_effect = [
        plan_seeds(e, 0.03, 1, search=SeedSearch(n_sim=600)) for e in (0.025, 0.03, 0.04, 0.06)
    ]
    assert all(a >= b for a, b in zip(by_effect, by_effect[1:], strict=False)), by_effect
    by_sd = [plan_seeds(0.04, s, 1, search=SeedSearch(n_sim=600)) for s in (0.01, 0.02, 0.03, 0.04)]
    assert all(a <= b for a, b in zip(by_sd, by_sd[1:], strict=False)), by_sd
    assert plan_seeds(0.03, 0.02, 2, search=SeedSearch(n_sim=600)) >= plan_seeds(
        0.03, 0.02, 1, search=SeedSearch(n_sim=600)
    )
    with pytest.raises(ValueError, match="no design of at most 8 seeds .* 8 seeds give"):
        plan_seeds(0.01, 0.05, search=SeedSearch(max_seeds=8, n_sim=200))
    with pytest.raises(ValueError, match="non-zero effect"):
        plan_seeds(0.0, 0.05)


# -- the declared design ---------------------------------------------------------------------
def test_contrasts_parse_with_a_minus_between_spaces() -> None:
    assert parse_contrast("ce+align - ce") == ("ce+align", "ce")
    assert parse_contrast("full-ce - ce") == ("full-ce", "ce")  # names may hold '-'
    assert parse_contrast("random-heads+align - random-heads") == (
        "random-heads+align",
        "random-heads",
    )
    for bad in ("ce+align-ce", "ce - ce", " - ce", "a - b - c"):
        with pytest.raises(ConfigError, match="' - '"):
            parse_contrast(bad)


def test_design_is_checked_when_the_config_is_built() -> None:
    with pytest.raises(ConfigError, match=r"'ce\+rand - ce' names \['ce\+rand'\], not among"):
        ExperimentConfig(conditions=("ce", "ce+align"), design=DesignConfig(primary=FIVE[:2]))
    with pytest.raises(ConfigError, match="untrained"):
        ExperimentConfig(design=DesignConfig(primary=("ce+align - student",)))
    with pytest.raises(ConfigError, match="twice"):
        DesignConfig(primary=("ce+align - ce", "ce+align - ce"))
    with pytest.raises(ConfigError, match="alpha < power"):
        DesignConfig(alpha=0.9, power=0.8)
    with pytest.raises(ConfigError, match="unknown experiment config \\[design\\] keys"):
        ExperimentConfig.from_dict({"design": {"primry": ["ce+align - ce"]}})
    # the default family: CE + Align - CE where both are run, else none
    assert ExperimentConfig().primary_contrasts() == ("ce+align - ce",)
    assert ExperimentConfig(conditions=("ce", "kd")).primary_contrasts() == ()


def test_design_round_trips_and_old_configs_load_the_default() -> None:
    cfg = ExperimentConfig(design=DesignConfig(primary=FIVE[:2], alpha=0.01, effect=0.03))
    again = ExperimentConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.design.primary == FIVE[:2]
    old = ExperimentConfig().to_dict()
    del old["design"]  # a config saved before the design existed
    assert ExperimentConfig.from_dict(old).design == DesignConfig()
    assert cfg.with_overrides(seeds=[0, 1]).design == cfg.design


RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


def test_committed_runs_load_with_the_default_design_and_their_verdicts() -> None:
    """Every run kept in ``benchmarks/results/`` saved before the design existed reads as the
    default design; the answer's runs (``answer-*.json``) carry the design committed before
    them, which loads as written. The 6-seed exact run on the real pair: one primary contrast
    (CE + Align - CE), whose Holm p is its own p, the paired sds of the pilots (0.019 entity
    tracking, 0.032 theory of mind), and the other conditions exploratory."""
    docs = {p.name: json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))}
    runs = {n: d for n, d in docs.items() if isinstance(d, dict) and {"config", "cells"} <= set(d)}
    assert "reproduce-real-exact.json" in runs
    for name, doc in runs.items():
        design = ExperimentConfig.from_dict(doc["config"]).design
        if name.startswith("answer-"):
            assert design.primary == ("ce+align - ce", "ce+align - ce+permuted"), name
            assert (design.alpha, design.effect) == (0.05, 0.03), name
        else:
            assert "design" not in doc["config"], name
            assert design == DesignConfig(), name
    doc = runs["reproduce-real-exact.json"]
    result = ExperimentResult(
        RESULTS, ExperimentConfig.from_dict(doc["config"]),
        {t: Setup.from_dict(s) for t, s in doc["setups"].items()},
        [Cell.from_dict(c) for c in doc["cells"]],
    )  # fmt: skip
    assert result.design_note() is None  # 6 seeds, one contrast: 2/64 <= 0.05
    comp = result.comparisons(n_boot=200)
    primary = comp[comp.role == "primary"]
    assert list(primary.contrast) == ["ce+align - ce"] * 2
    assert (primary.p_holm == primary.p_sign_flip).all()
    sds = [float(np.std(d, ddof=1)) for d in primary.diffs]
    assert sds == pytest.approx([0.019, 0.032], abs=0.0006)
    explo = comp[comp.role == "exploratory"]
    assert explo.p_holm.isna().all() and explo.verdict.str.startswith("[exploratory] ").all()


def test_six_seeds_five_contrasts_is_exploratory_before_work(monkeypatch, caplog) -> None:
    """The note is logged by run_experiment before any work (the run itself is stopped)."""
    from circuitlens.experiments import runner

    five = ExperimentConfig(seeds=tuple(range(6)), design=DesignConfig(primary=FIVE))
    note = design_note(five)
    assert note is not None and "6 seed(s) cannot reject at alpha = 0.05 over 5" in note
    assert "2/2^6 = 0.0312, above alpha/5 = 0.01; 8 seeds are the fewest" in note
    assert design_note(ExperimentConfig(seeds=tuple(range(6)))) is None  # one contrast: can
    assert "1 seed(s) cannot reject" in design_note(ExperimentConfig.quick())  # the zoo quick run
    empty = ExperimentConfig(seeds=tuple(range(8)), design=DesignConfig(primary=()))
    assert "no primary contrast declared" in design_note(empty)

    def no_work(*args, **kwargs):
        raise RuntimeError("work started")

    monkeypatch.setattr(runner, "run_directory", no_work)
    with caplog.at_level(logging.WARNING), pytest.raises(RuntimeError, match="work started"):
        cl.run_experiment(five, "unused")
    assert [r.getMessage() for r in caplog.records] == [note]


# -- the verdict line ------------------------------------------------------------------------
def test_verdict_lines_say_where_0_and_the_effect_lie() -> None:
    def v(low: float, high: float, p: float = 0.06, primary: bool = True) -> str:
        estimate = ContrastEstimate((low + high) / 2, low, high, p, 6)
        return contrast_verdict("A", "CE", estimate, DesignConfig(alpha=0.05, effect=0.05), primary)

    assert v(0.0, 0.06) == (
        "A \u2212 CE: +0.030 [+0.000, +0.060], 6 seeds, p_Holm 0.06; the interval contains 0 "
        "and +0.05: undecided"
    )
    assert v(0.01, 0.08, 0.03).endswith(
        "the interval contains +0.05 but not 0: A is higher, by as much as +0.05"
    )
    assert v(0.01, 0.04, 0.03).endswith("excludes 0 or +0.05: A is higher, by less than +0.05")
    assert v(0.06, 0.09, 0.03).endswith("by more than +0.05")
    assert v(-0.03, 0.02).endswith(
        "contains 0 but not +0.05: no difference shown, and any is below +0.05"
    )
    assert v(-0.06, -0.01, 0.03).endswith("excludes 0 or +0.05: A is lower")
    assert v(0.01, 0.04, 0.2).endswith("by less than +0.05, though p_Holm is not at or below 0.05")
    assert v(0.0, 0.06, 0.2, primary=False).startswith("[exploratory] A \u2212 CE: ")
    assert "p (unadjusted) 0.2;" in v(0.0, 0.06, 0.2, primary=False)


# -- circuitlens plan ------------------------------------------------------------------------
def test_cli_plan_prints_the_seeds_and_the_power_table(capsys) -> None:
    assert main(["plan", "--effect", "0.05", "--sd", "0", "--contrasts", "5"]) == 0
    out = capsys.readouterr().out
    assert "seeds needed 8" in out and "alpha/5 = 0.01" in out
    table = re.findall(r"^\s+(\d+)\s+(\S+)\s+(yes|no)\s+(\S+)$", out, re.MULTILINE)
    assert [int(n) for n, *_ in table] == list(range(2, 9))
    assert [(c, float(p)) for _, _, c, p in table] == [("no", 0.0)] * 6 + [("yes", 1.0)]
    assert main(["plan", "--effect", "0.05"]) == 2
    assert "plan needs --effect and --sd, or --from RUN_DIR" in capsys.readouterr().err


def _cell(task: str, condition: str, seed: int, correct: list[int]) -> Cell:
    cka = CKAWithNull(torch.tensor([0.2]), torch.tensor([0.0]), torch.tensor([0.01]), 20)
    return Cell(
        task=task, condition=condition, seed=seed, accuracy=sum(correct) / len(correct),
        test_correct=tuple(correct), circuit_accuracy=0.1, format_accuracy={},
        mean_cka_before=0.1, mean_cka_after=0.2, cka_before=cka, cka_after=cka, heads_trained=1,
        head_fraction=0.125, param_fraction=0.03, pairs=((Head(1, 0), Head(1, 0)),), steps=3,
        final_loss=1.0, curve=(), seconds=0.0, resumed=False,
    )  # fmt: skip


def test_cli_plan_from_a_run_reads_the_paired_sd_of_the_primary_contrast(
    tmp_path: Path, capsys
) -> None:
    """Six seeds, 20 prompts each: CE + Align gets 1, 2, 0, 3, 1, 2 more prompts right than CE,
    per-seed differences 0.05, 0.1, 0, 0.15, 0.05, 0.1 (sd 0.0524); CE + Rand is exploratory
    and not planned for."""
    cfg = ExperimentConfig(
        tasks=("entity_tracking",), conditions=("ce", "ce+align", "ce+rand"), seeds=tuple(range(6))
    )
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(cfg.to_dict()))
    extra = {"ce": [0] * 6, "ce+align": [1, 2, 0, 3, 1, 2], "ce+rand": [0, 1, 0, 0, 1, 0]}
    for cond, more in extra.items():
        for seed, k in enumerate(more):
            d = run / "entity_tracking" / cond / f"seed{seed}"
            d.mkdir(parents=True)
            cell = _cell("entity_tracking", cond, seed, [1] * (10 + k) + [0] * (10 - k))
            (d / "cell.json").write_text(json.dumps(cell.to_dict()))
    sd = float(np.std([0.05, 0.1, 0.0, 0.15, 0.05, 0.1], ddof=1))
    assert main(["plan", "--from", str(run), "--sims", "500"]) == 0
    out = capsys.readouterr().out
    assert "alpha/1 = 0.05" in out and "effect +0.05" in out  # the run's declared design
    (line,) = [x for x in out.splitlines() if "paired sd" in x]
    n = plan_seeds(0.05, sd, 1, search=SeedSearch(n_sim=500))
    assert line == f"entity_tracking: ce+align - ce (6 seeds): paired sd {sd:.4g}: seeds needed {n}"
    assert ExperimentResult.load(run).comparisons().role.tolist() == ["primary", "exploratory"]
