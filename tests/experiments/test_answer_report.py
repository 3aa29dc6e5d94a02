"""``benchmarks/answer_report.py``: the answer's page is recomputed from the exported per-seed
cells with each run's committed design, and shows no test-set number before the design's
last cell."""

from __future__ import annotations

import json
import re
from pathlib import Path

import answer_report as ar  # benchmarks/ is on the path (pyproject's pytest options)
import pytest

from circuitlens.distill.setup import Setup
from circuitlens.experiments import ExperimentConfig, ExperimentResult
from circuitlens.experiments.cell import Cell

RESULTS = ar.RESULTS


def _split(doc: dict, task: str) -> dict:
    """One task of a two-task export, as an answer run is (one task per run)."""
    config = dict(doc["config"], tasks=[task], models={task: doc["config"]["models"][task]})
    cells = [c for c in doc["cells"] if c["task"] == task]
    return dict(doc, config=config, setups={task: doc["setups"][task]}, cells=cells)


def test_a_finished_run_gives_the_verdict_the_cells_give(tmp_path: Path) -> None:
    """The committed 6-seed exact run, split per task: every primary and exploratory row of the
    page is the one the whole run's comparisons give (mean, interval, p), with whether 0 and
    +0.05 lie inside; CE's mean test accuracy is read against the pilot's regime."""
    doc = json.loads((RESULTS / "reproduce-real-exact.json").read_text())
    for t in doc["config"]["tasks"]:
        (tmp_path / f"answer-{t}.json").write_text(json.dumps(_split(doc, t)))
    whole = ExperimentResult(
        RESULTS, ExperimentConfig.from_dict(doc["config"]),
        {t: Setup.from_dict(s) for t, s in doc["setups"].items()},
        [Cell.from_dict(c) for c in doc["cells"]],
    ).comparisons()  # fmt: skip
    page = ar.page(tuple(doc["config"]["tasks"]), tmp_path)
    assert "In progress" not in page
    for r in whole.itertuples():
        row = (
            f"| {r.contrast} | {r.n_seeds} | {r.mean_diff:+.3f} | "
            f"[{r.ci_low:+.3f}, {r.ci_high:+.3f}] | {r.p_sign_flip:.3g} |"
        )
        assert row in page, row
    # theory of mind's primary contrast, as committed: +0.028 [+0.000, +0.060]
    tom = page.split("## theory_of_mind")[1]
    assert "| ce+align - ce | 6 | +0.028 | [+0.000, +0.060] | 0.125 | 0.125 | yes | yes |" in tom
    ce = [
        c["accuracy"]
        for c in doc["cells"]
        if c["task"] == "theory_of_mind" and c["condition"] == "ce"
    ]
    assert f"CE's mean test accuracy {sum(ce) / len(ce):.3f}: outside" in tom


def test_an_unfinished_run_shows_progress_and_no_test_number(tmp_path: Path) -> None:
    """With one cell missing, the task's section counts the cells, gives their times and no
    test accuracy or contrast."""
    doc = _split(json.loads((RESULTS / "reproduce-real-exact.json").read_text()), "entity_tracking")
    dropped = doc["cells"].pop()
    (tmp_path / "answer-entity_tracking.json").write_text(json.dumps(doc))
    _, result = ar.load("answer-entity_tracking", tmp_path)
    assert ar.missing_cells(result) == {dropped["condition"]: [dropped["seed"]]}
    page = ar.page(("entity_tracking",), tmp_path)
    assert "In progress" in page and "Cells in: 35 of 36." in page
    assert "mean diff" not in page and "test accuracy:" not in page
    assert not re.search(r"0\.\d{3} ±", page)


@pytest.mark.parametrize("name", ar.TASKS)
def test_the_committed_answer_runs_read(name: str) -> None:
    """The answer's exports load with their design, and the page counts their cells."""
    doc, result = ar.load(f"answer-{name}")
    assert result.config.design.primary == ("ce+align - ce", "ce+align - ce+permuted")
    n = len(ar._trained(result.config)) * len(result.config.seeds)
    missing = sum(len(s) for s in ar.missing_cells(result).values())
    assert f"Cells in: {n - missing} of {n}." in "\n".join(ar.task_section(name, doc, result))


def test_the_committed_page_is_what_the_committed_cells_give() -> None:
    """``docs/results/answer.md`` is the page the committed exports give today: no export is
    committed without its page, and no number on the page is edited by hand."""
    assert ar.PAGE.read_text() == ar.page(), (
        "docs/results/answer.md is stale: run `python benchmarks/answer_report.py` after "
        "`bash benchmarks/answer_runs.sh export`"
    )
