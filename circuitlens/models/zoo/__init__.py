"""The zoo: tiny Llama teachers and warm students trained on the tasks, embedded in the repo.

Each zoo model is a Hugging Face ``LlamaForCausalLM`` (RoPE, RMSNorm, SwiGLU, fewer K/V heads
than query heads) with a word-level tokenizer covering both tasks' vocabulary, saved with
``save_pretrained`` (safetensors) under ``data/zoo/<name>/`` beside a model card
(``card.json``): architecture, recipe, seed, steps, wall time, accuracy, sha256.

The package reads one way: ``spec`` (the registry ``ZOO``, cards, paths) <- ``tokenizer`` <-
``batches`` (training sequences) <- ``build`` (the training loop, ``circuitlens zoo train``);
``source`` registers the ``"zoo:"`` prefix with :func:`circuitlens.models.registry.register_source`
(importing this package does it).
"""

from circuitlens.models.zoo.batches import training_batch
from circuitlens.models.zoo.build import build_model, heldout_accuracy, save_zoo_model, train
from circuitlens.models.zoo.source import load_zoo, zoo_card
from circuitlens.models.zoo.spec import (
    CARD_SEED,
    STUDENT_RANGE,
    TEACHER_TARGET,
    ZOO,
    ZOO_DIR,
    ZooArch,
    ZooError,
    ZooRecipe,
    ZooSpec,
    zoo_cards,
    zoo_path,
    zoo_task,
)
from circuitlens.models.zoo.tokenizer import SPECIALS, build_tokenizer, zoo_vocabulary

__all__ = [
    "CARD_SEED",
    "SPECIALS",
    "STUDENT_RANGE",
    "TEACHER_TARGET",
    "ZOO",
    "ZOO_DIR",
    "ZooArch",
    "ZooError",
    "ZooRecipe",
    "ZooSpec",
    "build_model",
    "build_tokenizer",
    "heldout_accuracy",
    "load_zoo",
    "save_zoo_model",
    "train",
    "training_batch",
    "zoo_cards",
    "zoo_path",
    "zoo_card",
    "zoo_task",
    "zoo_vocabulary",
]
