"""Do teacher and student tokenize alike, and if not, can they still be paired? One check,
made before any work.

Prompts are text and every model tokenizes them itself (named positions are found per model
from character spans), so a teacher and a student with different tokenizers (a cross-family
pair: Gemma-3 -> SmolLM2) work: CKA compares the two heads at the same words, and the
teacher's top token becomes the student's label through its text
(:class:`LabelTranslator`). What cannot cross tokenizers: the ``kd`` condition (it compares
two distributions over one vocabulary), CKA with every token as a row (``positions="tokens"``:
the token counts differ) and a task whose answer words are not single tokens for both.

:func:`check_tokenizers` says whether two models tokenize identically;
:func:`require_compatible_tokenizers` raises :class:`TokenizerMismatchError`, before any work,
where a pair cannot do what is asked of it; :func:`require_same_tokenizers` where they differ
at all.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from circuitlens.core.types import Model
from circuitlens.tasks.base import SPLITS, TaskError, get_tokenizer, single_token_id

#: texts every comparison encodes, besides the task's own
PROBES = (
    " the",
    "The apple is in Box A. Box A contains the",
    "Question: What does Bob believe the cup contains?\nAnswer: unknown",
)


class TokenizerMismatchError(TaskError):
    """Teacher and student do not tokenize the task alike (a cross-tokenizer pair)."""


def _task_texts(task: Any, per_split: int = 8) -> list[str]:
    texts: list[str] = []
    if task is None:
        return texts
    for split in SPLITS:
        try:
            prompts = task.split(split)[:per_split]
        except Exception:  # a split the task cannot give: compare what it can
            continue
        for p in prompts:
            texts += [p.text, p.answer, *p.wrong_answers]
            texts += [t for t in (p.corrupted, p.corrupted_answer, p.ablation) if t is not None]
    return texts


def _first_difference(a: Any, b: Any, texts: Iterable[str]) -> tuple[str, list, list] | None:
    for text in texts:
        ia = list(a(text, add_special_tokens=True)["input_ids"])
        ib = list(b(text, add_special_tokens=True)["input_ids"])
        if ia != ib:
            return text, ia, ib
    return None


def _difference(teacher: Model, student: Model, task: Any = None) -> str | None:
    """Why the two tokenize differently (None: they are identical for these texts)."""
    a, b = get_tokenizer(teacher), get_tokenizer(student)
    if a is not b:
        va, vb = a.get_vocab(), b.get_vocab()
        if va != vb:
            only = sorted(set(va) - set(vb))[:3] or sorted(set(vb) - set(va))[:3]
            moved = [t for t in va if t in vb and va[t] != vb[t]][:3]
            detail = f"e.g. {only} in one only" if only else f"e.g. {moved} at other ids"
            return f"vocabularies differ ({len(va)} vs {len(vb)} tokens; {detail})"
        for attr in ("bos_token_id", "eos_token_id", "unk_token_id"):
            if getattr(a, attr, None) != getattr(b, attr, None):
                return f"{attr} differs ({getattr(a, attr, None)} vs {getattr(b, attr, None)})"
        diff = _first_difference(a, b, [*PROBES, *_task_texts(task)])
        if diff is not None:
            text, ia, ib = diff
            return f"{text[:60]!r} is tokenized as {ia[:12]} vs {ib[:12]}"
    va_n = getattr(getattr(teacher, "cfg", None), "d_vocab", None)
    vb_n = getattr(getattr(student, "cfg", None), "d_vocab", None)
    if va_n is not None and vb_n is not None and va_n != vb_n:
        return f"the models' output widths differ (d_vocab {va_n} vs {vb_n})"
    return None


def check_tokenizers(teacher: Model, student: Model, task: Any = None) -> bool:
    """Whether teacher and student tokenize identically: same vocabulary ids and special
    tokens, the same tokens for a fixed probe set and the task's prompts and answers (when
    ``task`` is given), and the same output width (``d_vocab``).

    Args:
        teacher, student: loaded models (or Hugging Face tokenizers).
        task: the task whose prompts are compared too (a few per split).

    Returns:
        True when one batch of token ids can serve both models.
    """
    return _difference(teacher, student, task) is None


def require_same_tokenizers(teacher: Model, student: Model, task: Any = None) -> None:
    """Raise :class:`TokenizerMismatchError` unless :func:`check_tokenizers` holds."""
    why = _difference(teacher, student, task)
    if why is None:
        return
    from circuitlens.tasks.formats import model_label

    raise TokenizerMismatchError(
        f"teacher {model_label(teacher)} and student {model_label(student)} do not tokenize "
        f"the task alike: {why}. Use a pair that shares a tokenizer, or where a "
        "cross-tokenizer pair is allowed, require_compatible_tokenizers (distill_circuit and "
        "reproduce use it: each model tokenizes the text itself)."
    )


def _answer_words(task: Any) -> list[str]:
    words: list[str] = []
    for split in SPLITS:
        try:
            prompts = task.split(split)
        except Exception:
            continue
        for p in prompts:
            words += [p.answer, *p.wrong_answers]
    return list(dict.fromkeys(words))


#: the conditions whose loss compares the two output distributions over one vocabulary, so
#: that they cannot cross tokenizers: the condition registry (:mod:`circuitlens.distill.conditions`)
#: adds each such condition as it is registered
LOGIT_CONDITIONS: set[str] = set()


def require_compatible_tokenizers(
    teacher: Model,
    student: Model,
    task: Any = None,
    conditions: Iterable[str] = (),
    positions: str = "last",
) -> bool:
    """Whether teacher and student share a tokenizer (True) or are a cross-tokenizer pair that
    can run ``conditions`` (False); otherwise :class:`TokenizerMismatchError`, naming what
    cannot cross and the fix.

    Args:
        teacher, student: loaded models (or tokenizers).
        task: its answer words must be single tokens for both.
        conditions: the training conditions to run; those in :data:`LOGIT_CONDITIONS`
            (``kd``: they compare the two output distributions) cannot cross tokenizers.
        positions: the CKA rows (``"tokens"`` cannot cross tokenizers).
    """
    why = _difference(teacher, student, task)
    if why is None:
        return True
    problems = []
    logit = sorted(set(conditions) & LOGIT_CONDITIONS)
    if len(logit) == 1:
        problems.append(
            f"the {logit[0]} condition (it compares the two output distributions over one "
            "vocabulary: drop it from the conditions)"
        )
    elif logit:
        problems.append(
            f"the {', '.join(logit)} conditions (they compare the two output distributions "
            "over one vocabulary: drop them from the conditions)"
        )
    if positions == "tokens":
        problems.append(
            'CKA with every token as a row (positions="tokens": the models cut the text into '
            'different numbers of tokens; use positions="last" or "circuit")'
        )
    if task is not None:
        a, b = get_tokenizer(teacher), get_tokenizer(student)
        bad = [
            w
            for w in _answer_words(task)
            if single_token_id(a, w) is None or single_token_id(b, w) is None
        ]
        if bad:
            problems.append(
                f"answer words that are not single tokens for both ({bad[:5]}: build the task "
                "with get_task(name, tokenizers=[teacher, student]))"
            )
    if not problems:
        return False
    from circuitlens.tasks.formats import model_label

    raise TokenizerMismatchError(
        f"teacher {model_label(teacher)} and student {model_label(student)} tokenize "
        f"differently ({why}). A cross-tokenizer pair works (each model tokenizes the text, "
        "labels cross by their text), but not with: " + "; ".join(problems) + "."
    )


class LabelTranslator:
    """Teacher token ids -> the student's ids of the same text (a cross-tokenizer pair's
    labels): ``-1`` where the text is not a single student token."""

    def __init__(self, teacher: Model, student: Model) -> None:
        self.teacher, self.student = get_tokenizer(teacher), get_tokenizer(student)
        self._memo: dict[int, int] = {}

    def one(self, token: int) -> int:
        if token not in self._memo:
            text = self.teacher.decode([token])
            found = single_token_id(self.student, text) if text else None
            self._memo[token] = -1 if found is None else found
        return self._memo[token]

    def __call__(self, ids: Any) -> Any:
        import torch

        return torch.tensor([self.one(int(i)) for i in ids.tolist()], dtype=torch.long)
