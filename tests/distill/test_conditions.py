"""The condition registry: conditions as data, each cell's pairs, and no name tests."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import circuitlens.distill.conditions as conditions
from circuitlens.analysis.ablation import AblationConfig, AblationResult
from circuitlens.analysis.mapping import map_heads
from circuitlens.distill.conditions import (
    LABELS,
    Condition,
    condition_map,
    condition_names,
    get_condition,
    random_heads,
    register_condition,
)
from circuitlens.distill.train_config import TrainConfig
from circuitlens.tasks.tokenizers import LOGIT_CONDITIONS


def _sweep(delta: torch.Tensor) -> AblationResult:
    return AblationResult(
        p_own=1.0, p_baseline=1.0, p_ablated=1.0 - delta, delta=delta, model_name="m",
        config=AblationConfig(),
    )  # fmt: skip


STUDENT = _sweep(torch.linspace(0.0, 0.23, 24).reshape(4, 6))
TEACHER = _sweep(torch.linspace(-0.05, 0.3, 30).reshape(5, 6))


def test_each_condition_says_what_it_trains() -> None:
    want = {  # name: (terms, heads, partners, shuffle)
        "ce": (("ce",), "map", "map", False),
        "ce+align": (("ce", "align"), "map", "map", False),
        "ce+rand": (("ce", "align"), "map", "random", False),
        "ce+shuffled": (("ce", "align"), "map", "map", True),
        "align": (("align",), "map", "map", False),
        "kd": (("kd",), "map", "map", False),
        "full-ce": (("ce",), "all", "map", False),
        "random-heads": (("ce",), "random", "map", False),
        "random-heads+align": (("ce", "align"), "random", "map", False),
    }
    assert set(want) <= set(condition_names())
    for name, (terms, heads, partners, shuffle) in want.items():
        c = get_condition(name)
        assert (c.terms, c.heads, c.partners, c.shuffle) == (terms, heads, partners, shuffle)
        assert LABELS[name] == c.label
    assert LOGIT_CONDITIONS >= {"kd"} and "ce+align" not in LOGIT_CONDITIONS
    # the controls are asked for by name, not in the default grid
    assert "random-heads" not in condition_names(default_only=True)
    with pytest.raises(ValueError, match="valid: ce, ce\\+align"):
        get_condition("ce+nope")


def test_loss_is_the_sum_of_the_terms() -> None:
    ce, align, kd = torch.tensor(1.5), torch.tensor(0.25), torch.tensor(0.7)
    lam = 2.0
    assert float(get_condition("ce+align").loss(lam, ce, align)) == pytest.approx(1.5 + 0.5)
    assert float(get_condition("align").loss(lam, ce, align)) == pytest.approx(0.5)
    assert float(get_condition("kd").loss(lam, ce, align, kd)) == pytest.approx(0.7)
    assert float(get_condition("random-heads").loss(lam, ce)) == pytest.approx(1.5)
    with pytest.raises(ValueError, match="needs the term"):
        get_condition("ce+align").loss(lam, ce)


def test_cell_maps() -> None:
    aligned = map_heads(STUDENT, TEACHER, budget=5, one_to_one=True)
    assert condition_map("ce+align", aligned, STUDENT, TEACHER, None, 0) is aligned
    rand = condition_map("ce+rand", aligned, STUDENT, TEACHER, None, 3)
    assert rand.student_heads == aligned.student_heads and rand.kind == "random"
    partner = dict(aligned.pairs)
    assert all(t != partner[s] for s, t in rand.pairs)
    heads = condition_map("random-heads", aligned, STUDENT, TEACHER, None, 3)
    again = condition_map("random-heads+align", aligned, STUDENT, TEACHER, None, 3)
    assert heads.pairs == again.pairs  # the two random-heads controls train the same heads
    assert len(heads) == len(aligned) and len(set(heads.teacher_heads)) == len(heads)
    # each random head's partner is the one the map would give it (one to one: assignment)
    by_hand = map_heads(
        STUDENT, TEACHER, budget=5, one_to_one=True, student_heads=heads.student_heads
    )
    assert heads.pairs == by_hand.pairs
    other = condition_map("random-heads", aligned, STUDENT, TEACHER, None, 4)
    assert other.student_heads != heads.student_heads  # another seed, another draw
    assert random_heads(STUDENT, 5, 3) == heads.student_heads  # seeded
    with pytest.raises(ValueError, match="cannot draw"):
        random_heads(STUDENT, 25, 0)


def test_a_new_condition_is_one_entry(monkeypatch) -> None:
    monkeypatch.setattr(conditions, "_REGISTRY", dict(conditions._REGISTRY))
    monkeypatch.setitem(LABELS, "placeholder", "")  # restored (removed) after the test
    register_condition(Condition("placeholder", "CE + Align, random partners, shuffled",
                                 ("ce", "align"), partners="random", shuffle=True))  # fmt: skip
    cfg = TrainConfig(condition="placeholder")
    assert cfg.uses_cka and cfg.cond.shuffle
    aligned = map_heads(STUDENT, TEACHER, budget=3)
    assert condition_map("placeholder", aligned, STUDENT, TEACHER, None, 0).kind == "random"
    with pytest.raises(ValueError, match="shuffle needs the align term"):
        Condition("bad", "bad", ("ce",), shuffle=True)


def _name_tests(tree: ast.AST, names: set[str]) -> list[int]:
    """Lines that compare something with a condition's name (==, !=, in, not in)."""
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        for op, right in zip(node.ops, node.comparators, strict=True):
            if not isinstance(op, ast.Eq | ast.NotEq | ast.In | ast.NotIn):
                continue
            consts = [right, node.left]
            if isinstance(right, ast.Tuple | ast.List | ast.Set):
                consts += list(right.elts)
            if any(isinstance(c, ast.Constant) and c.value in names for c in consts):
                lines.append(node.lineno)
    return lines


def test_no_module_tests_a_condition_by_name() -> None:
    names = set(condition_names())
    pkg = Path(conditions.__file__).parents[1]  # the whole package
    found = {}
    for f in sorted(pkg.rglob("*.py")):
        if f.name == "conditions.py":
            continue
        lines = _name_tests(ast.parse(f.read_text()), names)
        if lines:
            found[str(f.relative_to(pkg))] = lines
    assert not found, f"condition names tested in {found}: read the Condition's fields instead"
    # the check itself finds a name test
    assert _name_tests(ast.parse('if cfg.condition == "kd": pass'), names) == [1]
    assert _name_tests(ast.parse('x = c in ("ce", "full-ce")'), names) == [1]
