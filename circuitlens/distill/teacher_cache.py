"""The teacher's outputs for a training run, computed once and kept (memory and safetensors).

A :class:`~circuitlens.distill.trainer.CircuitTrainer` needs from the teacher, per batch of prompts,
its answer-position labels (its top token), its answer-position logits (the ``kd`` condition
only) and the output ``z`` of the mapped heads at the CKA rows. The training batches follow
from the trainer's seed, batch size and task alone, so every condition of one seed draws the
same batches, and the held-out CKA prompts are the same for every cell: a :class:`TeacherCache`
runs the teacher once per set of batches and serves every later request from memory or from
its directory (one safetensors file per set, named by a hash of the teacher's weights, the
prompts and the positions, listing the layers it holds). Training steps never run the teacher
then, but on the first step of a chunk (:class:`TeacherFeed`) not yet cached.

The cached values are the live computation's bit for bit: the same batches through the same
forward (:func:`teacher_batch`, which the trainer also uses without a cache); tests check it.

Conditions of one seed ask for different parts of the same batches: the random map reads other
teacher layers, ``kd`` the logits. :meth:`TeacherCache.expect` announces them, so that the first
pass over a set of batches computes everything the coming requests need at once, and a request
for a part of what is held is served from it (a hook that reads a layer changes no value, so
the parts equal separate passes bit for bit; tested). A file holding more than a process
expects is read all the same (a run resumed in the middle of a seed expects only what its
pending conditions ask); a request for a layer a file lacks recomputes the set with the file's
layers and that one.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from circuitlens.core.hooks import z_name
from circuitlens.core.io import atomic_write_bytes
from circuitlens.core.types import Model
from circuitlens.tasks import Prompt, PromptBatch, tokenize_prompts
from circuitlens.tasks.metrics import keep_positions, model_device

log = logging.getLogger(__name__)

#: bump when what a cache file holds changes meaning (old files are then never read)
CACHE_VERSION = 2


@dataclass
class TeacherBatch:
    """What training reads from the teacher for one batch.

    Attributes:
        labels: ``[batch]`` the teacher's top token at each prompt's answer position.
        logits: ``[batch, d_vocab]`` its logits there (``None`` unless asked for).
        z: ``(layer, position name)`` -> ``[batch, rows, n_heads, d_head]``: the layer's head
            outputs at the named position (one row), or at every non-BOS token
            (``"tokens"``).
    """

    labels: Tensor
    logits: Tensor | None
    z: dict[tuple[int, str], Tensor]


def token_rows(batch: PromptBatch, model: Model, position: str) -> Tensor:
    """The token index of each CKA row of ``position``, ``[batch, rows]``: a named position of
    the task (one row), or ``"tokens"``: every non-BOS token (prompts of equal length)."""
    n = len(batch)
    if position != "tokens":
        return batch.positions[position][:, None]
    last = batch.positions["last"]
    bos = getattr(getattr(model, "tokenizer", None), "bos_token_id", None)
    start = 1 if bos is not None and bool((batch.tokens[:, 0] == bos).all()) else 0
    return torch.arange(start, int(last[0]) + 1).expand(n, -1)  # the BOS is never a row


@torch.no_grad()
def teacher_batch(
    teacher: Model,
    batch: PromptBatch,
    layers: Sequence[int],
    positions: Sequence[str],
    logits: bool = False,
) -> TeacherBatch:
    """The teacher's :class:`TeacherBatch` for one tokenized batch (one forward)."""
    names = {z_name(layer) for layer in layers}
    # the final norm and unembedding only at the answer position (a SmolLM2 forward spends a
    # large share of its time on the 49,152-way unembedding at every position otherwise)
    keep, gather = keep_positions(teacher, batch.positions["last"].to(batch.tokens.device))
    out, cache = teacher.run_with_cache(batch.tokens, names_filter=lambda n: n in names, **keep)
    last = gather(out if isinstance(out, Tensor) else out.logits)
    z = {}
    for layer in layers:
        acts = cache[z_name(layer)]
        for p in positions:
            rows = token_rows(batch, teacher, p).to(acts.device)
            z[layer, p] = acts[torch.arange(acts.shape[0], device=acts.device)[:, None], rows]
    return TeacherBatch(last.argmax(-1), last if logits else None, z)


def model_hash(model: Model) -> str:
    """A hash of a model's weights (every tensor of its state dict, by name)."""
    h = hashlib.blake2b(digest_size=16)
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        t = t.detach().cpu().contiguous()
        h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _part(
    b: TeacherBatch, layers: Sequence[int], positions: Sequence[str], logits: bool
) -> TeacherBatch:
    """The part of ``b`` a request asks for (the same tensors, not copies)."""
    z = {(layer, p): b.z[layer, p] for layer in layers for p in positions}
    return TeacherBatch(b.labels, b.logits if logits else None, z)


