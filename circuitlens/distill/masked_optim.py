"""AdamW on the masked entries only: the one optimiser step of the circuit trainer.

Gradients are multiplied by each parameter's mask before the step, and after it every entry
outside the mask is put back bit for bit (AdamW's weight decay moves zero-gradient weights).
Under data parallelism (not FSDP, which reduces its shards itself) the ranks' gradients are
summed first: each rank's loss is its part of the global batch's, so the sum is the
single-process gradient.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class MaskedOptimizer:
    """AdamW over ``params`` that changes only the entries where ``masks`` is True.

    Args:
        params: parameter name -> the parameter (trained in place).
        masks: parameter name -> bool mask of the trainable entries (same keys).
        lr, weight_decay: AdamW's.
        all_reduce: sum the gradients over ``torch.distributed``'s processes before the step.
    """

    def __init__(
        self,
        params: dict[str, Tensor],
        masks: dict[str, Tensor],
        lr: float,
        weight_decay: float,
        all_reduce: bool = False,
    ) -> None:
        if set(params) != set(masks):
            raise ValueError("params and masks must name the same parameters")
        self.params, self.masks, self.all_reduce = params, masks, all_reduce
        self.frozen = {n: p.detach().clone() for n, p in params.items()}
        self.opt = torch.optim.AdamW(list(params.values()), lr=lr, weight_decay=weight_decay)

    def step(self, loss: Tensor) -> None:
        """Backpropagate ``loss`` and take one masked step."""
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.all_reduce:
            import torch.distributed as dist

            for p in self.params.values():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
        for n, p in self.params.items():
            if p.grad is not None:
                p.grad.mul_(self.masks[n])
        self.opt.step()
        with torch.no_grad():  # AdamW decays every entry: put the frozen ones back exactly
            for n, p in self.params.items():
                p.copy_(torch.where(self.masks[n], p, self.frozen[n]))

    def state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """The weights and the optimiser's state, whole (gathered when sharded: a collective,
        every rank calls it)."""
        from circuitlens.distill.fsdp import gather_state

        return gather_state(self.params, self.opt)

    def load(self, params: dict[str, Tensor], opt: dict[str, Any]) -> None:
        """Put saved whole weights and optimiser state back (each rank its shard)."""
        from circuitlens.distill.fsdp import scatter_state

        scatter_state(self.params, self.opt, params, opt)
