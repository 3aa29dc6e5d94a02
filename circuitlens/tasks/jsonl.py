"""A user's own task from a JSON Lines file.

One JSON object a line: ``{"prompt": "...", "answer": " word"}``, optional
``"wrong_answers": [" a", " b"]``, ``"corrupted": "..."``, ``"corrupted_answer": " w"`` and
``"ablation": "..."``. Blank lines are skipped. The file's prompts are shuffled with the seed
and cut into train / val / test by the given fractions (a split with a fraction above 0 gets at
least one prompt). A line repeated exactly is kept once (a warning counts them); one prompt
given two different answers (or other fields) is an error naming both lines.

Every word of a prompt must be known to the tokenizer of each model it is scored with: a word
the tokenizer would read as its unknown token (a word-level tokenizer's ``<unk>``) is an error
naming the word when the prompts are tokenized.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from circuitlens.tasks.base import SPLITS, Prompt, Task, TaskError

log = logging.getLogger(__name__)

_KEYS = {"prompt", "answer", "wrong_answers", "corrupted", "corrupted_answer", "ablation"}


@dataclass(frozen=True)
class JsonlTaskConfig:
    """Options of a JSONL task.

    Attributes:
        path: the ``.jsonl`` file.
        seed: shuffles the prompts before splitting.
        val_fraction, test_fraction: split fractions; the rest is ``train``.
    """

    path: str
    seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.2

    def __post_init__(self) -> None:
        if not (
            0 <= self.val_fraction
            and 0 <= self.test_fraction
            and self.val_fraction + self.test_fraction <= 1
        ):
            raise TaskError(
                "jsonl: val_fraction and test_fraction must be >= 0 and sum to at most 1 "
                f"(got {self.val_fraction}, {self.test_fraction})"
            )


def _parse_line(path: str, lineno: int, line: str) -> Prompt:
    where = f"{path}, line {lineno}"
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise TaskError(f"{where}: not valid JSON ({e.msg}): {line[:80]!r}") from e
    if not isinstance(obj, dict):
        raise TaskError(
            f"{where}: expected a JSON object with 'prompt' and 'answer', got {line[:80]!r}"
        )
    missing = [k for k in ("prompt", "answer") if not isinstance(obj.get(k), str)]
    if missing:
        raise TaskError(
            f"{where}: missing or non-string {missing}; each line needs "
            '{"prompt": "...", "answer": " word"}'
        )
    unknown = set(obj) - _KEYS
    if unknown:
        raise TaskError(f"{where}: unknown keys {sorted(unknown)}; valid keys: {sorted(_KEYS)}")
    if "corrupted" in obj and "corrupted_answer" not in obj:
        raise TaskError(f"{where}: 'corrupted' needs a 'corrupted_answer' too")
    return Prompt(
        text=obj["prompt"],
        answer=obj["answer"],
        wrong_answers=tuple(obj.get("wrong_answers", ())),
        corrupted=obj.get("corrupted"),
        corrupted_answer=obj.get("corrupted_answer"),
        ablation=obj.get("ablation"),
    )


class JsonlTask(Task):
    """Prompts read from a file; see the module docstring."""

    name = "jsonl"

    def __init__(self, config: JsonlTaskConfig) -> None:
        super().__init__(config)
        path = Path(config.path)
        if not path.is_file():
            raise TaskError(f"jsonl: no such file {str(path)!r}")
        prompts: dict[str, tuple[int, Prompt]] = {}
        repeated: list[int] = []
        for lineno, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            p = _parse_line(str(path), lineno, line)
            if p.text not in prompts:
                prompts[p.text] = (lineno, p)
                continue
            first, q = prompts[p.text]
            if q != p:
                diff = [
                    k
                    for k in (
                        "answer",
                        "wrong_answers",
                        "corrupted",
                        "corrupted_answer",
                        "ablation",
                    )
                    if getattr(p, k) != getattr(q, k)
                ]
                raise TaskError(
                    f"jsonl: {path}, lines {first} and {lineno} give the same prompt different "
                    f"{', '.join(diff)} ({getattr(q, diff[0])!r} vs {getattr(p, diff[0])!r}): "
                    "a prompt has one answer. Keep one of the two lines."
                )
            repeated.append(lineno)
        if not prompts:
            raise TaskError(f"jsonl: {str(path)!r} holds no prompts")
        if repeated:
            log.warning(
                "jsonl: %s repeats %d line(s) exactly (lines %s); each prompt is kept once",
                path,
                len(repeated),
                ", ".join(map(str, repeated[:10])) + (" ..." if len(repeated) > 10 else ""),
            )
        self._all = [p for _, p in prompts.values()]

    def _build_splits(self) -> dict[str, list[Prompt]]:
        cfg = self.config
        order = list(self._all)
        random.Random(f"jsonl:{cfg.seed}").shuffle(order)
        n_val, n_test = (
            round(len(order) * f) or int(f > 0 and len(order) >= 3)
            for f in (cfg.val_fraction, cfg.test_fraction)
        )
        n_train = len(order) - n_val - n_test
        cuts = {
            "train": order[:n_train],
            "val": order[n_train : n_train + n_val],
            "test": order[n_train + n_val :],
        }
        return {s: cuts[s] for s in SPLITS}

    def empty_split_hint(self, split: str) -> str:
        return (
            f"{self.config.path} gives {len(self._all)} distinct prompt(s) and none went to "
            f"{split}: add prompts to the file, or raise val_fraction / test_fraction"
        )

    def make_prompt(self, rng: random.Random) -> Prompt:
        return rng.choice(self.split("train"))

    def sample(self, rng: random.Random, n: int, exclude: set[str] | None = None) -> list[Prompt]:
        train = self.split("train")
        if not train:
            raise TaskError("jsonl: the train split is empty; lower val_fraction/test_fraction")
        return [rng.choice(train) for _ in range(n)]


def jsonl_task(path: str | Path | None = None, **options: Any) -> JsonlTask:
    """Build a task from a JSONL file (``get_task("jsonl", path="my.jsonl")``)."""
    if path is None:
        raise TaskError('jsonl: pass the file, e.g. get_task("jsonl", path="prompts.jsonl")')
    options.pop("tokenizers", None)
    return JsonlTask(JsonlTaskConfig(path=str(path), **options))