class TeacherCache:
    """Teacher outputs per set of batches, in memory and (with a ``directory``) on disk.

    Args:
        directory: where the safetensors files go (``None``: memory only). Files are written
            atomically; a file is read only when its name (the hash of everything that
            determines it, the teacher's weights included) matches.
    """

    def __init__(self, directory: str | Path | None = None) -> None:
        self.directory = Path(directory) if directory is not None else None
        self._memory: dict[str, list[TeacherBatch]] = {}
        # per set of batches (teacher and prompts): what is held, (layers, positions, logits,
        # the batches' outputs), so that a request for a part of it is served from it
        self._held: dict[str, list[tuple[set[int], set[str], bool, list[TeacherBatch]]]] = {}
        self._hashes: dict[int, tuple[Any, str]] = {}
        self._expected: tuple[set[int], bool] = (set(), False)
        self.computed = 0  # batches computed by running the teacher (the rest were served)

    def __repr__(self) -> str:
        return (
            f"TeacherCache(directory={str(self.directory) if self.directory else None!r}, "
            f"sets={len(self._memory)}, computed={self.computed})"
        )

    def _teacher_hash(self, teacher: Model) -> str:
        held = self._hashes.get(id(teacher))
        if held is None or held[0] is not teacher:
            held = (teacher, model_hash(teacher))
            self._hashes[id(teacher)] = held
        return held[1]

    def key(
        self,
        teacher: Model,
        batches: Sequence[Sequence[Prompt]],
        layers: Sequence[int],
        positions: Sequence[str],
        logits: bool,
    ) -> str:
        h = hashlib.sha256()
        h.update(
            json.dumps(
                {
                    "version": CACHE_VERSION,
                    "teacher": self._teacher_hash(teacher),
                    "layers": sorted(set(layers)),
                    "positions": sorted(set(positions)),
                    "logits": logits,
                    "sizes": [len(b) for b in batches],
                }
            ).encode()
        )
        for b in batches:
            for p in b:
                h.update(json.dumps([p.text, p.answer, sorted(p.spans.items())]).encode())
        return h.hexdigest()[:32]

    def expect(self, layers: Iterable[int] = (), logits: bool = False) -> None:
        """Announce what later requests will ask for: the next set of batches computed also
        holds these teacher layers (at the requested positions) and, with ``logits``, the
        answer-position logits, and later requests for any part of it are served from it."""
        self._expected = (set(layers), bool(logits))

    def get(
        self,
        teacher: Model,
        batches: Sequence[Sequence[Prompt]],
        layers: Sequence[int],
        positions: Sequence[str],
        logits: bool = False,
        progress: bool = False,
    ) -> list[TeacherBatch]:
        """The teacher's outputs for each batch of prompts (computed at most once per set)."""
        layers = sorted(set(layers))
        positions = sorted(set(positions))
        if "tokens" in positions and len(positions) > 1:
            raise ValueError('"tokens" rows are cached alone (they differ in number per batch)')
        k = self.key(teacher, batches, layers, positions, logits)
        if k in self._memory:
            return self._memory[k]
        sig = self.key(teacher, batches, [], [], False)

        def covers(have_layers: set[int], have_logits: bool) -> bool:
            return set(layers) <= have_layers and (have_logits or not logits)

        for have_layers, have_positions, have_logits, held in self._held.get(sig, []):
            if covers(have_layers, have_logits) and set(positions) <= have_positions:
                part = [_part(b, layers, positions, logits) for b in held]
                self._memory[k] = part
                return part
        # the file of these batches at these positions, whatever layers it holds: a process
        # expecting fewer parts (a run resumed in the middle of a seed) reads it all the same
        file_key = self.key(teacher, batches, [], positions, False)
        read = self._read(file_key, batches, positions)
        if read is not None and covers(read[0], read[1]):
            have_layers, have_logits, found = read
        else:  # what is asked, what is expected, and what the file held
            extra_layers, extra_logits = self._expected
            have_layers = set(layers) | (extra_layers if "tokens" not in positions else set())
            have_logits = logits or extra_logits
            if read is not None:
                have_layers, have_logits = have_layers | read[0], have_logits or read[1]
            all_layers = sorted(have_layers)
            device = model_device(teacher)
            found = []
            for prompts in tqdm(batches, desc="teacher cache", disable=not progress):
                tb = tokenize_prompts(teacher, list(prompts)).to(device)
                found.append(teacher_batch(teacher, tb, all_layers, positions, have_logits))
                self.computed += 1
            self._write(file_key, found, all_layers, positions, have_logits)
        self._held.setdefault(sig, []).append((have_layers, set(positions), have_logits, found))
        part = [_part(b, layers, positions, logits) for b in found]
        self._memory[k] = part
        return part

    def clear_memory(self) -> None:
        self._memory.clear()
        self._held.clear()

    # -- disk --------------------------------------------------------------------------------
    def _path(self, k: str) -> Path | None:
        return None if self.directory is None else self.directory / f"{k}.safetensors"

    def _write(
        self,
        k: str,
        found: list[TeacherBatch],
        layers: list[int],
        positions: list[str],
        logits: bool,
    ) -> None:
        path = self._path(k)
        if path is None or "tokens" in positions:  # token rows differ in shape per batch
            return
        from safetensors.torch import save

        tensors = {"labels": torch.cat([b.labels for b in found]).cpu()}
        if logits:
            tensors["logits"] = torch.cat([b.logits for b in found]).cpu()  # type: ignore[misc]
        for layer in layers:
            for p in positions:
                tensors[f"z.{layer}.{p}"] = torch.cat([b.z[layer, p] for b in found]).cpu()
        meta = {
            "sizes": json.dumps([len(b.labels) for b in found]),
            "layers": json.dumps(layers),
            "version": str(CACHE_VERSION),
        }
        atomic_write_bytes(path, save({n: t.contiguous() for n, t in tensors.items()}, meta))

    def _read(
        self, k: str, batches: Sequence[Sequence[Prompt]], positions: list[str]
    ) -> tuple[set[int], bool, list[TeacherBatch]] | None:
        """The file ``k``'s outputs (``None``: no such file, or not these batches), with the
        layers it holds and whether it holds the logits."""
        path = self._path(k)
        if path is None or not path.is_file():
            return None
        from safetensors import safe_open

        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata()
                sizes = json.loads(meta["sizes"])
                layers = json.loads(meta["layers"])
                t = {n: f.get_tensor(n) for n in f.keys()}  # noqa: SIM118 (safe_open API)
        except Exception as e:  # a damaged file is recomputed, never trusted
            log.warning("teacher cache file %s unreadable (%s): recomputing", path, e)
            return None
        if sizes != [len(b) for b in batches]:
            return None
        logits = "logits" in t
        out, start = [], 0
        for n in sizes:
            s = slice(start, start + n)
            z = {(layer, p): t[f"z.{layer}.{p}"][s] for layer in layers for p in positions}
            out.append(TeacherBatch(t["labels"][s], t["logits"][s] if logits else None, z))
            start += n
        log.info("teacher cache: %d batches read from %s", len(out), path)
        return set(layers), logits, out


