"""The four splits: train, val, test and probe share no prompt text, for every task type; the
probe split is drawn after the others, so train, val and test are what they were without it;
a JSONL file's repeated lines land in one split; a request larger than a split names the
option of that task type that gives it more."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import pytest

from circuitlens import get_task
from circuitlens.tasks import TaskError
from circuitlens.tasks.base import SPLITS

IOI = Path(__file__).parents[2] / "data" / "tasks" / "ioi.jsonl"


def _texts(task, split: str) -> list[str]:
    return [p.text for p in task.split(split)]


def _assert_disjoint(task) -> None:
    seen: dict[str, str] = {}
    for split in SPLITS:
        texts = _texts(task, split)
        assert len(set(texts)) == len(texts), f"{split} repeats a prompt"
        for t in texts:
            assert t not in seen, f"{t!r} is in {seen[t]} and {split}"
            seen[t] = split


BUILT_IN = [
    ("entity_tracking", {"n_boxes": 2}),
    ("entity_tracking", {"n_boxes": 3}),
    ("entity_tracking", {"n_boxes": 7}),
    ("theory_of_mind", {}),
    ("theory_of_mind", {"instruction": False, "p_visible": 1.0}),
]


@pytest.mark.parametrize(("name", "opts"), BUILT_IN)
@pytest.mark.parametrize("seed", [0, 1, 17])
def test_built_in_splits_are_disjoint_and_probe_comes_last(name, opts, seed) -> None:
    sizes = dict(n_train=60, n_val=20, n_test=30, n_probe=25)
    task = get_task(name, seed=seed, **sizes, **opts)
    assert [len(task.split(s)) for s in SPLITS] == [60, 20, 30, 25]
    _assert_disjoint(task)
    # drawn after the others from the same stream: without it, the other three are the same
    bare = get_task(name, seed=seed, **(sizes | {"n_probe": 0}), **opts)
    for split in ("train", "val", "test"):
        assert _texts(task, split) == _texts(bare, split)
    assert task.split("probe", 5) == task.split("probe")[:5]


def test_the_default_probe_split_and_fresh_samples_avoid_it() -> None:
    task = get_task("entity_tracking", n_boxes=2, seed=0, n_train=10, n_val=10, n_test=10)
    assert len(task.split("probe")) == 200  # the default sweep's prompts
    _assert_disjoint(task)
    probe = set(_texts(task, "probe"))
    assert probe <= task.heldout_texts()  # fresh training samples avoid the probe prompts
    fresh = task.sample(random.Random(0), 300)
    assert not probe & {p.text for p in fresh}


def test_a_request_larger_than_a_split_names_the_option_that_sizes_it(tmp_path) -> None:
    et = get_task("entity_tracking", n_boxes=3, n_probe=4)
    with pytest.raises(TaskError, match=r"asked for 9 probe prompts .* holds 4: .* n_probe=9"):
        et.split("probe", 9)
    with pytest.raises(TaskError, match="n_probe must be >= 0"):
        get_task("theory_of_mind", n_probe=-1)
    task = get_task("jsonl", path=IOI)
    with pytest.raises(TaskError, match=r"probe prompts .*: .* raise probe_fraction"):
        task.split("probe", 1000)
    with pytest.raises(TaskError, match=r"probe_fraction must be >= 0 and sum to at most 1"):
        get_task("jsonl", path=IOI, test_fraction=0.5, probe_fraction=0.6)
    empty = get_task("jsonl", path=IOI, probe_fraction=0)
    assert empty.split("probe") == [] and "raise probe_fraction" in empty.empty_split_hint("probe")


@pytest.mark.parametrize("seed", [0, 1, 5])
@pytest.mark.parametrize(
    "fractions",
    [
        {},
        {"val_fraction": 0.2, "test_fraction": 0.3, "probe_fraction": 0.25},
        {"val_fraction": 0, "test_fraction": 0.85},  # the default probe share gives way
    ],
)
def test_jsonl_splits_are_disjoint_and_val_test_are_as_without_probe(seed, fractions) -> None:
    task = get_task("jsonl", path=IOI, seed=seed, **fractions)
    _assert_disjoint(task)
    n = len(IOI.read_text().splitlines())
    assert sum(len(task.split(s)) for s in SPLITS) == n  # the file's 120 distinct prompts
    # probe is cut from the end of what train held without it: val and test are unchanged
    bare = get_task("jsonl", path=IOI, seed=seed, **(fractions | {"probe_fraction": 0}))
    for split in ("val", "test"):
        assert _texts(task, split) == _texts(bare, split)
    assert _texts(task, "train") + _texts(task, "probe") == _texts(bare, "train")


def test_jsonl_default_sizes_of_a_small_file(tmp_path) -> None:
    path = tmp_path / "small.jsonl"
    path.write_text("".join(IOI.read_text().splitlines(keepends=True)[:60]))
    task = get_task("jsonl", path=path)
    # 0.1 val, 0.2 test, 0.1 probe (the default), the rest train
    assert {s: len(task.split(s)) for s in SPLITS} == {
        "train": 36,
        "val": 6,
        "test": 12,
        "probe": 6,
    }
    # everything in test, as before the probe split: the default probe share gives way
    everything = get_task("jsonl", path=path, val_fraction=0, test_fraction=1)
    assert len(everything.split("test")) == 60 and everything.split("probe") == []


def test_jsonl_repeated_lines_land_in_one_split(tmp_path, caplog) -> None:
    """A file of 40 prompts, each written three times (and shuffled): each prompt is kept
    once, with a warning, so that no prompt can be in two splits."""
    lines = IOI.read_text().splitlines()[:40]
    rows = lines * 3
    random.Random(0).shuffle(rows)
    path = tmp_path / "repeated.jsonl"
    path.write_text("\n".join(rows) + "\n")
    with caplog.at_level(logging.WARNING, logger="circuitlens.tasks.jsonl"):
        task = get_task("jsonl", path=path, val_fraction=0.2, test_fraction=0.2)
        _assert_disjoint(task)
    assert "repeats 80 line(s) exactly" in caplog.text
    assert sum(len(task.split(s)) for s in SPLITS) == 40
    assert {p.text for s in SPLITS for p in task.split(s)} == {
        json.loads(x)["prompt"] for x in lines
    }
