from __future__ import annotations

import json
import random
import re

import pytest
import torch

from circuitlens import get_task, tokenize_prompts
from circuitlens.tasks import TaskError
from circuitlens.tasks.entity_tracking import OBJECTS, single_token_words
from circuitlens.tasks.theory_of_mind import Story, believed


@pytest.mark.parametrize("name", ["entity_tracking", "theory_of_mind"])
def test_deterministic_from_seed(name: str) -> None:
    a = get_task(name, seed=3, n_train=50, n_val=20, n_test=20)
    b = get_task(name, seed=3, n_train=50, n_val=20, n_test=20)
    c = get_task(name, seed=4, n_train=50, n_val=20, n_test=20)
    for split in ("train", "val", "test"):
        assert [p.text for p in a.split(split)] == [p.text for p in b.split(split)]
        assert [p.corrupted for p in a.split(split)] == [p.corrupted for p in b.split(split)]
    assert [p.text for p in a.split("test")] != [p.text for p in c.split("test")]


@pytest.mark.parametrize("name", ["entity_tracking", "theory_of_mind"])
def test_splits_disjoint(name: str) -> None:
    opts = {"n_boxes": 2} if name == "entity_tracking" else {}
    task = get_task(name, seed=0, n_train=300, n_val=100, n_test=100, **opts)
    texts = {s: {p.text for p in task.split(s)} for s in ("train", "val", "test")}
    assert [len(v) for v in texts.values()] == [300, 100, 100]
    assert not texts["train"] & texts["val"]
    assert not texts["train"] & texts["test"]
    assert not texts["val"] & texts["test"]
    fresh = task.sample(random.Random(1), 200)
    assert not {p.text for p in fresh} & (texts["val"] | texts["test"])


def test_entity_tracking_prompt_structure() -> None:
    task = get_task("entity_tracking", n_boxes=7, seed=0, n_test=30)
    for p in task.split("test"):
        clauses = re.findall(r"[Tt]he (\w+) is in Box ([A-Z])", p.text)
        assert len(clauses) == 7
        query = re.search(r"\. Box ([A-Z]) contains the$", p.text).group(1)
        box = dict((lab, obj) for obj, lab in clauses)
        assert p.answer == " " + box[query]
        assert set(p.wrong_answers) == {" " + o for o, _ in clauses} - {p.answer}
        assert len({o for o, _ in clauses}) == 7 and len({lab for _, lab in clauses}) == 7
        # the ablation reference keeps the context and queries a label no box has
        abl_query = re.search(r"Box ([A-Z]) contains the$", p.ablation).group(1)
        assert abl_query not in box and p.ablation.rsplit(".", 1)[0] == p.text.rsplit(".", 1)[0]
        # the counterfactual queries a different box position
        c_clauses = re.findall(r"[Tt]he (\w+) is in Box ([A-Z])", p.corrupted)
        c_query = re.search(r"Box ([A-Z]) contains the$", p.corrupted).group(1)
        c_index = [lab for _, lab in c_clauses].index(c_query)
        assert c_index != [lab for _, lab in clauses].index(query)
        assert p.corrupted_answer == " " + c_clauses[c_index][0]


def test_named_positions_match_token_strings(zoo_tokenizer) -> None:
    task = get_task("entity_tracking", n_boxes=5, seed=1, n_test=16)
    batch = task.batch(zoo_tokenizer, "test")
    for row, p in enumerate(batch.prompts):
        toks = zoo_tokenizer.convert_ids_to_tokens(batch.tokens[row].tolist())
        query = re.search(r"Box ([A-Z]) contains the$", p.text).group(1)
        assert toks[batch.positions["last"][row]] == "the"
        assert toks[batch.positions["last"][row]] == toks[-1]
        assert toks[batch.positions["query_label"][row]] == query
        prev = int(batch.positions["prev_query_label"][row])
        assert toks[prev] == query and prev < int(batch.positions["query_label"][row])
        assert toks[prev - 1] == "Box" and toks[prev + 1] in {",", "."}
        assert toks[0] == "<bos>"
    # the corrupted prompts carry their own positions
    for row in range(len(batch)):
        toks = zoo_tokenizer.convert_ids_to_tokens(batch.corrupted_tokens[row].tolist())
        q = batch.corrupted_positions["query_label"][row]
        assert toks[batch.corrupted_positions["prev_query_label"][row]] == toks[q]


def test_theory_of_mind_positions_and_answers(zoo_tokenizer) -> None:
    task = get_task("theory_of_mind", seed=0, n_test=40)
    batch = task.batch(zoo_tokenizer, "test")
    n_unknown = 0
    for row, p in enumerate(batch.prompts):
        toks = zoo_tokenizer.convert_ids_to_tokens(batch.tokens[row].tolist())
        cq, oq = p.meta["query"]
        assert toks[batch.positions["last"][row]] == ":"
        assert toks[batch.positions["query_character"][row]] == cq
        assert toks[batch.positions["query_container"][row]] == oq
        m = re.search(
            r"Story: (\w+) and (\w+) .* opaque (\w+) and fills it with (\w+)\. "
            r"Then \w+ grabs another opaque (\w+) and fills it with (\w+)\. "
            r"\w+ (can|cannot) observe",
            p.text,
        )
        c1, c2, o1, s1, o2, s2, vis = m.groups()
        assert toks[batch.positions["state_1"][row]] == s1
        assert toks[batch.positions["state_2"][row]] == s2
        assert p.answer.strip() == believed(Story(c1, c2, o1, o2, s1, s2, vis == "can"), cq, oq)
        n_unknown += p.answer == " unknown"
        assert p.corrupted_answer != p.answer  # the counterfactual always changes the answer
    assert 0 < n_unknown < len(batch)
    assert batch.tokens.shape == batch.corrupted_tokens.shape == batch.ablation_tokens.shape


