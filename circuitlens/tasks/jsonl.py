"""A user's own task from a JSON Lines file.

One JSON object a line: ``{"prompt": "...", "answer": " word"}``, optional
``"wrong_answers": [" a", " b"]``, ``"corrupted": "..."``, ``"corrupted_answer": " w"`` and
``"ablation": "..."``. Blank lines are skipped. The file's prompts are shuffled with the seed
and cut into train / val / test / probe by the given fractions (``probe``: the prompts that
choose heads, cut from the end of what would otherwise be train, so that val and test are the
prompts they were before the probe split existed; a split with a fraction above 0 gets at
least one prompt, probe where train keeps one). The splits share no prompt text: a line
repeated exactly is kept once (a warning counts them), so that it cannot land in two splits;
one prompt given two different answers (or other fields) is an error naming both lines.

Named positions: ``"positions": {"S2": [start, end]}`` names token positions as character spans
``prompt[start:end]`` (end exclusive, as Python slices). Tokenization takes the token that covers
the span's *first* character (the rule of every task, :mod:`circuitlens.tasks.base`), so start
the span on the word, not on the space before it; to name the last token of a word the
tokenizer cuts in several, give the span of its last character. ``"corrupted_positions"`` names
the same positions in the corrupted prompt (a line with both ``positions`` and ``corrupted``
needs it). Every line names the same positions; ``last`` (the final token) is always defined
and cannot be named. The names then work as a built-in task's do: ``batch.positions["S2"]``,
a circuit plan's positions, the circuit positions of training.

Circuit plan: a JSON file of path-patching steps (format and rules:
:mod:`circuitlens.tasks.plan`), ``get_task("jsonl", path="ioi.jsonl", plan="my.plan.json")``, or
by default ``<name>.plan.json`` beside ``<name>.jsonl`` when there is one. With a plan,
:func:`~circuitlens.circuits.find.find_circuit` runs path patching on the task instead of
activation patching; every line then needs a ``corrupted`` prompt.

Every word of a prompt must be known to the tokenizer of each model it is scored with: a word
the tokenizer would read as its unknown token (a word-level tokenizer's ``<unk>``) is an error
naming the word when the prompts are tokenized.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from circuitlens.tasks.base import SPLITS, Prompt, Task, TaskError
from circuitlens.tasks.plan import read_plan

log = logging.getLogger(__name__)

_KEYS = {
    "prompt",
    "answer",
    "wrong_answers",
    "corrupted",
    "corrupted_answer",
    "ablation",
    "positions",
    "corrupted_positions",
}
_FIELDS = (
    "answer",
    "wrong_answers",
    "corrupted",
    "corrupted_answer",
    "ablation",
    "spans",
    "corrupted_spans",
)


#: the probe split's share of a file's prompts where ``probe_fraction`` is not given
DEFAULT_PROBE_FRACTION = 0.1


@dataclass(frozen=True)
class JsonlTaskConfig:
    """Options of a JSONL task.

    Attributes:
        path: the ``.jsonl`` file.
        seed: shuffles the prompts before splitting.
        val_fraction, test_fraction, probe_fraction: split fractions; the rest is ``train``.
            ``probe_fraction=None`` (the default): 0.1, or what val and test leave where that
            is less (``test_fraction=1`` puts every prompt in test, as before the probe
            split existed).
        plan: the circuit plan's JSON file; ``None``: ``<name>.plan.json`` beside the
            ``.jsonl`` file when there is one (else no plan: activation patching).
    """

    path: str
    seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    plan: str | None = None
    probe_fraction: float | None = None

    def __post_init__(self) -> None:
        fractions = (self.val_fraction, self.test_fraction, self.probe_fraction)
        if not (
            all(f is None or 0 <= f for f in fractions)
            and self.val_fraction + self.test_fraction + (self.probe_fraction or 0) <= 1
        ):
            raise TaskError(
                "jsonl: val_fraction, test_fraction and probe_fraction must be >= 0 and sum to "
                f"at most 1 (got {', '.join(map(str, fractions))})"
            )

    @property
    def probe_share(self) -> float:
        """The probe split's fraction: ``probe_fraction``, or its default (0.1, or what val and
        test leave where that is less)."""
        if self.probe_fraction is not None:
            return self.probe_fraction
        return max(0.0, min(DEFAULT_PROBE_FRACTION, 1 - self.val_fraction - self.test_fraction))


def _spans(where: str, obj: dict[str, Any], key: str, text: str) -> dict[str, tuple[int, int]]:
    """The named character spans of ``obj[key]``, each checked to lie inside ``text``."""
    raw = obj.get(key, {})
    example = f'"{key}": {{"S2": [start, end]}}'
    if not isinstance(raw, dict):
        raise TaskError(f"{where}: {key!r} must be an object of name -> span, like {example}")
    out: dict[str, tuple[int, int]] = {}
    for name, span in raw.items():
        if name == "last" or not name:
            raise TaskError(
                f"{where}: {key!r} names position {name!r}; 'last' is always the final token "
                "and a name must not be empty: rename the position"
            )
        ints = isinstance(span, list) and len(span) == 2
        ints = ints and all(isinstance(x, int) and not isinstance(x, bool) for x in span)
        if not ints:
            raise TaskError(
                f"{where}: position {name!r} in {key!r} is {span!r}; write a character span "
                f"[start, end] like {example}"
            )
        start, end = span
        if not 0 <= start < end <= len(text):
            raise TaskError(
                f"{where}: position {name!r} in {key!r} spans [{start}, {end}], outside the "
                f"{len(text)} characters of its prompt {text[:60]!r}: give 0 <= start < end <= "
                f"{len(text)} (end exclusive, as in text[start:end])"
            )
        out[name] = (start, end)
    return out


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
    if "corrupted_positions" in obj and not isinstance(obj.get("corrupted"), str):
        raise TaskError(f"{where}: 'corrupted_positions' needs a 'corrupted' prompt")
    spans = _spans(where, obj, "positions", obj["prompt"])
    c_spans: dict[str, tuple[int, int]] = {}
    if isinstance(obj.get("corrupted"), str):
        c_spans = _spans(where, obj, "corrupted_positions", obj["corrupted"])
        if set(c_spans) != set(spans):
            raise TaskError(
                f"{where}: 'corrupted_positions' must name the positions of 'positions' in the "
                f"corrupted prompt (missing {sorted(set(spans) - set(c_spans))}, extra "
                f"{sorted(set(c_spans) - set(spans))})"
            )
    return Prompt(
        text=obj["prompt"],
        answer=obj["answer"],
        wrong_answers=tuple(obj.get("wrong_answers", ())),
        spans=spans,
        corrupted=obj.get("corrupted"),
        corrupted_answer=obj.get("corrupted_answer"),
        corrupted_spans=c_spans,
        ablation=obj.get("ablation"),
        meta={"source": where},
    )


def _same_names(path: Path, prompts: list[tuple[int, Prompt]]) -> tuple[str, ...]:
    """The position names every line gives (those of the first line), else an error."""
    first_line, first = prompts[0]
    names = tuple(first.spans)
    for lineno, p in prompts[1:]:
        if set(p.spans) != set(names):
            raise TaskError(
                f"jsonl: {path}, line {lineno} names positions {sorted(p.spans)} but line "
                f"{first_line} names {sorted(names)} (missing {sorted(set(names) - set(p.spans))}"
                f", extra {sorted(set(p.spans) - set(names))}): every line names the same "
                "positions"
            )
    return ("last", *names)


def _read(path: Path) -> list[tuple[int, Prompt]]:
    """The file's prompts with their line numbers, each distinct prompt once."""
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
        if replace(q, meta={}) != replace(p, meta={}):
            diff = [k for k in _FIELDS if getattr(p, k) != getattr(q, k)]
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
    return list(prompts.values())


