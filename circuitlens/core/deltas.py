"""Weight deltas: what a run trained, saved small, and put back bit for bit.

Circuit distillation trains a few heads' W_Q/W_K/W_V/W_O slices and nothing else, so a result
stores only those entries, as a safetensors file of *the trained entries' new values* against
the student it started from:

- each trained parameter (named by its Hugging Face name: the bridge's ``._original_component``
  segments stripped) is stored as the block its mask selects when the mask is a product of
  index sets, one per axis (a head's rows of ``q_proj``, its columns of ``o_proj``, a whole
  tensor for full fine-tuning): ``NAME::i0``, ``NAME::i1``, ... (int64 indices) and
  ``NAME::block``; any other mask is stored whole (``NAME::mask``, bool) with its values
  (``NAME::values``);
- the metadata names the base student (its load spec and fingerprint where known) and holds a
  hash of every entry the run did not train (:func:`frozen_hash`): :func:`apply_delta` refuses a
  base whose frozen entries differ, so a delta never lands on another model;
- the metadata's ``sha256`` holds the sha256 of every stored tensor's bytes (and of the rest of
  the metadata, under ``__metadata__``): :func:`load_delta` checks each one, and the index
  tensors' ranges, so a damaged file is a :class:`DeltaIntegrityError` naming it, never a
  silently different model (a delta written before checksums loads, with a logged note).

Writing the delta never touches tied or shared tensors as such (SmolLM2, Gemma-3 and
Llama-3.2 tie the input and output embeddings, which safetensors' ``save_file`` refuses), and
its size is that of the trained entries, not of the model.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from circuitlens.core.io import atomic_write_bytes
from circuitlens.core.types import Model

#: the format tag written into every delta's metadata
FORMAT = "circuitlens-delta/1"
_SEGMENT = "._original_component"
#: the metadata key of the checksums, and the key under it of the metadata's own
CHECKSUMS, _META = "sha256", "__metadata__"

log = logging.getLogger(__name__)


class DeltaError(ValueError):
    """A delta that cannot be read or does not belong to the model it is applied to."""


class DeltaIntegrityError(DeltaError):
    """A delta file whose bytes are not those written (a checksum that differs, an index out of
    range): the message names the file and the tensor."""

    def __init__(self, path: Path, problem: str) -> None:
        self.path, self.problem = path, problem
        super().__init__(
            f"{path} is damaged: {problem}. Its bytes are not those circuitlens wrote: restore "
            "it from a copy, or recompute it (rerun the command that wrote it with the same "
            "--out)"
        )


def tensor_sha256(t: Tensor) -> str:
    """The hex sha256 of a tensor's dtype, shape and bytes (row-major)."""
    t = t.detach().cpu().contiguous()
    h = hashlib.sha256(f"{t.dtype} {tuple(t.shape)} ".encode())
    h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _meta_sha256(meta: dict[str, str]) -> str:
    rest = {k: v for k, v in meta.items() if k != CHECKSUMS}
    return hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()


def hf_name(name: str) -> str:
    """A bridge parameter's Hugging Face name (``model.layers.0.self_attn.q_proj.weight``)."""
    return name.replace(_SEGMENT, "")


def named_parameters(model: Model) -> dict[str, Tensor]:
    """The model's parameters by Hugging Face name (tied ones once, as ``named_parameters``)."""
    return {hf_name(n): p for n, p in model.named_parameters()}


def _product_indices(mask: Tensor) -> list[Tensor] | None:
    """Per-axis index sets whose product is ``mask``, or None when it is not a product."""
    if mask.ndim == 0:
        return None
    idx = []
    for d in range(mask.ndim):
        other = tuple(k for k in range(mask.ndim) if k != d)
        sel = mask.any(dim=other) if other else mask
        idx.append(sel.nonzero().flatten())
    rebuilt = torch.zeros_like(mask)
    rebuilt[_grid(idx, mask.ndim)] = True
    return idx if torch.equal(rebuilt, mask) else None


def _grid(idx: list[Tensor], ndim: int) -> tuple[Tensor, ...]:
    """Broadcast per-axis indices into an advanced index selecting their product."""
    return tuple(i.view([-1 if k == d else 1 for k in range(ndim)]) for d, i in enumerate(idx))


