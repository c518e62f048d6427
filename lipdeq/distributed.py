"""Multi-process training on PyTorch's own engine (torchrun + DistributedDataParallel).

``torchrun --nproc_per_node=K -m lipdeq train …`` sets RANK/WORLD_SIZE/LOCAL_RANK; this module
turns them into a :class:`DistContext` (gloo on CPU, NCCL on CUDA). Every rank sees the same
global permutation of the data and takes an equal, interleaved share of each global batch, so
K processes with a global batch of size B follow the same trajectory as one process with batch B
(DDP averages the gradients). Only rank 0 writes files.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def shard(self, batch_indices: torch.Tensor) -> torch.Tensor:
        """This rank's share of a global batch (every world_size-th index, starting at rank)."""
        return batch_indices[self.rank::self.world_size]

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t


def init_from_env(device: str) -> DistContext:
    """Initialise the process group when launched by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend)
    return DistContext(rank=rank, world_size=world, local_rank=local)


def close(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()
