"""The condition registry: conditions as data, each cell's pairs, and no name tests."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import circuitlens.distill.conditions as conditions
from circuitlens.ablation.config import AblationConfig
from circuitlens.ablation.result import AblationResult
from circuitlens.core.types import Head, HeadMap
from circuitlens.distill.conditions import (
    LABELS,
    Condition,
    PairSources,
    condition_map,
    condition_names,
    get_condition,
    kv_groups,
    random_heads,
    register_condition,
)
from circuitlens.distill.train_config import TrainConfig
from circuitlens.mapping.map import map_heads
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
        "ce+rand-all": (("ce", "align"), "map", "random-all", False),
        "random-heads+rand-all": (("ce", "align"), "random", "random-all", False),
        "ce+permuted": (("ce", "align"), "map", "permuted", False),
    }
    assert set(want) <= set(condition_names())
    for name, (terms, heads, partners, shuffle) in want.items():
        c = get_condition(name)
        assert (c.terms, c.heads, c.partners, c.shuffle) == (terms, heads, partners, shuffle)
        assert LABELS[name] == c.label
    assert LOGIT_CONDITIONS >= {"kd"} and "ce+align" not in LOGIT_CONDITIONS
    # the controls are asked for by name, not in the default grid
    for control in ("random-heads", "ce+rand-all", "random-heads+rand-all", "ce+permuted"):
        assert control not in condition_names(default_only=True)
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
    assert condition_map("ce+align", PairSources(aligned, STUDENT, TEACHER), 0) is aligned
    rand = condition_map("ce+rand", PairSources(aligned, STUDENT, TEACHER), 3)
    assert rand.student_heads == aligned.student_heads and rand.kind == "random"
    partner = dict(aligned.pairs)
    assert all(t != partner[s] for s, t in rand.pairs)
    heads = condition_map("random-heads", PairSources(aligned, STUDENT, TEACHER), 3)
    again = condition_map("random-heads+align", PairSources(aligned, STUDENT, TEACHER), 3)
    assert heads.pairs == again.pairs  # the two random-heads controls train the same heads
    assert len(heads) == len(aligned) and len(set(heads.teacher_heads)) == len(heads)
    # each random head's partner is the one the map would give it (one to one: assignment)
    by_hand = map_heads(
        STUDENT, TEACHER, budget=5, one_to_one=True, student_heads=heads.student_heads
    )
    assert heads.pairs == by_hand.pairs
    # a method that reads z, with no z at hand (a setup read from disk): a named error
    cka = HeadMap(aligned.pairs, config=aligned.config | {"method": "cka"})
    with pytest.raises(ValueError, match="reads the heads' z.*with_map_features"):
        condition_map("random-heads+align", PairSources(cka, STUDENT, TEACHER), 3)
    other = condition_map("random-heads", PairSources(aligned, STUDENT, TEACHER), 4)
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
    assert condition_map("placeholder", PairSources(aligned, STUDENT, TEACHER), 0).kind == "random"
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


def test_the_factorial_controls() -> None:
    """Mapped or random heads x the map's or random partners (from every teacher head, the
    map's included), and the map's own pairs permuted."""
    aligned = map_heads(STUDENT, TEACHER, budget=5, one_to_one=True)
    partner = dict(aligned.pairs)
    hit_own = hit_set = False
    for seed in range(40):
        rand_all = condition_map("ce+rand-all", PairSources(aligned, STUDENT, TEACHER), seed)
        assert rand_all.student_heads == aligned.student_heads and rand_all.kind == "random"
        assert rand_all.config["avoid"] is None and len(set(rand_all.teacher_heads)) == 5
        hit_own |= any(t == partner[s] for s, t in rand_all.pairs)
        hit_set |= bool(set(rand_all.teacher_heads) & set(aligned.teacher_heads))
        rr = condition_map("random-heads+rand-all", PairSources(aligned, STUDENT, TEACHER), seed)
        heads = condition_map("random-heads+align", PairSources(aligned, STUDENT, TEACHER), seed)
        assert rr.student_heads == heads.student_heads  # the same random heads
        perm = condition_map("ce+permuted", PairSources(aligned, STUDENT, TEACHER), seed)
        assert perm.kind == "permuted" and perm.student_heads == aligned.student_heads
        assert sorted(perm.teacher_heads) == sorted(aligned.teacher_heads)
        assert all(t != partner[s] for s, t in perm.pairs)
    # drawn from all 30 teacher heads, nothing left out: the map's partners come up
    assert hit_set and hit_own
    # ce+rand, kept as it was: never the map's partners (one to one)
    rand = condition_map("ce+rand", PairSources(aligned, STUDENT, TEACHER), 0)
    assert not set(rand.teacher_heads) & set(aligned.teacher_heads)
    one = map_heads(STUDENT, TEACHER, budget=1)
    with pytest.raises(ValueError, match="at least 2 pairs"):
        condition_map("ce+permuted", PairSources(one, STUDENT, TEACHER), 0)


def test_random_heads_partners_come_from_the_map_method() -> None:
    """A map made by another method gives the random heads their partners by that method."""
    aligned = map_heads(STUDENT, TEACHER, budget=5, one_to_one=True, method="impact-rank")
    heads = condition_map("random-heads+align", PairSources(aligned, STUDENT, TEACHER), 3)
    assert heads.config["method"] == "impact-rank" and heads.kind == "impact-rank"
    by_hand = map_heads(
        STUDENT,
        TEACHER,
        budget=5,
        one_to_one=True,
        student_heads=heads.student_heads,
        method="impact-rank",
    )
    assert heads.pairs == by_hand.pairs


def _groups(heads: list[Head], size: int) -> int:
    return len({(h.layer, h.head // size) for h in heads})


def test_random_heads_match_the_mapped_heads_k_v_groups() -> None:
    """Under grouped K/V (here 4 layers x 6 heads, 2 K/V heads: groups of 3) the random heads
    touch exactly as many K/V groups as the mapped ones, for any set and seed."""
    sweep = _sweep(torch.zeros(4, 6))
    for like in (
        [Head(0, 0), Head(0, 1), Head(0, 2)],  # 1 group, full
        [Head(0, 0), Head(1, 3), Head(2, 5), Head(3, 0)],  # 4 groups
        [Head(0, 0), Head(0, 1), Head(1, 4), Head(3, 3), Head(3, 5)],  # 3 groups
    ):
        for seed in range(25):
            drawn = random_heads(sweep, like, seed, n_kv_heads=2)
            assert len(set(drawn)) == len(like) and drawn == sorted(drawn)
            assert _groups(drawn, 3) == _groups(like, 3)
            assert kv_groups(drawn, 6, 2) == kv_groups(like, 6, 2)
        assert drawn == random_heads(sweep, like, seed, n_kv_heads=2)  # seeded
    with pytest.raises(ValueError, match="does not divide"):
        random_heads(sweep, [Head(0, 0)], 0, n_kv_heads=4)


def test_random_heads_are_uniform_over_the_matched_sets() -> None:
    """2 layers x 4 heads in groups of 2, 3 heads touching 2 groups: 6 pairs of groups x 4
    ways = 24 sets, each drawn about equally often."""
    sweep = _sweep(torch.zeros(2, 4))
    like = [Head(0, 0), Head(0, 1), Head(1, 0)]
    counts: dict[tuple[Head, ...], int] = {}
    for seed in range(2400):
        key = tuple(random_heads(sweep, like, seed, n_kv_heads=2))
        counts[key] = counts.get(key, 0) + 1
    assert len(counts) == 24
    assert all(55 <= c <= 145 for c in counts.values()), sorted(counts.values())


def test_random_heads_train_as_many_parameters_as_the_mapped_ones(make_llama_dir) -> None:
    """On a grouped-K/V Llama (3 layers x 6 heads, 2 K/V heads: groups of 3, as SmolLM2's 9
    heads over 3), the random heads' trained parameter entries (their masks,
    :func:`head_parameter_masks`) equal the mapped heads', seed after seed; an unmatched
    uniform draw of as many heads does not always."""
    from circuitlens import load_model
    from circuitlens.distill.masks import head_parameter_masks, trained_fraction
    from circuitlens.models.registry import model_facts

    model = load_model(make_llama_dir(n_layers=3, n_heads=6, n_kv_heads=2, d_model=48))
    f = model_facts(model)
    assert (f.n_heads, f.n_kv_heads) == (6, 2)
    sweep = _sweep(torch.zeros(3, 6))

    def params(heads: list[Head]) -> int:
        return trained_fraction(model, heads, head_parameter_masks(model, heads)).params

    mapped = [Head(0, 0), Head(0, 1), Head(0, 2), Head(2, 4)]  # 2 groups
    want = params(mapped)
    unmatched = set()
    for seed in range(6):
        drawn = random_heads(sweep, mapped, seed, n_kv_heads=f.n_kv_heads)
        assert drawn != mapped and params(drawn) == want
        unmatched.add(params(random_heads(sweep, len(mapped), seed)))
    assert unmatched != {want}  # the plain draw touches more groups: more K/V parameters
