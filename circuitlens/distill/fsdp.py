"""Fully sharded training of a student too large for one device (FSDP2, ``fully_shard``).

Under ``torch.distributed`` (``torchrun``), ``CircuitTrainer(..., run=TrainRun(fsdp=True))``
shards the student's weights over the processes before training: each decoder layer is one FSDP
unit, the embeddings, final norm and unembedding the root's. Each process then holds 1/world of
every weight, and of its gradients and optimizer state; a layer's weights are gathered only
while that layer runs. The data-parallel arithmetic is that of the unsharded trainer (each
process runs its contiguous share of every global batch and its loss parts sum to the global
batch's), so the gradients are summed, not averaged, across processes (divide factor 1, plain
sums), and the trained slices equal a one-process run's within float rounding (tested with two
gloo processes on the CPU). The head masks are derived on the whole model, before sharding, and
sharded like the weights they mask.

What needs a whole weight outside a forward pass is refused by name: ``site="result"`` (reads
``W_O``). Checkpoints gather the weights and optimizer state to rank 0, which writes the same
file as an unsharded run (resumable with any number of processes, or none).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from circuitlens.core.types import Model
from circuitlens.core.validate import ConfigError
from circuitlens.tasks.metrics import model_device


def _decoder_layers(hf: Any) -> list[Any]:
    """The decoder layers of a Hugging Face causal LM (``model.layers`` and the like)."""
    for name in ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers"):
        obj = hf
        for part in name.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, torch.nn.ModuleList) and len(obj):
            return list(obj)
    raise ConfigError(
        f"fsdp=True: cannot find the decoder layers of {type(hf).__name__} (looked for "
        "model.layers, transformer.h, gpt_neox.layers, model.decoder.layers)"
    )


def is_sharded(model: Model) -> bool:
    """Whether ``model``'s weights are sharded (DTensors)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def shard_student(student: Model, masks: dict[str, Tensor]) -> dict[str, Tensor]:
    """Shard the bridge ``student``'s weights over the processes (in place) and return the
    ``masks`` (by parameter name, whole-weight shapes) sharded like their weights."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import distribute_tensor

    if not (dist.is_available() and dist.is_initialized()):
        raise ConfigError(
            "fsdp=True shards the student over processes: run under torchrun and call "
            "torch.distributed.init_process_group first (one process has nothing to shard over)"
        )
    if is_sharded(student):
        raise ConfigError(
            "fsdp=True: this student is sharded already (by an earlier trainer); load a fresh "
            "copy for each trainer"
        )
    hf = getattr(student, "original_model", None)
    if hf is None:
        raise ConfigError("fsdp=True needs a TransformerBridge student (load it with load_model)")
    device = model_device(student)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    units = []
    for layer in _decoder_layers(hf):
        fully_shard(layer, mesh=mesh)
        units.append(layer)
    fully_shard(hf, mesh=mesh)
    units.append(hf)
    for unit in units:  # the ranks' loss parts sum to the global batch's: sum their gradients
        unit.set_gradient_divide_factor(1.0)
        unit.set_force_sum_reduction_for_comms(True)  # a plain sum (gloo has no PREMUL_SUM)
    params = dict(student.named_parameters())
    return {
        n: distribute_tensor(m.to(device), mesh, params[n].placements, src_data_rank=None)
        for n, m in masks.items()
    }


def full(t: Any) -> Any:
    """A sharded tensor gathered whole (a collective: every process must call it); anything
    else as it is."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def like(value: Any, param: Tensor) -> Any:
    """A whole tensor sharded like ``param`` (each process keeps its own part; no
    communication); anything else, or when ``param`` is not sharded, as it is."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if not isinstance(param, DTensor) or not isinstance(value, Tensor):
        return value
    if value.shape != param.shape:  # a scalar state (AdamW's step)
        return value
    return distribute_tensor(
        value.to(param.to_local().device), param.device_mesh, param.placements, src_data_rank=None
    )


def gather_state(params: dict[str, Tensor], opt: Any) -> tuple[dict[str, Tensor], dict]:
    """The trained weights and the optimizer's state dict, every sharded tensor gathered whole
    (a collective when sharded: every rank calls it), as an unsharded run holds them."""
    whole = {n: full(p.detach()) for n, p in params.items()}
    state = opt.state_dict()
    state["state"] = {i: {k: full(v) for k, v in st.items()} for i, st in state["state"].items()}
    return whole, state


def scatter_state(params: dict[str, Tensor], opt: Any, saved: dict, saved_opt: dict) -> None:
    """Put saved whole weights and optimizer state back, each rank taking its part when the
    weights are sharded."""
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(like(saved[n], p))
    order = list(params.values())
    saved_opt["state"] = {
        i: {k: like(v, order[i]) for k, v in st.items()} for i, st in saved_opt["state"].items()
    }
    opt.load_state_dict(saved_opt)
