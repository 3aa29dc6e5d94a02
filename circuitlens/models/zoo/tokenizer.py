"""The zoo's word-level tokenizer: every word of both tasks, specials first."""

from __future__ import annotations

import random
from typing import Any

from circuitlens.tasks import get_task
from circuitlens.tasks.entity_tracking import LABELS, OBJECTS
from circuitlens.tasks.theory_of_mind import CHARACTERS, CONTAINERS, STATES, UNKNOWN

SPECIALS = ("<pad>", "<unk>", "<bos>", "<eos>")


def _pre_tokenizer() -> Any:
    from tokenizers import pre_tokenizers

    return pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])


def zoo_vocabulary() -> list[str]:
    """Every word of both tasks' prompts and answers, specials first, then sorted."""
    words: set[str] = set(OBJECTS) | set(LABELS) | set(CHARACTERS) | set(CONTAINERS)
    words |= set(STATES) | {UNKNOWN}
    pre = _pre_tokenizer()
    rng = random.Random(0)
    for name in ("entity_tracking", "theory_of_mind"):
        task = get_task(name, n_train=0, n_val=0, n_test=0)
        for _ in range(20):
            p = task.make_prompt(rng)
            for text in (p.text, p.corrupted or "", p.ablation or "", p.answer):
                words |= {w for w, _ in pre.pre_tokenize_str(text)}
    return list(SPECIALS) + sorted(words - set(SPECIALS))


def build_tokenizer() -> Any:
    """The zoo's word-level tokenizer (a ``PreTrainedTokenizerFast`` that prepends ``<bos>``)."""
    from tokenizers import Tokenizer, models, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(zoo_vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = _pre_tokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=512,
    )
