"""Prompts, tasks and per-model prompt batches.

A :class:`Task` produces text :class:`Prompt` objects, deterministically from a seed, in four
splits that share no prompt text: ``train`` (training), ``val`` (learning rates, stopping),
``test`` (everything reported) and ``probe`` (everything that *chooses*: ablation sweeps, the
circuit search, the head map), so that the heads trained are never chosen on the prompts they
are scored on. ``probe`` is drawn after the other three from the same random stream, so adding
it left the train, val and test prompts of every seed as they were. Text is model-agnostic;
:meth:`Task.batch` tokenizes it for one model, so a teacher and a student with different
tokenizers share a task.

Every prompt names its token positions as character spans of its text (``query_label``...);
tokenization turns each span into the index of the token that covers the span's first
character (with the tokenizer's offset mapping), so a span starts on a character of the word,
not on the space before it. ``last`` (the final prompt token, where the answer is read) is
always defined.
"""

from __future__ import annotations

import random
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, get_args

import torch
from jaxtyping import Int
from torch import Tensor

from circuitlens.core.types import PlanStep


class TaskError(ValueError):
    """A task option, prompt or tokenizer cannot express the task."""


@dataclass(frozen=True)
class Prompt:
    """One task prompt as text.

    Attributes:
        text: The prompt, ending just before the answer.
        answer: The answer continuation, with its leading space (``" computer"``).
        wrong_answers: Plausible wrong continuations (for logit differences).
        spans: Named token positions as ``(start, end)`` character spans of ``text``.
        corrupted: A counterfactual prompt of the same shape, for activation/path patching.
        corrupted_answer: The answer to ``corrupted``.
        corrupted_spans: Named positions of ``corrupted``.
        ablation: A reference prompt for mean ablation (same shape, uninformative query).
        meta: Free-form facts about how the prompt was generated; ``meta["source"]`` (a file
            and line, where a prompt was read from one) is named in tokenization errors.
    """

    text: str
    answer: str
    wrong_answers: tuple[str, ...] = ()
    spans: dict[str, tuple[int, int]] = field(default_factory=dict)
    corrupted: str | None = None
    corrupted_answer: str | None = None
    corrupted_spans: dict[str, tuple[int, int]] = field(default_factory=dict)
    ablation: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class PromptBatch:
    """Prompts tokenized for one model. Prompts of unequal length are right-padded.

    Attributes:
        tokens: ``[batch, pos]`` token ids (BOS first where the model uses one).
        answer_ids: ``[batch]`` first token of each answer.
        wrong_ids: ``[batch, n_wrong]`` wrong-answer tokens, ``-1`` where a prompt has fewer.
        positions: name -> ``[batch]`` token index (``last`` always present).
        corrupted_tokens, corrupted_answer_ids, corrupted_positions: the same for the
            counterfactual prompts (``None`` when the task has none).
        ablation_tokens: ``[batch, pos]`` mean-ablation reference prompts, or ``None``.
        prompts: The source prompts.
    """

    tokens: Int[Tensor, "batch pos"]
    answer_ids: Int[Tensor, " batch"]
    wrong_ids: Int[Tensor, "batch n_wrong"]
    positions: dict[str, Int[Tensor, " batch"]]
    prompts: list[Prompt]
    corrupted_tokens: Int[Tensor, "batch pos"] | None = None
    corrupted_answer_ids: Int[Tensor, " batch"] | None = None
    corrupted_positions: dict[str, Int[Tensor, " batch"]] | None = None
    ablation_tokens: Int[Tensor, "batch pos"] | None = None

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def to(self, device: torch.device | str) -> PromptBatch:
        """The same batch with every tensor on ``device``."""

        def move(x: Any) -> Any:
            if isinstance(x, Tensor):
                return x.to(device)
            if isinstance(x, dict):
                return {k: v.to(device) for k, v in x.items()}
            return x

        return PromptBatch(**{k: move(v) for k, v in self.__dict__.items()})

    def repeat(self, k: int) -> PromptBatch:
        """``k`` stacked copies of the batch (copy ``i`` is rows ``i*n .. (i+1)*n``), for passes
        that treat each copy differently; the prompt list is not repeated."""
        return PromptBatch(
            tokens=self.tokens.repeat(k, 1),
            answer_ids=self.answer_ids.repeat(k),
            wrong_ids=self.wrong_ids.repeat(k, 1),
            positions={name: v.repeat(k) for name, v in self.positions.items()},
            prompts=[],
        )

    def __getitem__(self, idx: slice) -> PromptBatch:
        def take(x: Any) -> Any:
            if isinstance(x, Tensor):
                return x[idx]
            if isinstance(x, dict):
                return {k: v[idx] for k, v in x.items()}
            if isinstance(x, list):
                return x[idx]
            return x

        return PromptBatch(**{k: take(v) for k, v in self.__dict__.items()})