def frozen_hash(model: Model, masks: dict[str, Tensor]) -> str:
    """A hash of every parameter entry outside ``masks`` and every buffer, by name.

    ``masks`` maps Hugging Face parameter names (:func:`hf_name`) to bool masks of the trained
    entries; two models with the same frozen entries give the same hash whatever their trained
    entries hold."""
    h = hashlib.blake2b(digest_size=16)
    tensors = named_parameters(model) | {hf_name(n): b for n, b in model.named_buffers()}
    for name in sorted(tensors):
        t = tensors[name].detach().cpu()
        if name in masks:
            t = t[~masks[name].cpu()]
        t = t.contiguous()
        h.update(name.encode() + str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@dataclass
class Delta:
    """The trained entries of a model, and what names its base.

    Attributes:
        entries: Hugging Face parameter name -> (bool mask of the trained entries, their values
            in mask order).
        meta: ``format``, ``base_frozen_hash`` and whatever the writer added (the base's spec
            and fingerprint).
    """

    entries: dict[str, tuple[Tensor, Tensor]]
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def masks(self) -> dict[str, Tensor]:
        return {n: m for n, (m, _) in self.entries.items()}

    @property
    def n_values(self) -> int:
        """Trained entries stored."""
        return sum(v.numel() for _, v in self.entries.values())


def model_delta(
    model: Model, masks: dict[str, Tensor], meta: dict[str, str] | None = None
) -> Delta:
    """The entries of ``model`` that ``masks`` marks (Hugging Face names or the bridge's own
    parameter names), with the frozen entries' hash in the metadata."""
    params = named_parameters(model)
    masks = {hf_name(n): m.detach().cpu().bool() for n, m in masks.items()}
    unknown = sorted(set(masks) - set(params))
    if unknown:
        raise DeltaError(f"masks name parameters the model lacks: {unknown[:3]}")
    entries = {n: (m, params[n].detach().cpu()[m]) for n, m in masks.items() if m.any()}
    meta = {"format": FORMAT, "base_frozen_hash": frozen_hash(model, masks), **(meta or {})}
    return Delta(entries, meta)


def delta_bytes(delta: Delta) -> bytes:
    """The delta as a safetensors file's bytes (see the module docstring for the layout)."""
    from safetensors.torch import save

    tensors: dict[str, Tensor] = {}
    for name, (mask, values) in delta.entries.items():
        idx = _product_indices(mask)
        if idx is None:
            tensors[f"{name}::mask"] = mask.contiguous()
            tensors[f"{name}::values"] = values.contiguous()
            continue
        block = torch.empty(tuple(len(i) for i in idx), dtype=values.dtype)
        # values are in mask (row-major) order, which is the block's row-major order too
        block.view(-1).copy_(values)
        for d, i in enumerate(idx):
            tensors[f"{name}::i{d}"] = i.contiguous()
        tensors[f"{name}::block"] = block
        tensors[f"{name}::shape"] = torch.tensor(mask.shape, dtype=torch.int64)
    meta = {k: v for k, v in delta.meta.items() if k != CHECKSUMS}
    meta["names"] = json.dumps(sorted(delta.entries))
    sums = {k: tensor_sha256(t) for k, t in tensors.items()} | {_META: _meta_sha256(meta)}
    meta[CHECKSUMS] = json.dumps(sums, sort_keys=True)
    return save(tensors, metadata=meta)


def save_delta(path: str | Path, delta: Delta) -> None:
    """Write ``delta`` to ``path`` (safetensors) atomically."""
    atomic_write_bytes(Path(path), delta_bytes(delta))


def _verify(path: Path, meta: dict[str, str], tensors: dict[str, Tensor]) -> None:
    """Check the stored checksums (see the module docstring); a delta without them is logged."""
    if CHECKSUMS not in meta:
        log.info("%s was written before deltas carried checksums: its bytes are not verified", path)
        return
    try:
        sums = json.loads(meta[CHECKSUMS])
        assert isinstance(sums, dict)
    except (ValueError, AssertionError):
        raise DeltaIntegrityError(path, "its checksum table does not parse") from None
    if sums.get(_META) != _meta_sha256(meta):
        raise DeltaIntegrityError(path, "its metadata differs from its checksum")
    if set(sums) - {_META} != set(tensors):
        raise DeltaIntegrityError(path, "it holds other tensors than its checksum table lists")
    for k in sorted(tensors):
        if tensor_sha256(tensors[k]) != sums[k]:
            raise DeltaIntegrityError(path, f"tensor {k!r} differs from its sha256 checksum")


def _entry(path: Path, name: str, tensors: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """One parameter's (mask, values), every stored index checked against the shape."""
    bad = lambda problem: DeltaIntegrityError(path, f"{name}: {problem}")  # noqa: E731
    if f"{name}::mask" in tensors:
        mask, values = tensors[f"{name}::mask"], tensors.get(f"{name}::values")
        if mask.dtype != torch.bool or values is None or values.numel() != int(mask.sum()):
            raise bad("its mask and values do not match")
        return mask, values
    try:
        shape = tuple(tensors[f"{name}::shape"].tolist())
        idx = [tensors[f"{name}::i{d}"] for d in range(len(shape))]
        block = tensors[f"{name}::block"]
    except KeyError as e:
        raise bad(f"tensor {e.args[0]!r} is missing") from None
    if any(n < 0 for n in shape):
        raise bad(f"stored shape {shape} is negative")
    for d, i in enumerate(idx):
        if i.ndim != 1 or i.dtype != torch.int64:
            raise bad(f"index {d} is not a 1-D int64 tensor")
        if i.numel() and (int(i.min()) < 0 or int(i.max()) >= shape[d]):
            raise bad(f"index {d} holds {int(i.min())}..{int(i.max())}, out of 0..{shape[d] - 1}")
        if i.numel() > 1 and not bool((i[1:] > i[:-1]).all()):
            raise bad(f"index {d} is not strictly increasing")
    if tuple(block.shape) != tuple(len(i) for i in idx):
        raise bad(f"block shape {tuple(block.shape)} differs from its indices'")
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[_grid(idx, len(shape))] = True
    return mask, block.reshape(-1)


def load_delta(path: str | Path) -> Delta:
    """Read a delta written by :func:`save_delta`, checking its checksums and indices.

    Raises:
        DeltaError: ``path`` is not a readable delta (a bad header, another format).
        DeltaIntegrityError: its bytes are not those written (a checksum differs, an index is
            out of range): the message names the file and the tensor.
    """
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except Exception as e:  # safetensors raises its own error types for a bad header
        raise DeltaError(f"{path} is not a readable weight delta ({e}); delete it and rerun") from e
    if meta.get("format") != FORMAT:
        raise DeltaError(f"{path}: not a {FORMAT} file (format {meta.get('format')!r})")
    _verify(path, meta, tensors)
    meta.pop(CHECKSUMS, None)
    try:
        names = json.loads(meta.pop("names"))
    except (KeyError, ValueError):
        problem = "its list of parameter names is missing or damaged"
        raise DeltaIntegrityError(path, problem) from None
    entries = {name: _entry(path, name, tensors) for name in names}
    return Delta(entries, meta)


def apply_delta(model: Model, delta: Delta, check: bool = True) -> None:
    """Write ``delta``'s trained entries into ``model`` in place.

    Raises:
        DeltaError: a parameter the model lacks, a shape that differs, or (``check``) frozen
            entries that differ from the base the delta was made on.
    """
    params = named_parameters(model)
    for name, (mask, _) in delta.entries.items():
        if name not in params:
            raise DeltaError(f"the delta trains {name!r}, which this model lacks")
        if tuple(params[name].shape) != tuple(mask.shape):
            raise DeltaError(
                f"{name}: the delta's shape {tuple(mask.shape)} differs from the model's "
                f"{tuple(params[name].shape)}"
            )
    if check and frozen_hash(model, delta.masks) != delta.meta.get("base_frozen_hash"):
        base = delta.meta.get("base_spec") or "the student the run started from"
        raise DeltaError(
            "this model's untrained weights differ from those of the student the delta was "
            f"made on ({base}, fingerprint {delta.meta.get('base_fingerprint', '?')}): load that "
            "student and apply the delta to it"
        )
    with torch.no_grad():
        for name, (mask, values) in delta.entries.items():
            p = params[name]
            p[mask.to(p.device)] = values.to(device=p.device, dtype=p.dtype)


__all__ = [
    "FORMAT",
    "Delta",
    "DeltaError",
    "DeltaIntegrityError",
    "apply_delta",
    "delta_bytes",
    "frozen_hash",
    "hf_name",
    "load_delta",
    "model_delta",
    "named_parameters",
    "save_delta",
    "tensor_sha256",
]