#: the step batches a :class:`TeacherFeed` computes at once, when a step of them is first read
CHUNK = 25


class TeacherFeed:
    """What one trainer reads from the teacher: the outputs for every step's batch of
    ``schedule`` (cached, in chunks of ``chunk`` steps computed when a step of the chunk is
    first read: a run that stops early never runs the teacher on the steps it does not take)
    and for any other prompts (the held-out CKA prompts: cached as one batch too), or, with
    ``cache=None``, the teacher run live on each request (less memory). Each batch is computed
    alone, so the outputs are the same bit for bit whatever the chunks.

    ``request``: the parts asked for (``layers``, ``positions``, ``logits``: see
    :meth:`TeacherCache.get`)."""

    def __init__(
        self,
        teacher: Model,
        schedule: list[list[Prompt]],
        cache: TeacherCache | None,
        request: dict[str, Any],
        chunk: int = CHUNK,
    ) -> None:
        if chunk < 1:
            raise ValueError(f"chunk must be at least 1 step, got {chunk}")
        self.teacher, self.schedule, self.cache, self.request = teacher, schedule, cache, request
        self.chunk = chunk
        self._chunks: dict[int, list[TeacherBatch]] = {}

    def _chunk(self, c: int, progress: bool = False) -> list[TeacherBatch]:
        """The outputs of chunk ``c``: steps ``c * chunk + 1`` to ``(c + 1) * chunk``."""
        if c not in self._chunks:
            assert self.cache is not None
            part = self.schedule[c * self.chunk : (c + 1) * self.chunk]
            self._chunks[c] = self.cache.get(self.teacher, part, progress=progress, **self.request)
        return self._chunks[c]

    def all(self, progress: bool = False) -> list[TeacherBatch]:
        """The teacher's outputs for every step's batch (from the cache, or computed now)."""
        if self.cache is None:
            raise ValueError("this trainer runs without a teacher cache (teacher_cache=False)")
        n = -(-len(self.schedule) // self.chunk)
        return [b for c in range(n) for b in self._chunk(c, progress)]

    def get(self, prompts: list[Prompt], step: int | None) -> tuple[PromptBatch, TeacherBatch]:
        """The teacher's batch (tokenized) and outputs: step ``step``'s from its chunk, or
        ``prompts``' (cached as one batch, or live without a cache)."""
        tb = tokenize_prompts(self.teacher, prompts)
        if self.cache is None:
            out = teacher_batch(self.teacher, tb.to(model_device(self.teacher)), **self.request)
        elif (
            step is not None
            and 1 <= step <= len(self.schedule)
            and self.schedule[step - 1] == prompts
        ):
            out = self._chunk((step - 1) // self.chunk)[(step - 1) % self.chunk]
        else:
            (out,) = self.cache.get(self.teacher, [prompts], **self.request)
        return tb, out