class HasTokenizer(Protocol):
    tokenizer: Any


def get_tokenizer(model_or_tokenizer: Any) -> Any:
    """The Hugging Face tokenizer of a bridge, HookedTransformer, or the tokenizer itself."""
    tok = getattr(model_or_tokenizer, "tokenizer", None)
    if tok is not None:
        return tok
    if hasattr(model_or_tokenizer, "convert_tokens_to_ids"):
        return model_or_tokenizer
    raise TaskError(
        f"{type(model_or_tokenizer).__name__} has no tokenizer: pass a model loaded with "
        "circuitlens.load_model (it carries one) or a Hugging Face tokenizer."
    )


#: per tokenizer: what it made of each text and word seen (tokenization is deterministic; a
#: tokenizer whose vocabulary grows starts a new cache), so the same validation and test
#: prompts are not tokenized again at every evaluation
_CACHES: weakref.WeakKeyDictionary[Any, tuple[int, dict[Any, Any]]] = weakref.WeakKeyDictionary()
_CACHE_SIZE = 200_000


def _cache(tokenizer: Any) -> dict[Any, Any] | None:
    """The memo of ``tokenizer`` (None: a tokenizer that cannot be weakly referenced)."""
    try:
        size = len(tokenizer)
    except TypeError:
        size = -1
    try:
        held = _CACHES.get(tokenizer)
        if held is None or held[0] != size or len(held[1]) > _CACHE_SIZE:
            held = (size, {})
            _CACHES[tokenizer] = held
    except TypeError:
        return None
    return held[1]


def single_token_id(tokenizer: Any, word: str, memo: dict[Any, Any] | None = None) -> int | None:
    """The id of ``word`` (with its leading space) if it is exactly one token, else ``None``
    (``memo``: the tokenizer's, when the caller holds it already)."""
    memo = _cache(tokenizer) if memo is None else memo
    key = ("word", word)
    if memo is not None and key in memo:
        return memo[key]
    ids = tokenizer.encode(word, add_special_tokens=False)
    found = None if len(ids) != 1 or ids[0] == tokenizer.unk_token_id else int(ids[0])
    if memo is not None:
        memo[key] = found
    return found


def require_single_tokens(tokenizer: Any, words: Sequence[str]) -> dict[str, int]:
    """Map each word to its token id; raise naming every word that is not one token."""
    memo = _cache(tokenizer)
    ids = {w: single_token_id(tokenizer, w, memo) for w in dict.fromkeys(words)}
    bad = [w for w, i in ids.items() if i is None]
    if bad:
        name = getattr(tokenizer, "name_or_path", type(tokenizer).__name__)
        raise TaskError(
            f"these answers are not single tokens for tokenizer {name!r}: "
            f"{', '.join(repr(w) for w in bad[:20])}{' ...' if len(bad) > 20 else ''}. "
            "Metrics read the first answer token, so each answer must be one token: build the "
            "task with get_task(..., tokenizers=[model, ...]) to keep only single-token words, "
            "or change the answers."
        )
    return {w: i for w, i in ids.items() if i is not None}


