"""Circuit plans: steps checked as a whole, read from JSON files, found beside a JSONL task."""

from __future__ import annotations

import json

import pytest

from circuitlens import get_task
from circuitlens.core.types import PlanStep
from circuitlens.tasks.entity_tracking import EntityTracking
from circuitlens.tasks.plan import PlanError, check_plan, read_plan

POSITIONS = ("last", "IO", "S1", "S2")
IOI = [
    {"group": "NM", "via": "logits", "position": "last"},
    {"group": "SI", "into": "NM", "via": "q", "position": "last"},
    {"group": "IND", "into": "SI", "via": "v", "position": "S2"},
]


def test_tuples_and_steps_read_the_same() -> None:
    steps = check_plan([("A", None, "logits", "last"), PlanStep("B", "A", "q", "S2")], POSITIONS)
    assert steps == (PlanStep("A", None, "logits", "last"), PlanStep("B", "A", "q", "S2"))
    entity = check_plan(EntityTracking.circuit_plan, ("last", "query_label", "prev_query_label"))
    assert [s.group for s in entity] == ["A", "B", "C", "D", "E", "E"]


@pytest.mark.parametrize(
    ("plan", "match"),
    [
        ([], "has no steps"),
        ([("A", "B", "q", "last")], r"step 1 \(group 'A'\): the first step sends into the logits"),
        ([("A", None, "logits", "S2")], r"into the logits acts at 'last'"),
        (
            [("A", None, "logits", "last"), ("B", None, "logits", "last")],
            r"step 2 \(group 'B'\): only the first step sends into the logits",
        ),
        (
            [("A", None, "logits", "last"), ("B", "C", "q", "last")],
            r"into='C' is not a group named by an earlier step \(A\)",
        ),
        ([("A", None, "logits", "last"), ("A", "A", "q", "last")], r"into='A' is not a group"),
        (
            [("A", None, "logits", "last"), ("B", "A", "q", "S3")],
            r"defines no position 'S3'; valid: last, IO, S1, S2",
        ),
        ([("S", None, "logits", "last")], r"'S' is taken by find_circuit's support heads"),
        (
            [("A", None, "logits", "last"), ("B", "A", "k", "S1"), ("B", "A", "v", "S2")],
            r"acts at 'S1' in an earlier step and at 'S2' here",
        ),
        ([("A", None, "resid", "last")], r"step 1: plan step 'A': unknown via 'resid'"),
        ([("A", None, "logits", "last"), ("B", None, "q", "last")], r"via='logits' goes with"),
        ([("A", "logits")], r"cannot read a plan step"),
    ],
)
def test_bad_plans_name_the_step(plan, match) -> None:
    with pytest.raises(PlanError, match=match):
        check_plan(plan, POSITIONS)


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        ("not json", r"not valid JSON"),
        (json.dumps(IOI), r'expected an object with a list of "steps"'),
        (json.dumps({"steps": IOI, "note": 1}), r"unknown keys \['note'\]"),
        (json.dumps({"steps": [IOI[0], "SI"]}), r"step 2: expected an object like"),
        (json.dumps({"steps": [{**IOI[0], "heads": 3}]}), r"step 1: unknown keys \['heads'\]"),
        (json.dumps({"steps": [{**IOI[0], "group": 3}]}), r"step 1: 'group' must be a non-empty"),
        (json.dumps({"steps": [IOI[0], {**IOI[1], "into": 7}]}), r"step 2: 'into' must be a"),
        (json.dumps({"steps": [{**IOI[0], "via": "z"}]}), r"step 1: unknown via 'z'"),
        (json.dumps({"steps": [IOI[0], {**IOI[1], "position": "END"}]}), r"no position 'END'"),
    ],
)
def test_bad_plan_files_name_the_file_and_step(tmp_path, doc, match) -> None:
    path = tmp_path / "p.plan.json"
    path.write_text(doc)
    with pytest.raises(PlanError, match=match) as info:
        read_plan(path, POSITIONS)
    assert str(path) in str(info.value)
    with pytest.raises(PlanError, match="no such file"):
        read_plan(tmp_path / "missing.json", POSITIONS)


def test_a_jsonl_task_reads_the_plan_beside_it_or_the_one_named(ioi_like_jsonl, tmp_path) -> None:
    path = ioi_like_jsonl(plan=IOI)
    task = get_task("jsonl", path=path)
    assert [s.group for s in task.circuit_plan] == ["NM", "SI", "IND"]
    assert task.circuit_plan[2] == PlanStep("IND", "SI", "v", "S2")
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"steps": IOI[:2]}))
    assert len(get_task("jsonl", path=path, plan=other).circuit_plan) == 2
    assert get_task("jsonl", path=ioi_like_jsonl(name="bare")).circuit_plan is None
    with pytest.raises(PlanError, match="no such file"):
        get_task("jsonl", path=path, plan=tmp_path / "nope.json")


def test_a_plan_is_checked_against_the_files_positions(ioi_like_jsonl) -> None:
    """A plan that reads a position the lines do not name fails when the task is built."""
    plan = [IOI[0], {**IOI[1], "position": "S1+1"}]
    with pytest.raises(PlanError, match=r"step 2 \(group 'SI'\): the task defines no position "):
        get_task("jsonl", path=ioi_like_jsonl(plan=plan))


def test_a_plan_needs_corrupted_prompts(ioi_like_jsonl) -> None:
    def drop(i, line):
        if i >= 2:
            for k in ("corrupted", "corrupted_answer", "corrupted_positions"):
                line.pop(k)
        return line

    from circuitlens.tasks import TaskError

    with pytest.raises(TaskError, match=r"needs a 'corrupted' prompt on every line .*\(line 3 "):
        get_task("jsonl", path=ioi_like_jsonl(plan=IOI, edit=drop))
