"""Data parallelism for `accelerate launch` (or torchrun): each process takes its slice of every batch, and the
LoRA gradients are summed once per step, so N processes take exactly the step one process would take.

One all-reduce of the flattened LoRA gradients per optimizer step (2.4M numbers at rank 8) replaces DDP's
per-backward bucket syncs, which would also need every process to run the same number of micro-batches.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Workers:
    rank: int = 0
    world: int = 1
    device: str | None = None  # set by the launcher (cuda:<local rank> or cpu); None: pick as usual

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, batch: Sequence[int]) -> list[int]:
        return list(batch[self.rank :: self.world])

    def sum_grads(self, params: Sequence[Any], *scalars: float) -> tuple[float, ...]:
        """Sum every process's gradients (and the given scalars) in place; the sums come back."""
        if self.world == 1:
            return scalars
        import torch
        import torch.distributed as dist

        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1).float() for g in grads] + [torch.tensor(scalars, device=grads[0].device)])
        dist.all_reduce(flat)
        offset = 0
        for p, g in zip(params, grads, strict=True):
            p.grad = flat[offset : offset + g.numel()].view_as(g).to(g.dtype)
            offset += g.numel()
        return tuple(flat[offset:].tolist())

    def wait(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()


def launched(device: str = "auto") -> Workers:
    """The process group a launcher started (WORLD_SIZE > 1), or a single worker."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Workers()
    from accelerate import PartialState

    state = PartialState(cpu=device == "cpu")
    return Workers(rank=state.process_index, world=state.num_processes, device=str(state.device))