class JsonlTask(Task):
    """Prompts read from a file; see the module docstring.

    Attributes:
        position_names: ``last`` and the positions the file's lines name.
        circuit_plan: the plan file's steps, or ``None`` without a plan.
    """

    name = "jsonl"

    def __init__(self, config: JsonlTaskConfig) -> None:
        super().__init__(config)
        path = Path(config.path)
        if not path.is_file():
            raise TaskError(f"jsonl: no such file {str(path)!r}")
        prompts = _read(path)
        self.position_names = _same_names(path, prompts)
        self._all = [p for _, p in prompts]
        plan = Path(config.plan) if config.plan is not None else path.with_suffix(".plan.json")
        if config.plan is not None or plan.is_file():
            self.circuit_plan = read_plan(plan, self.position_names)
            log.info("jsonl: %s follows the circuit plan %s", path, plan)
            lacking = [n for n, p in prompts if p.corrupted is None]
            if lacking:
                raise TaskError(
                    f"jsonl: the circuit plan {plan} runs path patching, which needs a "
                    f"'corrupted' prompt on every line of {path} (line {lacking[0]} has none, "
                    f"and {len(lacking) - 1} more): add them, or pass another file"
                )

    def _build_splits(self) -> dict[str, list[Prompt]]:
        cfg = self.config
        order = list(self._all)
        random.Random(f"jsonl:{cfg.seed}").shuffle(order)
        n_val, n_test = (
            round(len(order) * f) or int(f > 0 and len(order) >= 3)
            for f in (cfg.val_fraction, cfg.test_fraction)
        )
        rest = len(order) - n_val - n_test  # what train held before the probe split
        share = cfg.probe_share
        # at least one prompt where the share is above 0 and train keeps one
        n_probe = min(round(len(order) * share) or int(share > 0 and rest > 1), rest)
        n_train = rest - n_probe
        cuts = {
            "train": order[:n_train],
            "probe": order[n_train:rest],
            "val": order[rest : rest + n_val],
            "test": order[rest + n_val :],
        }
        return {s: cuts[s] for s in SPLITS}

    def empty_split_hint(self, split: str) -> str:
        return (
            f"{self.config.path} gives {len(self._all)} distinct prompt(s) and none went to "
            f"{split}: add prompts to the file, or raise {self._fraction(split)}"
        )

    def split_size_hint(self, split: str, n: int) -> str:
        return (
            f"{self.config.path} gives {len(self._all)} distinct prompt(s), "
            f"{len(self.split(split))} of them to {split}: raise {self._fraction(split)}, or add "
            "prompts to the file"
        )

    @staticmethod
    def _fraction(split: str) -> str:
        """The option that sizes ``split`` (train: what the fractions leave)."""
        if split == "train":
            return "train's share (lower val_fraction / test_fraction / probe_fraction)"
        return f"{split}_fraction (get_task('jsonl', path=..., {split}_fraction=0.3))"

    def make_prompt(self, rng: random.Random) -> Prompt:
        return rng.choice(self.split("train"))

    def sample(self, rng: random.Random, n: int, exclude: set[str] | None = None) -> list[Prompt]:
        train = self.split("train")
        if not train:
            raise TaskError(
                "jsonl: the train split is empty; lower val_fraction / test_fraction / "
                "probe_fraction"
            )
        return [rng.choice(train) for _ in range(n)]


def jsonl_task(path: str | Path | None = None, **options: Any) -> JsonlTask:
    """Build a task from a JSONL file (``get_task("jsonl", path="my.jsonl")``; a circuit plan
    with ``plan="my.plan.json"``, or ``my.plan.json`` beside the file by default)."""
    if path is None:
        raise TaskError('jsonl: pass the file, e.g. get_task("jsonl", path="prompts.jsonl")')
    options.pop("tokenizers", None)
    if options.get("plan") is not None:
        options["plan"] = str(options["plan"])
    return JsonlTask(JsonlTaskConfig(path=str(path), **options))
