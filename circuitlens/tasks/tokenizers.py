"""Do teacher and student tokenize alike? One check, made before any work.

Training compares the student's logits with the teacher's token by token (the teacher's top
token is the student's label; KD compares whole distributions), and one batch of token ids
serves both, so today a pair must share its tokenizer: the same vocabulary (ids) and the same
tokens for the task's prompts and answers. :func:`check_tokenizers` says whether they do (later
work on per-model batches branches on it); :func:`require_same_tokenizers` raises
:class:`TokenizerMismatchError`, with an example of the difference, where they do not.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from circuitlens.tasks.base import TaskError, get_tokenizer

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
    for split in ("train", "val", "test"):
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


def _difference(teacher: Any, student: Any, task: Any = None) -> str | None:
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


def check_tokenizers(teacher: Any, student: Any, task: Any = None) -> bool:
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


def require_same_tokenizers(teacher: Any, student: Any, task: Any = None) -> None:
    """Raise :class:`TokenizerMismatchError` unless :func:`check_tokenizers` holds."""
    why = _difference(teacher, student, task)
    if why is None:
        return
    from circuitlens.tasks.formats import model_label

    raise TokenizerMismatchError(
        f"teacher {model_label(teacher)} and student {model_label(student)} do not tokenize "
        f"the task alike: {why}. Training reads the teacher's tokens as the student's labels "
        "and compares positions token by token, so a cross-tokenizer pair needs both models "
        "to tokenize the text themselves (per-model batches), which circuitlens does not do "
        "yet. Use a teacher and a student that share a tokenizer (e.g. the zoo's teacher and "
        "student, or two models of one family)."
    )