@dataclass(frozen=True)
class _Encoding:
    """One text as a tokenizer reads it: token ids and character offsets (BOS first), the
    first token covering each character, and the words read as the unknown token."""

    ids: tuple[int, ...]
    covers: dict[int, int]
    unknown: tuple[str, ...]


def _encode(tokenizer: Any, text: str, memo: dict[Any, Any] | None = None) -> _Encoding:
    """``text`` tokenized (from ``memo`` when there)."""
    if memo is not None and text in memo:
        return memo[text]
    enc = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
    ids = [int(i) for i in enc["input_ids"]]
    offsets = [(int(a), int(b)) for a, b in enc["offset_mapping"]]
    bos = tokenizer.bos_token_id
    # TransformerLens prepends BOS to every prompt; follow it where the tokenizer does not.
    if bos is not None and (not ids or ids[0] != bos):
        ids, offsets = [bos, *ids], [(0, 0), *offsets]
    covers: dict[int, int] = {}
    for i, (a, b) in enumerate(offsets):
        for c in range(a, b):
            covers.setdefault(c, i)
    unk = getattr(tokenizer, "unk_token_id", None)
    unknown = tuple(
        text[a:b]
        for i, (a, b) in zip(ids, offsets, strict=True)
        if unk is not None and i == unk and b > a
    )
    out = _Encoding(tuple(ids), covers, unknown)
    if memo is not None:
        memo[text] = out
    return out


def _span_to_token(
    enc: _Encoding,
    span: tuple[int, int],
    text: str,
    name: str = "",
    source: str | None = None,
) -> int:
    """The first token that covers the span's first character."""
    found = enc.covers.get(span[0])
    if found is not None:
        return found
    raise TaskError(
        f"{source + ': ' if source else ''}no token covers character {span[0]} of position "
        f"{name!r} ({text[span[0] : span[1]]!r} in {text!r}): start the span on a character of "
        "the word, not on the space before it"
    )


def _refuse_unknown_words(tokenizer: Any, encoded: list[_Encoding], texts: list[str]) -> None:
    words: dict[str, str] = {}
    for enc, text in zip(encoded, texts, strict=True):
        for word in enc.unknown:
            words.setdefault(word, text)
    if words:
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        shown = ", ".join(repr(w) for w in list(words)[:20]) + (" ..." if len(words) > 20 else "")
        first = next(iter(words.values()))
        raise TaskError(
            f"tokenizer {name!r} does not know these words of the prompts: {shown} (first in "
            f"{first[:80]!r}); the model would read each as {tokenizer.unk_token!r} and score "
            "meaninglessly. Rephrase the prompts with words the tokenizer knows, or use a "
            "model whose tokenizer covers them."
        )


