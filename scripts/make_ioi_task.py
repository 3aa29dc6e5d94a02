"""Write the indirect-object-identification example task, ``data/tasks/ioi.jsonl``.

    .venv/bin/python scripts/make_ioi_task.py            # 120 prompts, seed 0
    .venv/bin/python scripts/make_ioi_task.py --n 200 --seed 1 --out my_ioi.jsonl

Indirect object identification (Wang et al. 2022, "Interpretability in the Wild",
arXiv:2211.00593): "Then, John and Mary went to the store. John gave a drink to" -> " Mary". The
subject (S, "John") is named twice, the indirect object (IO, "Mary") once; the answer is IO.

- Templates: five of the paper's templates (its ``BABA_TEMPLATES``, cut before the answer), the
  ones that are 15 tokens for SmolLM2 with one-token names, places and objects; each in both
  orders of the first two names (ABBA: IO first, BABA: S first), half the prompts each.
- Words: first names, places and objects that are each one token (with the leading space) for
  the SmolLM2 tokenizer (checked by ``tests/tasks/test_ioi_task.py``), so a name swap keeps a
  prompt's
  length and every answer is one token.
- ``corrupted``: S's second mention replaced by IO (the name repeated is now IO, so the answer is
  S): the same length in tokens, as path patching needs, with an answer of its own.
- ``ablation``: the paper's ABC prompts (the same sentence with three fresh names), the
  mean-ablation reference of ``find_circuit``'s faithfulness.
- ``wrong_answers``: S, so ``logit_diff`` is the paper's logit(IO) - logit(S).
- ``positions`` (and ``corrupted_positions``, by slot: ``S2`` of the corrupted prompt is the
  second-clause name, which is IO's there): ``IO``, ``S1``, ``S2`` (the names' character spans)
  and ``S1+1`` (the word after S1, where previous-token heads write for induction heads).

The circuit plan beside it (``data/tasks/ioi.plan.json``, written by hand) follows the paper's
circuit: name movers into the logits at the end, S-inhibition heads into the name movers'
queries there, induction and duplicate-token heads into the S-inhibition heads' values at S2,
previous-token heads into the induction heads' keys at S1+1.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "data" / "tasks" / "ioi.jsonl"

# {N1} and {N2} are the first clause's names (S and IO in some order), {S2} the repeated subject
TEMPLATES = (
    "Then, {N1} and {N2} went to the {PLACE}. {S2} gave a {OBJECT} to",
    "While {N1} and {N2} were working at the {PLACE}, {S2} gave a {OBJECT} to",
    "While {N1} and {N2} were commuting to the {PLACE}, {S2} gave a {OBJECT} to",
    "Friends {N1} and {N2} found a {OBJECT} at the {PLACE}. {S2} gave it to",
    "The {PLACE} {N1} and {N2} went to had a {OBJECT}. {S2} gave it to",
)
NAMES = tuple(
    """Mary John Alice Bob Tom James Michael David Sarah Emma Anna Paul Peter Lisa Kate Jack
    Henry George Linda Susan Karen Daniel Laura Rachel Steven Kevin Brian Jessica Emily Sam Eric
    Adam Ryan Jason Amy Andrew Thomas Robert William Richard""".split()
)
PLACES = tuple(
    "store park school office garden hospital station restaurant beach house library".split()
)
OBJECTS = tuple("drink ring book bag ball key letter gift phone cup apple flower".split())
_SLOT = re.compile(r"\{(N1|N2|S2|PLACE|OBJECT)\}")


def render(template: str, words: dict[str, str]) -> tuple[str, dict[str, tuple[int, int]]]:
    """The template with ``words`` filled in, and the character span of each name slot."""
    text, spans, at = "", {}, 0
    for m in _SLOT.finditer(template):
        text += template[at : m.start()]
        spans[m.group(1)] = (len(text), len(text) + len(words[m.group(1)]))
        text += words[m.group(1)]
        at = m.end()
    return text + template[at:], spans


def named(
    text: str, spans: dict[str, tuple[int, int]], io_first: bool
) -> dict[str, tuple[int, int]]:
    """The task's positions from the slots: IO, S1, S2 and S1+1 (the word after S1)."""
    io, s1 = (spans["N1"], spans["N2"]) if io_first else (spans["N2"], spans["N1"])
    after = re.compile(r"\s*(\w+)").match(text, s1[1])
    assert after is not None, text
    return {"IO": io, "S1": s1, "S2": spans["S2"], "S1+1": after.span(1)}


def line(rng: random.Random, template: str, io_first: bool) -> dict:
    """One prompt of the task (see the module docstring) as a JSON object."""
    s, io, *fresh = rng.sample(NAMES, 5)
    place, obj = rng.choice(PLACES), rng.choice(OBJECTS)
    first = (io, s) if io_first else (s, io)
    words = {"N1": first[0], "N2": first[1], "S2": s, "PLACE": place, "OBJECT": obj}
    text, spans = render(template, words)
    c_text, c_spans = render(template, {**words, "S2": io})
    a_text, _ = render(template, {**words, "N1": fresh[0], "N2": fresh[1], "S2": fresh[2]})
    return {
        "prompt": text,
        "answer": " " + io,
        "wrong_answers": [" " + s],
        "corrupted": c_text,
        "corrupted_answer": " " + s,
        "ablation": a_text,
        "positions": {k: list(v) for k, v in named(text, spans, io_first).items()},
        "corrupted_positions": {k: list(v) for k, v in named(c_text, c_spans, io_first).items()},
    }


def make(n: int, seed: int) -> list[dict]:
    """``n`` distinct prompts, templates and name orders in turn."""
    rng = random.Random(seed)
    out: dict[str, dict] = {}
    i = 0
    while len(out) < n:
        obj = line(rng, TEMPLATES[i % len(TEMPLATES)], io_first=(i // len(TEMPLATES)) % 2 == 0)
        out.setdefault(obj["prompt"], obj)
        i += 1
    return list(out.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=120, help="prompts to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    lines = make(args.n, args.seed)
    args.out.write_text("".join(json.dumps(x) + "\n" for x in lines))
    print(f"wrote {len(lines)} prompts to {args.out}")


if __name__ == "__main__":
    main()
