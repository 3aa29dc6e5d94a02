"""Bad task input gets a named error whose advice works."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any

import pytest

from circuitlens import evaluate, get_task, load_model
from circuitlens.tasks import TaskError


@pytest.fixture(scope="module")
def model() -> Any:
    return load_model("zoo:entity-tracking-student")


@pytest.mark.parametrize("n", [0, -5, 2.5, True])
def test_evaluate_refuses_n_below_one(model, n: Any, unchecked) -> None:
    task = get_task("entity_tracking", model=model, n_boxes=3, n_test=20)
    with unchecked(), pytest.raises(TaskError, match=r"n must be a whole number >= 1, or None"):
        evaluate(model, task, n=n)
    assert 0 <= evaluate(model, task, n=5) <= 1  # the advice
    assert 0 <= evaluate(model, task, n=None) <= 1


def test_an_empty_split_is_named(model) -> None:
    task = get_task("entity_tracking", model=model, n_boxes=3, n_test=0)
    with pytest.raises(TaskError, match=r"test split .* is empty: build the task with n_test >= 1"):
        evaluate(model, task)
    fixed = get_task("entity_tracking", model=model, n_boxes=3, n_test=1)  # the advice
    assert evaluate(model, fixed) in (0.0, 1.0)


@pytest.mark.unit
def test_split_refuses_negative_n() -> None:
    with pytest.raises(TaskError, match="n must be a whole number >= 0"):
        get_task("entity_tracking", n_test=5).split("test", -5)


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_jsonl_unknown_words_are_named(model, tmp_path: Path) -> None:
    rows = [
        {"prompt": f"The apple is in Box {b}. Box {b} contains the", "answer": " apple"}
        for b in "ABCDEFGHIJ"
    ]
    rows[3] = {"prompt": "The zyzzyva is in Box D. Box D contains the", "answer": " apple"}
    task = get_task(
        "jsonl", path=_write(tmp_path / "p.jsonl", rows), val_fraction=0.0, test_fraction=1.0
    )
    with pytest.raises(TaskError, match=r"does not know these words of the prompts: 'zyzzyva'"):
        evaluate(model, task)
    # the advice: rephrase with words the tokenizer knows
    rows[3] = {"prompt": "The bread is in Box D. Box D contains the", "answer": " bread"}
    task = get_task(
        "jsonl", path=_write(tmp_path / "p.jsonl", rows), val_fraction=0.0, test_fraction=1.0
    )
    assert 0 <= evaluate(model, task) <= 1


def test_jsonl_duplicates(model, tmp_path: Path, caplog) -> None:
    line = {"prompt": "The apple is in Box A. Box A contains the", "answer": " apple"}
    other = {"prompt": "The bread is in Box B. Box B contains the", "answer": " bread"}
    third = {"prompt": "The map is in Box C. Box C contains the", "answer": " map"}
    path = _write(tmp_path / "d.jsonl", [line, line, other, line, third])
    with caplog.at_level(logging.WARNING):
        task = get_task("jsonl", path=path)
    assert "repeats 2 line(s) exactly (lines 2, 4)" in caplog.text
    sizes = {s: len(task.split(s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 1, "val": 1, "test": 1}  # every split with a fraction gets one
    assert 0 <= evaluate(model, task) <= 1 and 0 <= evaluate(model, task, "val") <= 1
    task.sample(random.Random(0), 4)
    clash = dict(line, answer=" bread")
    path = _write(tmp_path / "c.jsonl", [line, other, clash])
    with pytest.raises(TaskError, match=r"lines 1 and 3 give the same prompt different answer"):
        get_task("jsonl", path=path)
    _write(path, [line, other])  # the advice: keep one of the two lines
    get_task("jsonl", path=path)


def test_jsonl_empty_split_hint(model, tmp_path: Path) -> None:
    line = {"prompt": "The apple is in Box A. Box A contains the", "answer": " apple"}
    path = _write(tmp_path / "one.jsonl", [line])
    task = get_task("jsonl", path=path, val_fraction=0.0, test_fraction=0.0)
    with pytest.raises(TaskError, match=r"none went to test: add prompts .* or raise"):
        evaluate(model, task)
    task = get_task("jsonl", path=path, val_fraction=0.0, test_fraction=1.0)  # the advice
    assert evaluate(model, task) in (0.0, 1.0)