def test_believed_hand_cases() -> None:
    args = ("Bob", "Carla", "jar", "cup", "tea", "gin")
    hidden, seen = Story(*args, False), Story(*args, True)
    assert believed(hidden, "Bob", "jar") == "tea"
    assert believed(hidden, "Carla", "cup") == "gin"
    assert believed(hidden, "Bob", "cup") == "unknown"
    assert believed(seen, "Bob", "cup") == "gin"
    assert believed(seen, "Carla", "jar") == "unknown"


class _SplitTokenizer:
    """A stand-in tokenizer for which some words are two tokens."""

    unk_token_id = 0

    def __init__(self, multi: set[str]) -> None:
        self.multi = multi

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [1, 2] if text.strip() in self.multi else [hash(text) % 1000 + 3]

    def convert_tokens_to_ids(self, t: str) -> int:
        return 1


def test_single_token_filtering() -> None:
    tok = _SplitTokenizer({"television", "newspaper", "Q"})
    kept = single_token_words(OBJECTS, [tok])
    assert "television" not in kept and "newspaper" not in kept and "apple" in kept
    task = get_task("entity_tracking", tokenizers=[tok], n_test=50)
    words = {p.answer.strip() for p in task.split("test")} | {
        w.strip() for p in task.split("test") for w in p.wrong_answers
    }
    assert not words & {"television", "newspaper"}
    assert all("Box Q" not in p.text for p in task.split("test"))


def test_non_single_token_answer_is_named(zoo_tokenizer, tmp_path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text(
        json.dumps({"prompt": "Box A contains the", "answer": " zebra crossing"}) + "\n"
    )
    task = get_task("jsonl", path=path, val_fraction=0, test_fraction=1)
    with pytest.raises(TaskError, match="' zebra crossing'"):
        task.batch(zoo_tokenizer, "test")


@pytest.mark.parametrize(
    ("opts", "match"),
    [
        ({"n_boxes": 8}, "n_boxes must be between 2 and 7"),
        ({"n_boxes": 1}, "n_boxes must be between 2 and 7"),
        ({"n_test": -1}, "n_test must be >= 0"),
        ({"colour": "red"}, "bad option"),
    ],
)
def test_bad_entity_tracking_options(opts, match) -> None:
    with pytest.raises(TaskError, match=match):
        get_task("entity_tracking", **opts)


def test_bad_task_names_and_options() -> None:
    with pytest.raises(TaskError, match="valid tasks: entity_tracking, theory_of_mind, jsonl"):
        get_task("ioi")
    with pytest.raises(TaskError, match="p_visible"):
        get_task("theory_of_mind", p_visible=1.5)
    with pytest.raises(TaskError, match="split holds 5"):
        get_task("entity_tracking", n_test=5).split("test", 6)


def test_jsonl_task(tmp_path, zoo_tokenizer) -> None:
    lines = [
        {
            "prompt": f"Box {c} contains the",
            "answer": " apple",
            "wrong_answers": [" car"],
            "corrupted": f"Box {c} contains the",
            "corrupted_answer": " car",
        }
        for c in "ABCDEFGHIJ"
    ]
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    task = get_task("jsonl", path=str(path), seed=0, val_fraction=0.2, test_fraction=0.3)
    sizes = [len(task.split(s)) for s in ("train", "val", "test", "probe")]
    assert sizes == [4, 2, 3, 1]  # probe: the default 0.1, cut from what train held
    batch = task.batch(zoo_tokenizer, "test")
    assert batch.answer_ids.tolist() == [zoo_tokenizer.convert_tokens_to_ids("apple")] * 3
    assert batch.corrupted_answer_ids.tolist() == [zoo_tokenizer.convert_tokens_to_ids("car")] * 3


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ('{"prompt": "x"', r"line 2: not valid JSON"),
        ('{"prompt": "x"}', r"line 2: missing or non-string \['answer'\]"),
        ('["x"]', r"line 2: expected a JSON object"),
        ('{"prompt": "x", "answer": " y", "hint": 1}', r"line 2: unknown keys \['hint'\]"),
    ],
)
def test_jsonl_malformed_line_is_named(tmp_path, line, match) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"prompt": "a", "answer": " b"}) + "\n" + line + "\n")
    with pytest.raises(TaskError, match=match):
        get_task("jsonl", path=path)


def test_prompts_of_unequal_length_are_right_padded(zoo_tokenizer) -> None:
    from circuitlens import Prompt

    prompts = [
        Prompt("Box A contains the", " apple"),
        Prompt("The car is in Box B. Box B contains the", " car"),
    ]
    batch = tokenize_prompts(zoo_tokenizer, prompts)
    assert batch.positions["last"].tolist() == [4, 11]
    assert batch.tokens[0, 5:].eq(zoo_tokenizer.pad_token_id).all()
    assert torch.equal(
        batch.tokens[1, :12],
        torch.tensor(zoo_tokenizer("The car is in Box B. Box B contains the")["input_ids"]),
    )
