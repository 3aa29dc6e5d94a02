from __future__ import annotations

import pytest
import torch

from circuitlens import get_task
from circuitlens.circuits.evaluation import circuit_only_scores, format_tasks
from circuitlens.circuits.find import circuit_accuracy
from circuitlens.core.types import Head
from circuitlens.tasks import prompt_scores

TASK = get_task("entity_tracking", n_boxes=3, seed=0, n_test=24)


def test_keeping_every_head_is_the_full_model(tiny_bridge) -> None:
    every = [Head(layer, h) for layer in range(2) for h in range(4)]
    torch.testing.assert_close(
        circuit_only_scores(tiny_bridge, TASK, every, n=24), prompt_scores(tiny_bridge, TASK, n=24)
    )


def test_circuit_only_matches_circuit_accuracy(tiny_bridge) -> None:
    keep = [Head(1, 2), Head(0, 1)]
    scores = circuit_only_scores(tiny_bridge, TASK, keep, n=24)
    assert set(scores.tolist()) <= {0.0, 1.0} and scores.shape == (24,)
    assert float(scores.mean()) == pytest.approx(circuit_accuracy(tiny_bridge, TASK, keep, 24))
    probs = circuit_only_scores(tiny_bridge, TASK, keep, n=24, metric="prob")
    assert ((probs > 0) & (probs < 1)).all()


def test_theory_of_mind_offers_two_formats_of_the_same_stories() -> None:
    tom = get_task("theory_of_mind", seed=3, n_test=5, instruction=False)
    formats = format_tasks(tom, lambda **o: get_task("theory_of_mind", seed=3, n_test=5, **o))
    assert set(formats) == {"plain", "instruction"}
    plain, instr = formats["plain"].split("test"), formats["instruction"].split("test")
    assert [p.text for p in plain] == [p.text for p in tom.split("test")]
    for a, b in zip(plain, instr, strict=True):
        assert b.text.startswith("Instruction:") and b.text.endswith(a.text)
        assert a.answer == b.answer
    assert set(format_tasks(TASK, lambda **o: TASK)) == {"default"}


def test_format_accuracy_reuses_the_cards_format_and_equals_measuring_it(tiny_bridge) -> None:
    """The runner reuses a cell's test accuracy for the format whose prompts are the cell's
    task; the numbers equal evaluating every format, and only the card's format is reused."""
    from circuitlens.circuits.evaluation import format_accuracy as _format_accuracy

    tom = get_task("theory_of_mind", seed=3, n_test=24, instruction=False)
    formats = format_tasks(tom, lambda **o: get_task("theory_of_mind", seed=3, n_test=24, **o))
    known = float(prompt_scores(tiny_bridge, tom, n=24).mean())
    assert _format_accuracy(tiny_bridge, formats, 24, (tom, known)) == _format_accuracy(
        tiny_bridge, formats, 24
    )
    marked = _format_accuracy(tiny_bridge, formats, 24, (tom, -1.0))  # shows what was reused
    assert marked["plain"] == -1.0 and marked["instruction"] != -1.0