def _tokenize(
    tokenizer: Any,
    texts: list[str],
    spans: list[dict[str, tuple[int, int]]],
    pad_id: int,
    sources: list[str | None] | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    memo = _cache(tokenizer)
    encoded = [_encode(tokenizer, t, memo) for t in texts]
    _refuse_unknown_words(tokenizer, encoded, texts)
    width = max(len(e.ids) for e in encoded)
    tokens = torch.tensor([[*e.ids] + [pad_id] * (width - len(e.ids)) for e in encoded])
    positions: dict[str, list[int]] = {"last": [len(e.ids) - 1 for e in encoded]}
    sources = sources or [None] * len(texts)
    for enc, text, sp, source in zip(encoded, texts, spans, sources, strict=True):
        for name, span in sp.items():
            positions.setdefault(name, []).append(_span_to_token(enc, span, text, name, source))
    bad = [n for n, v in positions.items() if len(v) != len(texts)]
    if bad:
        raise TaskError(f"positions {bad} are defined for some prompts of the batch but not all")
    return tokens.long(), {k: torch.tensor(v) for k, v in positions.items()}


def tokenize_prompts(model_or_tokenizer: Any, prompts: Sequence[Prompt]) -> PromptBatch:
    """Tokenize prompts for one model: tokens, answer ids, named positions, counterfactuals.

    Raises:
        TaskError: an answer is not a single token for this tokenizer, or a prompt holds words
            the tokenizer maps to its unknown token (the words are named).
    """
    if not prompts:
        raise TaskError("no prompts to tokenize: ask for n >= 1")
    tok = get_tokenizer(model_or_tokenizer)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    words = [p.answer for p in prompts] + [w for p in prompts for w in p.wrong_answers]
    words += [p.corrupted_answer for p in prompts if p.corrupted_answer is not None]
    ids = require_single_tokens(tok, words)
    sources = [p.meta.get("source") for p in prompts]
    tokens, positions = _tokenize(
        tok, [p.text for p in prompts], [p.spans for p in prompts], pad, sources
    )
    n_wrong = max((len(p.wrong_answers) for p in prompts), default=0)
    wrong = torch.full((len(prompts), n_wrong), -1, dtype=torch.long)
    for row, p in enumerate(prompts):
        wrong[row, : len(p.wrong_answers)] = torch.tensor([ids[w] for w in p.wrong_answers] or [])
    batch = PromptBatch(
        tokens=tokens,
        answer_ids=torch.tensor([ids[p.answer] for p in prompts]),
        wrong_ids=wrong,
        positions=positions,
        prompts=list(prompts),
    )
    if all(p.corrupted is not None for p in prompts):
        batch.corrupted_tokens, batch.corrupted_positions = _tokenize(
            tok,
            [p.corrupted for p in prompts],
            [p.corrupted_spans for p in prompts],
            pad,
            [None if s is None else f"{s} (corrupted)" for s in sources],
        )
        batch.corrupted_answer_ids = torch.tensor([ids[p.corrupted_answer] for p in prompts])
    if all(p.ablation is not None for p in prompts):
        batch.ablation_tokens, _ = _tokenize(
            tok, [p.ablation for p in prompts], [{}] * len(prompts), pad
        )
    return batch


#: the splits, in the order they are drawn (``probe`` last: the others are as they were
#: before it existed)
Split = Literal["train", "val", "test", "probe"]
SPLITS: tuple[str, ...] = get_args(Split)


class Task:
    """A task: deterministic prompts in disjoint splits, and tokenization per model.

    Subclasses implement :meth:`make_prompt` (one random prompt from an RNG) and set
    ``name``, ``config``, ``position_names`` and ``words`` (every word an answer can be).
    """

    name: str = "task"
    position_names: tuple[str, ...] = ("last",)
    #: how :func:`~circuitlens.circuits.find.find_circuit` traces the task's circuit by path
    #: patching, as :class:`~circuitlens.core.types.PlanStep` ``(group, into, via, position)`` steps
    #: (or tuples of those fields): the first step's group sends into the logits (``into``
    #: None, ``via`` "logits"), each later group into an earlier group's ``via`` input ("q",
    #: "k" or "v") at a named ``position``, where its heads act (rules:
    #: :mod:`circuitlens.tasks.plan`). ``None``: activation patching of every head at the
    #: last position instead.
    circuit_plan: tuple[PlanStep | tuple[str, str | None, str, str], ...] | None = None
    #: the prompt formats the task offers: format name -> config options that select it
    formats: dict[str, dict[str, Any]] = {"default": {}}

    def __init__(self, config: Any) -> None:
        self.config = config
        self._splits: dict[str, list[Prompt]] | None = None

    # -- to implement ---------------------------------------------------------------------
    def make_prompt(self, rng: random.Random) -> Prompt:
        raise NotImplementedError

    # -- splits ---------------------------------------------------------------------------
    def _build_splits(self) -> dict[str, list[Prompt]]:
        cfg = self.config
        sizes = {s: getattr(cfg, f"n_{s}") for s in SPLITS}
        rng = random.Random(f"{self.name}:{cfg.seed}")
        seen: set[str] = set()
        out: dict[str, list[Prompt]] = {s: [] for s in SPLITS}
        tries = 0
        for split in SPLITS:
            while len(out[split]) < sizes[split]:
                tries += 1
                if tries > 50 * sum(sizes.values()) + 1000:
                    raise TaskError(
                        f"{self.name}: could not draw {sum(sizes.values())} distinct prompts "
                        f"with options {cfg}; ask for fewer prompts "
                        "(n_train/n_val/n_test/n_probe)."
                    )
                p = self.make_prompt(rng)
                if p.text in seen:
                    continue
                seen.add(p.text)
                out[split].append(p)
        return out

    def split(self, name: str = "test", n: int | None = None) -> list[Prompt]:
        """The prompts of one split (the first ``n`` of them)."""
        if name not in SPLITS:
            raise TaskError(f"unknown split {name!r}; valid splits: {', '.join(SPLITS)}")
        if self._splits is None:
            self._splits = self._build_splits()
        prompts = self._splits[name]
        if n is not None:
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise TaskError(
                    f"n must be a whole number >= 0, or None for the whole split (got {n!r})"
                )
            if n > len(prompts):
                raise TaskError(
                    f"asked for {n} {name} prompts but the split holds {len(prompts)}: "
                    f"{self.split_size_hint(name, n)}"
                )
            prompts = prompts[:n]
        return prompts

    def empty_split_hint(self, split: str) -> str:
        """How to give ``split`` prompts (for the error when it is empty)."""
        return f"build the task with n_{split} >= 1 (get_task(..., n_{split}=500))"

    def split_size_hint(self, split: str, n: int) -> str:
        """How to make ``split`` hold ``n`` prompts: the option of this task type that sizes
        it (for the errors that refuse a request larger than the split)."""
        return f"build the task with n_{split}={n} (or more): get_task(..., n_{split}={n})"

    def heldout_texts(self) -> set[str]:
        """Texts of the validation, test and probe prompts (fresh training samples avoid
        them, so that no split shares a prompt with training)."""
        return {p.text for s in SPLITS if s != "train" for p in self.split(s)}

    def sample(self, rng: random.Random, n: int, exclude: set[str] | None = None) -> list[Prompt]:
        """``n`` fresh random prompts from ``rng``, none of them in ``exclude``."""
        exclude = self.heldout_texts() if exclude is None else exclude
        out: list[Prompt] = []
        while len(out) < n:
            p = self.make_prompt(rng)
            if p.text not in exclude:
                out.append(p)
        return out

    def pool(self, rng: random.Random, n: int, exclude: set[str] | None = None) -> list[Prompt]:
        """``n`` distinct training prompts drawn from ``rng`` (by :meth:`sample`, in its
        order, repeats skipped), none of them in ``exclude`` (default: the held-out splits):
        a fixed training set (:attr:`TrainConfig.train_prompts`).

        Raises:
            TaskError: the task has fewer than ``n`` distinct training prompts to give.
        """
        exclude = self.heldout_texts() if exclude is None else exclude
        out: dict[str, Prompt] = {}
        tries = 0
        while len(out) < n:
            tries += 1
            if tries > 50 * n + 1000:
                raise TaskError(
                    f"{self.name}: could not draw {n} distinct training prompts (found "
                    f"{len(out)}); lower train_prompts"
                )
            (p,) = self.sample(rng, 1, exclude)
            out.setdefault(p.text, p)
        return list(out.values())

    def batch(
        self, model_or_tokenizer: Any, split: str = "test", n: int | None = None
    ) -> PromptBatch:
        """Prompts of ``split`` tokenized for one model (see :func:`tokenize_prompts`)."""
        return tokenize_prompts(model_or_tokenizer, self.split(split, n))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"


TaskFactory = Callable[..., Task]
