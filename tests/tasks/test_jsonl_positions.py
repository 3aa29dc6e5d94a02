"""Named positions of a JSONL task: character spans to tokens, and the errors that name the line."""

from __future__ import annotations

import json
import logging

import pytest

from circuitlens import get_task
from circuitlens.tasks import TaskError


def test_spans_map_to_the_tokens_they_name(ioi_like_jsonl, zoo_tokenizer) -> None:
    """Hand-checked: "<bos> Bob and Carla are working in a busy restaurant . Carla can observe"
    (token 0 is BOS): IO = Bob (1), S1 = Carla (3), S2 = Carla (11); in the corrupted prompt S2
    is the second-clause name, Bob (11)."""
    path = ioi_like_jsonl(n=4)
    task = get_task("jsonl", path=path, val_fraction=0, test_fraction=1)
    assert task.position_names == ("last", "IO", "S1", "S2")
    batch = task.batch(zoo_tokenizer, "test")
    row = next(i for i, p in enumerate(batch.prompts) if p.text.startswith("Bob and Carla"))
    assert batch.prompts[row].text == (
        "Bob and Carla are working in a busy restaurant. Carla can observe"
    )
    got = {name: int(v[row]) for name, v in batch.positions.items()}
    assert got == {"last": 13, "IO": 1, "S1": 3, "S2": 11}
    corrupted = {name: int(v[row]) for name, v in batch.corrupted_positions.items()}
    assert corrupted == {"last": 13, "IO": 1, "S1": 3, "S2": 11}
    tokens = zoo_tokenizer.convert_ids_to_tokens(batch.tokens[row].tolist())
    c_tokens = zoo_tokenizer.convert_ids_to_tokens(batch.corrupted_tokens[row].tolist())
    assert [tokens[got[k]] for k in ("IO", "S1", "S2")] == ["Bob", "Carla", "Carla"]
    assert c_tokens[corrupted["S2"]] == "Bob"
    # every prompt: the names sit where the spans say
    for r, p in enumerate(batch.prompts):
        toks = zoo_tokenizer.convert_ids_to_tokens(batch.tokens[r].tolist())
        for name, (a, b) in p.spans.items():
            assert toks[int(batch.positions[name][r])] == p.text[a:b]


def test_a_span_covers_the_token_of_its_first_character(tmp_path, zoo_tokenizer) -> None:
    """The rule of every task: the token covering the span's first character (a span over
    two words names the first one's token)."""
    path = tmp_path / "t.jsonl"
    line = {"prompt": "Bob and Carla can observe", "answer": " Bob"}
    line["positions"] = {"pair": [0, 13], "tail": [12, 13]}  # "Bob and Carla", "a"
    path.write_text(json.dumps(line) + "\n")
    batch = get_task("jsonl", path=path, val_fraction=0, test_fraction=1).batch(
        zoo_tokenizer, "test"
    )
    assert int(batch.positions["pair"][0]) == 1 and int(batch.positions["tail"][0]) == 3


def _line(**extra) -> str:
    base = {"prompt": "Bob and Carla can observe", "answer": " Bob"}
    return json.dumps({**base, **extra})


@pytest.mark.parametrize(
    ("lines", "match"),
    [
        (
            [_line(positions={"S": [0, 3]}), _line(prompt="Carla can observe")],
            r"line 2 names positions \[\] but line 1 names \['S'\] \(missing \['S'\]",
        ),
        (
            [_line(positions={"S": [0, 3]}), _line(prompt="Carla", positions={"T": [0, 5]})],
            r"line 2 names positions \['T'\].*extra \['T'\]",
        ),
        ([_line(positions={"S": [20, 30]})], r"line 1: position 'S' .* spans \[20, 30\], outside"),
        ([_line(positions={"S": [3, 3]})], r"outside the 25 characters"),
        ([_line(positions={"S": [0, "3"]})], r"line 1: position 'S' in 'positions' is \[0, '3'\]"),
        ([_line(positions={"last": [0, 3]})], r"'last' is always the final token"),
        ([_line(positions=[[0, 3]])], r"'positions' must be an object of name -> span"),
        (
            [_line(positions={"S": [0, 3]}, corrupted="Carla can observe", corrupted_answer=" A")],
            r"'corrupted_positions' must name the positions .* \(missing \['S'\]",
        ),
        ([_line(corrupted_positions={"S": [0, 3]})], r"'corrupted_positions' needs a 'corrupted'"),
        (
            [
                _line(
                    positions={"S": [0, 3]},
                    corrupted="Carla",
                    corrupted_answer=" Bob",
                    corrupted_positions={"S": [0, 9]},
                )
            ],
            r"position 'S' in 'corrupted_positions' spans \[0, 9\], outside the 5 characters",
        ),
    ],
)
def test_bad_positions_name_the_file_and_line(tmp_path, lines, match) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(TaskError, match=match) as info:
        get_task("jsonl", path=path)
    assert str(path) in str(info.value)


def test_a_span_no_token_covers_names_the_line(tmp_path, zoo_tokenizer) -> None:
    """A span that starts on the space before a word: the word-level tokenizer's tokens leave
    the space out, so no token covers it; the error names the file, the line and the fix."""
    path = tmp_path / "t.jsonl"
    ok = _line(positions={"IO": [8, 13]})
    bad = _line(prompt="Carla and Bob can observe", positions={"IO": [9, 13]})
    path.write_text(ok + "\n" + bad)
    task = get_task("jsonl", path=path, val_fraction=0, test_fraction=1)
    with pytest.raises(TaskError, match=rf"{path}, line 2: no token covers character 9 of "):
        task.batch(zoo_tokenizer, "test")
    lines = [
        _line(
            positions={"S": [0, 3]},
            corrupted="Bob and Carla can observe",
            corrupted_answer=" Carla",
            corrupted_positions={"S": [3, 5]},
        )
    ]
    path.write_text("\n".join(lines) + "\n")
    task = get_task("jsonl", path=path, val_fraction=0, test_fraction=1)
    with pytest.raises(TaskError, match=r"line 1 \(corrupted\): no token covers character 3"):
        task.batch(zoo_tokenizer, "test")


def test_repeated_lines_with_positions_are_kept_once(ioi_like_jsonl, caplog) -> None:
    path = ioi_like_jsonl(n=3)
    path.write_text(path.read_text() + path.read_text().splitlines()[0] + "\n")
    with caplog.at_level(logging.WARNING):
        task = get_task("jsonl", path=path, val_fraction=0, test_fraction=1)
    assert len(task.split("test")) == 3 and "repeats 1 line(s)" in caplog.text
    first = json.loads(path.read_text().splitlines()[0])
    first["positions"]["S2"] = [0, 3]
    path.write_text(path.read_text() + json.dumps(first) + "\n")
    with pytest.raises(TaskError, match=r"lines 1 and 5 give the same prompt different spans"):
        get_task("jsonl", path=path)


def test_named_positions_are_circuit_positions_for_training(ioi_like_jsonl) -> None:
    """A circuit found on the task puts its groups at the file's names, which training's
    ``positions="circuit"`` rows read (``token_rows``) like a built-in task's."""
    from circuitlens.distill.teacher_cache import token_rows
    from circuitlens.models.zoo import build_tokenizer

    task = get_task("jsonl", path=ioi_like_jsonl(n=4), val_fraction=0, test_fraction=1)
    batch = task.batch(build_tokenizer(), "test")
    assert "S2" in task.position_names
    rows = token_rows(batch, None, "S2")
    assert rows.shape == (4, 1) and rows[:, 0].tolist() == batch.positions["S2"].tolist()
