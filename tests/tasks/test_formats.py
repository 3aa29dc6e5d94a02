"""Model cards carry the prompt format; every entry point builds tasks in it."""

from __future__ import annotations

import json
import shutil
import warnings
from types import SimpleNamespace
from typing import Any

import pytest

from circuitlens import evaluate, get_task, load_model
from circuitlens.models.registry import model_card
from circuitlens.tasks import TaskFormatError, TaskFormatWarning, check_task_format


@pytest.fixture(scope="module")
def tom_teacher() -> Any:
    return load_model("zoo:theory-of-mind-teacher")


@pytest.fixture(scope="module")
def tom_student() -> Any:
    return load_model("zoo:theory-of-mind-student")


@pytest.mark.integration
def test_zoo_card_names_the_format(tom_teacher) -> None:
    card = model_card(tom_teacher)
    assert card is not None and card["name"] == "theory-of-mind-teacher"
    assert card["task_options"] == {
        "entity_tracking": {},
        "theory_of_mind": {"instruction": False},
    }
    assert model_card(object()) is None


@pytest.mark.integration
def test_get_task_with_a_model_uses_its_format(tom_teacher, tom_student) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", TaskFormatWarning)
        by_model = get_task("theory_of_mind", model=tom_teacher, n_test=100)
        by_toks = get_task("theory_of_mind", tokenizers=[tom_teacher, tom_student], n_test=100)
        acc = evaluate(tom_teacher, by_model, n=100)
    assert by_model.config.instruction is False and by_toks.config.instruction is False
    # the zoo teacher scores 0.97 in its own format (0.64 in the instruction format)
    assert acc >= 0.9


@pytest.mark.integration
def test_overriding_the_card_warns_and_leaving_it_out_does_not(tom_teacher) -> None:
    with pytest.warns(TaskFormatWarning, match=r"instruction=True overrides .*theory-of-mind"):
        task = get_task("theory_of_mind", model=tom_teacher, instruction=True, n_test=50)
    assert task.config.instruction is True  # the caller's choice is kept
    # the advice: leave the option out
    with warnings.catch_warnings():
        warnings.simplefilter("error", TaskFormatWarning)
        assert get_task("theory_of_mind", model=tom_teacher).config.instruction is False


@pytest.mark.integration
def test_a_ready_task_in_another_format_warns_on_evaluate(tom_teacher) -> None:
    plain = get_task("theory_of_mind", n_test=20)  # no model: the instruction format
    with pytest.warns(TaskFormatWarning, match=r"get_task\('theory_of_mind', model=\.\.\.\)"):
        evaluate(tom_teacher, plain)
    with warnings.catch_warnings():  # the advice: build it with model=
        warnings.simplefilter("error", TaskFormatWarning)
        evaluate(tom_teacher, get_task("theory_of_mind", model=tom_teacher, n_test=20))
        check_task_format(get_task("theory_of_mind", model=tom_teacher), [tom_teacher])


def _carded(tok: Any, name: str, options: dict[str, Any]) -> Any:
    return SimpleNamespace(
        tokenizer=tok,
        circuitlens_card={"name": name, "task_options": {"theory_of_mind": options}},
    )


def test_cards_that_disagree_are_an_error_until_the_caller_chooses(zoo_tokenizer) -> None:
    a = _carded(zoo_tokenizer, "model-a", {"instruction": False})
    b = _carded(zoo_tokenizer, "model-b", {"instruction": True})
    with pytest.raises(TaskFormatError, match="model-a.*model-b"):
        get_task("theory_of_mind", tokenizers=[a, b])
    # the advice: pass the options explicitly; the model it overrides is named
    with pytest.warns(TaskFormatWarning, match="model-b"):
        task = get_task("theory_of_mind", tokenizers=[a, b], instruction=False)
    assert task.config.instruction is False
    # cards that agree: the first model's format, no warning
    c = _carded(zoo_tokenizer, "model-c", {"instruction": False})
    with warnings.catch_warnings():
        warnings.simplefilter("error", TaskFormatWarning)
        assert get_task("theory_of_mind", tokenizers=[a, c]).config.instruction is False


def test_a_local_directory_card_is_read(make_llama_dir, tmp_path) -> None:
    path = tmp_path / "model"
    shutil.copytree(make_llama_dir(), path)
    (path / "card.json").write_text(
        json.dumps({"name": "mine", "task_options": {"theory_of_mind": {"instruction": False}}})
    )
    model = load_model(path)
    assert model_card(model)["task_options"]["theory_of_mind"] == {"instruction": False}
    assert get_task("theory_of_mind", model=model).config.instruction is False
    assert model_card(load_model(make_llama_dir())) is None  # no card.json: no card


def test_a_broken_card_is_named(make_llama_dir, tmp_path) -> None:
    from circuitlens import ModelLoadError

    path = tmp_path / "model"
    shutil.copytree(make_llama_dir(), path)
    (path / "card.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match=r"card\.json' is not valid JSON .*fix or remove it"):
        load_model(path)
    (path / "card.json").unlink()  # the advice
    assert model_card(load_model(path)) is None


def test_a_real_model_card_is_read(make_llama_dir, zoo_tokenizer, monkeypatch) -> None:
    """``real:`` models carry the card ``circuitlens real build`` writes (``task_options`` as
    ``{task: {...}}``, the zoo's schema): model_card and get_task(model=) read it."""
    from transformers import AutoModelForCausalLM

    import circuitlens.models.real as real

    name = "smollm2-entity-tracking-teacher"
    card = real.real_card(name) or {"name": name, "task": "entity_tracking"}
    card = card | {"task_options": {"entity_tracking": {"n_boxes": 3}}}  # not the default
    hf = AutoModelForCausalLM.from_pretrained(make_llama_dir())
    monkeypatch.setattr(real, "load_real_hf", lambda n, dtype=None: (hf, zoo_tokenizer, card))
    model = load_model(f"real:{name}")
    got = model_card(model)
    assert got is not None and got["task_options"] == {"entity_tracking": {"n_boxes": 3}}
    assert got["name"] == name and got["source"] == f"real:{name}"
    with warnings.catch_warnings():
        warnings.simplefilter("error", TaskFormatWarning)
        assert get_task("entity_tracking", model=model, n_test=10).config.n_boxes == 3
