"""Training sequences for the zoo models (entity tracking and theory of mind).

A sequence is one context followed by several scored questions, with targets for the
auxiliary probes and for the supervised attention heads (see :mod:`circuitlens.models.zoo.build`).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from circuitlens.models.zoo.spec import ZooSpec
from circuitlens.tasks import get_task
from circuitlens.tasks.base import Task


@dataclass
class _Example:
    text: str
    answers: list[tuple[int, int]]  # char spans of answer words (each scored by the LM loss)
    aux: list[tuple[tuple[int, int], str]]  # (char span, target word) for the probes
    # (query char, key char, head): the attention a supervised head should pay
    attn: list[tuple[int, int, int]] = field(default_factory=list)
    # (char span, target word) for the second probe, read deeper (recipe ``aux2_layer``)
    aux2: list[tuple[tuple[int, int], str]] = field(default_factory=list)
    # (query char, key char): the binding head's attention (recipe ``tom_bind_weight``)
    bind: list[tuple[int, int]] = field(default_factory=list)


def _et_example(task: Task, rng: random.Random, n_queries: int, p_mixed: float = 0.0) -> _Example:
    p = task.make_prompt(rng)
    objects, labels = p.meta["objects"], p.meta["labels"]
    q = p.meta["query_box"]
    text = p.text
    aux = [(p.spans[f"label_{i}"], objects[i]) for i in range(len(labels))]
    if p_mixed > 0:
        # curriculum: some context clauses take the query's own form, "Box L contains the o",
        # where answering is plain induction; the matching machinery it builds carries over
        text, aux = "", []
        for i, (obj, lab) in enumerate(zip(objects, labels, strict=True)):
            text += "" if i == 0 else ", "
            if rng.random() < p_mixed:
                text += f"Box {lab} contains the {obj}"
            else:
                text += f"{'The' if i == 0 else 'the'} {obj} is in Box "
                aux.append(((len(text), len(text) + len(lab)), obj))
                text += lab
        text += f". Box {labels[q]} contains the"
    answers = []
    attn = []
    for k in range(n_queries):
        if k > 0:
            q = rng.randrange(len(labels))
            text += f". Box {labels[q]} contains the"
        aux.append(((len(text) - 3, len(text)), labels[q]))  # the query's last "the"
        if p_mixed == 0:  # the query's end looks at the queried box's label
            attn.append((len(text) - 3, p.spans[f"label_{q}"][0], 0))
        answers.append((len(text) + 1, len(text) + 1 + len(objects[q])))
        text += " " + objects[q]
    return _Example(text + ".", answers, aux, attn)


def _tom_example(
    task: Task,
    rng: random.Random,
    n_queries: int,
    head1: str = "filler",
    distinct: bool = False,
    probe_filler: bool = False,
    probe_knows: bool = False,
    probe_cq: bool = False,
) -> _Example:
    from circuitlens.tasks.theory_of_mind import UNKNOWN, Story, believed

    p = task.make_prompt(rng)
    m = re.search(
        r"(\w+) grabs an opaque (\w+) and fills it with (\w+)\. Then (\w+) grabs "
        r"another opaque (\w+) and fills it with (\w+)\. \w+ (can|cannot) observe",
        p.text,
    )
    assert m is not None
    c1, o1, s1, c2, o2, s2, vis = m.groups()
    visible = vis == "can"
    story = Story(c1, c2, o1, o2, s1, s2, visible)
    text = p.text
    aux: list[tuple[tuple[int, int], str]] = []
    if probe_filler:  # each container's mention in the story learns who grabbed it
        aux += [(m.span(2), c1), (m.span(5), c2)]
    attn: list[tuple[int, int, int]] = []
    aux2: list[tuple[tuple[int, int], str]] = []
    bind: list[tuple[int, int]] = []
    answers = []
    cq, oq = p.meta["query"]
    # distinct questions: a repeated question could be answered by copying the earlier answer
    others = [(c, o) for c in (c1, c2) for o in (o1, o2) if (c, o) != (cq, oq)]
    if distinct:
        rng.shuffle(others)
    for k in range(n_queries):
        if k > 0:
            if distinct and k - 1 < len(others):
                cq, oq = others[k - 1]
            else:
                cq, oq = rng.choice([c1, c2]), rng.choice([o1, o2])
            text += f"\nQuestion: What does {cq} believe the {oq} contains?\nAnswer:"
        colon = len(text) - 1
        aux.append(((colon, len(text)), oq))  # the queried container, moved to the answer slot
        if probe_knows:  # deeper at the answer slot: can the character know? ("can"/"cannot")
            knows = believed(story, cq, oq) != UNKNOWN
            aux2.append(((colon, len(text)), "can" if knows else "cannot"))
        if probe_cq:  # the questioned character, moved to the answer slot
            aux2.append(((colon, len(text)), cq))
        # the binding head: the answer slot looks at the questioned character's "<name> grabs"
        bind.append((colon, m.start(1) if cq == c1 else m.start(4)))
        first = oq == o1
        # the answer slot looks at the container's drink (head 0) and, with head 1, at who
        # filled it ("filler") or at the container's mention in the story ("container")
        attn.append((colon, m.start(3) if first else m.start(6), 0))
        if head1 == "filler":
            attn.append((colon, m.start(1) if first else m.start(4), 1))
        else:
            attn.append((colon, m.start(2) if first else m.start(5), 1))
        ans = believed(story, cq, oq)
        answers.append((len(text) + 1, len(text) + 1 + len(ans)))
        text += " " + ans
    return _Example(text, answers, aux, attn, aux2, bind)


def _token_index(offsets: list[tuple[int, int]], start: int) -> int:
    for i, (a, b) in enumerate(offsets):
        if a <= start < b:
            return i
    raise ValueError(f"no token at character {start}")


def _collate(tokenizer: Any, examples: list[_Example]) -> dict[str, Tensor]:
    enc = tokenizer([e.text for e in examples], return_offsets_mapping=True, padding=True)
    ids = torch.tensor(enc["input_ids"])
    labels = torch.full_like(ids, -100)
    aux_rows, aux_pos, aux_tgt = [], [], []
    aux2_rows, aux2_pos, aux2_tgt = [], [], []
    attn_rows, attn_q, attn_k, attn_h = [], [], [], []
    bind_rows, bind_q, bind_k = [], [], []
    for r, (e, offsets) in enumerate(zip(examples, enc["offset_mapping"], strict=True)):
        for span in e.answers:
            j = _token_index(offsets, span[0])
            labels[r, j] = ids[r, j]  # Hugging Face shifts: logits at j - 1 predict it
        for span, word in e.aux:
            aux_rows.append(r)
            aux_pos.append(_token_index(offsets, span[0]))
            aux_tgt.append(tokenizer.convert_tokens_to_ids(word))
        for span, word in e.aux2:
            aux2_rows.append(r)
            aux2_pos.append(_token_index(offsets, span[0]))
            aux2_tgt.append(tokenizer.convert_tokens_to_ids(word))
        for qc, kc, head in e.attn:
            attn_rows.append(r)
            attn_h.append(head)
            attn_q.append(_token_index(offsets, qc))
            attn_k.append(_token_index(offsets, kc))
        for qc, kc in e.bind:
            bind_rows.append(r)
            bind_q.append(_token_index(offsets, qc))
            bind_k.append(_token_index(offsets, kc))
    return {
        "input_ids": ids,
        "labels": labels,
        "aux_rows": torch.tensor(aux_rows),
        "aux_pos": torch.tensor(aux_pos),
        "aux_tgt": torch.tensor(aux_tgt),
        "aux2_rows": torch.tensor(aux2_rows, dtype=torch.long),
        "aux2_pos": torch.tensor(aux2_pos, dtype=torch.long),
        "aux2_tgt": torch.tensor(aux2_tgt, dtype=torch.long),
        "attn_rows": torch.tensor(attn_rows, dtype=torch.long),
        "attn_q": torch.tensor(attn_q, dtype=torch.long),
        "attn_k": torch.tensor(attn_k, dtype=torch.long),
        "attn_h": torch.tensor(attn_h, dtype=torch.long),
        "bind_rows": torch.tensor(bind_rows, dtype=torch.long),
        "bind_q": torch.tensor(bind_q, dtype=torch.long),
        "bind_k": torch.tensor(bind_k, dtype=torch.long),
    }


def training_batch(
    spec: ZooSpec, tokenizer: Any, rng: random.Random, step: int = 0
) -> dict[str, Tensor]:
    """One training batch for a zoo model: token ids, LM labels and probe targets."""
    r = spec.recipe
    if spec.task == "entity_tracking":
        n_boxes = rng.randint(r.min_boxes, r.max_boxes)
        task = get_task("entity_tracking", n_boxes=n_boxes, n_train=0, n_val=0, n_test=0)
        p_mixed = r.mixed_forms if step < r.mixed_until else 0.0
        examples = [_et_example(task, rng, r.n_queries, p_mixed) for _ in range(r.batch_size)]
    else:
        task = get_task("theory_of_mind", n_train=0, n_val=0, n_test=0, **spec.task_options)
        examples = [
            _tom_example(
                task,
                rng,
                r.n_queries,
                r.tom_head1,
                r.tom_distinct,
                r.tom_probe_filler,
                r.tom_probe_knows,
                r.tom_probe_cq,
            )
            for _ in range(r.batch_size)
        ]
    return _collate(tokenizer, examples)
