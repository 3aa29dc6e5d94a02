"""Circuit plans: the path-patching steps that :func:`~circuitlens.circuits.find.find_circuit`
takes.

A plan is a sequence of :class:`~circuitlens.core.types.PlanStep` ``(group, into, via, position)``,
the procedure of Wang et al. (2022, IOI) and Prakash et al. (2024, entity tracking): the first
step's group is the heads with the largest direct effect on the logits; each later step's group
is the heads that matter most through an earlier group's queries, keys or values at a named
token position. A built-in task names its plan as the class attribute ``circuit_plan``; a JSONL
task reads it from a JSON file (:func:`read_plan`):

.. code-block:: json

    {"description": "optional free text",
     "steps": [
       {"group": "name_movers", "via": "logits", "position": "last"},
       {"group": "s_inhibition", "into": "name_movers", "via": "q", "position": "last"}
     ]}

Rules (:func:`check_plan`): the first step, and only it, sends into the logits (``via``
``"logits"``, no ``into``) at ``last`` (where the metrics read the answer); a later step's
``into`` is a group named by an earlier step, other than its own; ``via`` is ``"q"``, ``"k"`` or
``"v"``; every position is one the task defines; a group named by several steps (entity
tracking's E reads A's keys and values) acts at one position; ``S`` is taken (``find_circuit``'s
support heads).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from circuitlens.core.types import PLAN_VIA, PlanStep
from circuitlens.tasks.base import TaskError

#: the group find_circuit adds its support heads to
SUPPORT_GROUP = "S"
_STEP_KEYS = ("group", "into", "via", "position")


class PlanError(TaskError):
    """A circuit plan that cannot be followed; the message names the step and the fix."""


def check_plan(
    plan: Sequence[PlanStep | tuple[Any, ...] | list[Any]],
    positions: Sequence[str],
    where: str = "the circuit plan",
) -> tuple[PlanStep, ...]:
    """The plan as :class:`PlanStep` objects, checked against the task's position names.

    Args:
        plan: steps, as :class:`PlanStep` or ``(group, into, via, position)`` tuples.
        positions: the position names the task defines (``last`` among them).
        where: how errors name the plan (its file, or the task).

    Raises:
        PlanError: a rule of the module docstring is broken (the step is named).
    """
    if not plan:
        raise PlanError(f"{where} has no steps: give at least the step into the logits")
    steps: list[PlanStep] = []
    at: dict[str, str] = {}
    for i, raw in enumerate(plan, start=1):
        try:
            step = PlanStep.parse(raw)
        except ValueError as e:
            raise PlanError(f"{where}, step {i}: {e}") from e
        here = f"{where}, step {i} (group {step.group!r})"
        if i == 1 and step.via != "logits":
            raise PlanError(
                f"{here}: the first step sends into the logits: "
                '{"group": ..., "via": "logits", "position": "last"}'
            )
        if i > 1 and step.via == "logits":
            raise PlanError(
                f"{here}: only the first step sends into the logits; name the receiving group "
                f"(into) and its input (via: q, k or v)"
            )
        if step.via == "logits" and step.position != "last":
            raise PlanError(
                f"{here}: the step into the logits acts at 'last', where the metrics read the "
                f"answer (got {step.position!r})"
            )
        if step.into is not None and (step.into not in at or step.into == step.group):
            raise PlanError(
                f"{here}: into={step.into!r} is not a group named by an earlier step "
                f"({', '.join(at) or 'none'}): a group receives only after its own step"
            )
        if step.position not in positions:
            raise PlanError(
                f"{here}: the task defines no position {step.position!r}; valid: "
                f"{', '.join(positions)}"
            )
        if step.group == SUPPORT_GROUP:
            raise PlanError(
                f"{here}: the group name {SUPPORT_GROUP!r} is taken by find_circuit's support "
                "heads; rename the group"
            )
        if at.get(step.group, step.position) != step.position:
            raise PlanError(
                f"{here}: the group acts at {at[step.group]!r} in an earlier step and at "
                f"{step.position!r} here; a group acts at one position (name a second group)"
            )
        at[step.group] = step.position
        steps.append(step)
    return tuple(steps)


def _step(where: str, raw: Any) -> tuple[Any, ...]:
    if not isinstance(raw, dict):
        raise PlanError(
            f"{where}: expected an object like "
            '{"group": "B", "into": "A", "via": "q", "position": "last"}, '
            f"got {json.dumps(raw)[:80]}"
        )
    unknown = sorted(set(raw) - set(_STEP_KEYS))
    if unknown:
        raise PlanError(f"{where}: unknown keys {unknown}; valid keys: {list(_STEP_KEYS)}")
    for key in ("group", "via", "position"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise PlanError(f"{where}: {key!r} must be a non-empty string (got {raw.get(key)!r})")
    into = raw.get("into")
    if into is not None and (not isinstance(into, str) or not into):
        raise PlanError(f"{where}: 'into' must be a group name, or left out for the logits")
    if raw["via"] not in PLAN_VIA:
        raise PlanError(f"{where}: unknown via {raw['via']!r}; valid: {', '.join(PLAN_VIA)}")
    return raw["group"], into, raw["via"], raw["position"]


def read_plan(path: str | Path, positions: Sequence[str]) -> tuple[PlanStep, ...]:
    """The plan in a JSON file (format in the module docstring), checked by :func:`check_plan`.

    Raises:
        PlanError: the file is missing, not JSON, or not a valid plan (the step is named).
    """
    path = Path(path)
    if not path.is_file():
        raise PlanError(f"circuit plan: no such file {str(path)!r}")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise PlanError(f"circuit plan {path}: not valid JSON ({e.msg}, line {e.lineno})") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("steps"), list):
        raise PlanError(
            f'circuit plan {path}: expected an object with a list of "steps" '
            '({"steps": [{"group": "A", "via": "logits", "position": "last"}, ...]})'
        )
    unknown = sorted(set(doc) - {"steps", "description"})
    if unknown:
        raise PlanError(
            f"circuit plan {path}: unknown keys {unknown}; valid keys: ['description', 'steps']"
        )
    steps = [_step(f"circuit plan {path}, step {i}", s) for i, s in enumerate(doc["steps"], 1)]
    return check_plan(steps, positions, f"circuit plan {path}")
