"""Theory of mind in the CausalToM format (Prakash et al. 2025, "Language Models use Lookbacks
to Track Beliefs").

Story: "{c1} and {c2} are working in a busy restaurant. To complete an order, {c1} grabs an
opaque {o1} and fills it with {s1}. Then {c2} grabs another opaque {o2} and fills it with {s2}.
{c1} can observe {c2}'s actions." Question: "What does {cq} believe the {oq} contains?"

The answer is the drink a character saw go into the container: their own container's drink,
the other's drink when they could observe it (the visibility variant: ``c1 can observe``), and
``unknown`` otherwise. The non-visible variant says ``c1 cannot observe`` so that every prompt
has the same length in tokens (a choice of ours; the original omits the sentence).

Prompt: "Instruction: {rules}\n\nStory: {story}\nQuestion: {question}\nAnswer:", scored on the
first answer token. Named positions: ``last``, ``query_character``, ``query_container``,
``state_1``, ``state_2``.

Counterfactuals: ``corrupted`` gives each character the other's container and fresh drinks,
with the same question, so the answer always changes; ``ablation`` keeps the story and asks
about a character and a container that are not in it.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from circuitlens.tasks.base import Prompt, Task, TaskError
from circuitlens.tasks.entity_tracking import single_token_words

CHARACTERS: tuple[str, ...] = tuple(
    "Bob Carla Anne Tom Sam Max Mia Leo Eve Ben Dan Kim Joe Amy Ray Liz Ted Zoe Ian Jack".split()
)
CONTAINERS: tuple[str, ...] = tuple(
    """jar cup mug glass flute pitcher jug bottle can flask pint quart horn tun urn dispenser vat
    tank drum tote container""".split()
)
STATES: tuple[str, ...] = tuple(
    """water milk tea beer soda juice coffee wine gin rum champagne cocktail punch espresso cocoa
    sprite monster bourbon port float stout ale porter""".split()
)
UNKNOWN = "unknown"
RULES = (
    "Keep track of what each character believes. A character knows what a container holds "
    "only if they filled it or could observe it being filled. If the character cannot know, "
    "answer unknown."
)


@dataclass(frozen=True)
class TheoryOfMindConfig:
    """Options of the theory-of-mind task.

    Attributes:
        seed: every prompt and split follows from it.
        n_train, n_val, n_test: split sizes (the splits share no prompt).
        n_probe: the ``probe`` split's size: the prompts that choose (sweeps, the circuit
            search, the head map), drawn after the others (200: the default sweep's prompts).
        p_visible: probability of the variant where the first character observes the second.
        instruction: include the instruction block (the zoo's models are trained with it too).
        characters, containers, states: word lists (filtered to single tokens when
            tokenizers are given).
    """

    seed: int = 0
    n_train: int = 2000
    n_val: int = 200
    n_test: int = 500
    n_probe: int = 200
    p_visible: float = 0.5
    instruction: bool = True
    characters: tuple[str, ...] = CHARACTERS
    containers: tuple[str, ...] = CONTAINERS
    states: tuple[str, ...] = STATES

    def __post_init__(self) -> None:
        if not 0.0 <= self.p_visible <= 1.0:
            raise TaskError(f"theory_of_mind: p_visible must be in [0, 1] (got {self.p_visible})")
        for k in ("n_train", "n_val", "n_test", "n_probe"):
            if getattr(self, k) < 0:
                raise TaskError(f"theory_of_mind: {k} must be >= 0 (got {getattr(self, k)})")
        for k, need in (("characters", 3), ("containers", 3), ("states", 4)):
            if len(getattr(self, k)) < need:
                raise TaskError(
                    f"theory_of_mind: need at least {need} single-token {k}, got "
                    f"{list(getattr(self, k))}; use a tokenizer that keeps more of them whole."
                )


@dataclass(frozen=True)
class Story:
    """One story of the task: ``c1`` fills ``o1`` with ``s1``, then ``c2`` fills ``o2`` with
    ``s2``; ``visible``: ``c1`` can observe ``c2``'s actions."""

    c1: str
    c2: str
    o1: str
    o2: str
    s1: str
    s2: str
    visible: bool


def believed(story: Story, cq: str, oq: str) -> str:
    """What ``cq`` believes ``oq`` contains in ``story`` (the task's ground truth)."""
    st = story
    if (cq, oq) == (st.c1, st.o1):
        return st.s1
    if (cq, oq) == (st.c2, st.o2):
        return st.s2
    if (cq, oq) == (st.c1, st.o2) and st.visible:
        return st.s2
    return UNKNOWN


class TheoryOfMind(Task):
    """The theory-of-mind task; see the module docstring."""

    name = "theory_of_mind"
    position_names = ("last", "query_character", "query_container", "state_1", "state_2")
    formats = {"plain": {"instruction": False}, "instruction": {"instruction": True}}

    def __init__(self, config: TheoryOfMindConfig) -> None:
        super().__init__(config)

    def _render(
        self, c1: str, c2: str, o1: str, o2: str, s1: str, s2: str, visible: bool, cq: str, oq: str
    ) -> tuple[str, dict[str, tuple[int, int]]]:
        text = f"Instruction: {RULES}\n\n" if self.config.instruction else ""
        text += f"Story: {c1} and {c2} are working in a busy restaurant. To complete an order, "
        text += f"{c1} grabs an opaque {o1} and fills it with "
        spans = {"state_1": (len(text), len(text) + len(s1))}
        text += f"{s1}. Then {c2} grabs another opaque {o2} and fills it with "
        spans["state_2"] = (len(text), len(text) + len(s2))
        text += f"{s2}. {c1} {'can' if visible else 'cannot'} observe {c2}'s actions.\n"
        text += "Question: What does "
        spans["query_character"] = (len(text), len(text) + len(cq))
        text += f"{cq} believe the "
        spans["query_container"] = (len(text), len(text) + len(oq))
        text += f"{oq} contains?\nAnswer:"
        return text, spans

    def make_prompt(self, rng: random.Random) -> Prompt:
        cfg = self.config
        c1, c2, c_free = rng.sample(cfg.characters, 3)
        o1, o2, o_free = rng.sample(cfg.containers, 3)
        s1, s2, t1, t2 = rng.sample(cfg.states, 4)
        visible = rng.random() < cfg.p_visible
        cq, oq = rng.choice([c1, c2]), rng.choice([o1, o2])
        text, spans = self._render(c1, c2, o1, o2, s1, s2, visible, cq, oq)
        answer = believed(Story(c1, c2, o1, o2, s1, s2, visible), cq, oq)
        # counterfactual: the characters trade containers and get fresh drinks, so the answer
        # always changes (own container <-> the other's)
        c_text, c_spans = self._render(c1, c2, o2, o1, t1, t2, visible, cq, oq)
        c_answer = believed(Story(c1, c2, o2, o1, t1, t2, visible), cq, oq)
        a_text, _ = self._render(c1, c2, o1, o2, s1, s2, visible, c_free, o_free)
        return Prompt(
            text=text,
            answer=" " + answer,
            wrong_answers=tuple(" " + w for w in (s1, s2, UNKNOWN) if w != answer),
            spans=spans,
            corrupted=c_text,
            corrupted_answer=" " + c_answer,
            corrupted_spans=c_spans,
            ablation=a_text,
            meta={"visible": visible, "query": (cq, oq)},
        )


def theory_of_mind(tokenizers: Sequence[Any] | Any | None = None, **options: Any) -> TheoryOfMind:
    """Build the task; ``tokenizers`` (models or tokenizers) filter word lists to single tokens."""
    if tokenizers is not None:
        toks = tokenizers if isinstance(tokenizers, (list, tuple)) else [tokenizers]
        options.setdefault("characters", single_token_words(CHARACTERS, toks))
        options.setdefault("containers", single_token_words(CONTAINERS, toks))
        options.setdefault("states", single_token_words(STATES, toks))
    return TheoryOfMind(TheoryOfMindConfig(**options))
