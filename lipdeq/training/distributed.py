"""Multi-process training on PyTorch's own engine (torchrun + DistributedDataParallel).

``torchrun --nproc_per_node=K -m lipdeq train …`` sets RANK/WORLD_SIZE/LOCAL_RANK; this module
turns them into a :class:`DistContext` (gloo on CPU, NCCL on CUDA). Every rank sees the same
global permutation of the data and takes an equal, interleaved share of each global batch, so
K processes with a global batch of size B follow the same trajectory as one process with batch B
(DDP averages the gradients). Only rank 0 writes files.

A last, partial batch of r < B samples splits unevenly (shares of ⌈r/K⌉ or ⌊r/K⌋, possibly 0):
each rank scales its mean loss by :meth:`DistContext.loss_weight` = K·(its share)/r, so DDP's
average of the rank gradients is still the gradient of the mean over the r samples; a rank whose
share is empty runs one sample with weight 0 (every rank must join every gradient all-reduce).
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

    def loss_weight(self, share: int, batch: int) -> float:
        """Factor on a rank's mean loss over ``share`` of ``batch`` samples: DDP averages the
        rank gradients, so K·share/batch makes the average the gradient of the batch mean
        (exactly 1.0 for equal shares)."""
        return self.world_size * share / batch if self.enabled else 1.0

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t


def world_size_from_env() -> int:
    """WORLD_SIZE as set by torchrun (1 when absent); ``ValueError`` if it is not a positive int."""
    text = os.environ.get("WORLD_SIZE", "1")
    try:
        world = int(text)
    except ValueError:
        raise ValueError(f"WORLD_SIZE must be a positive integer, got {text!r}") from None
    if world < 1:
        raise ValueError(f"WORLD_SIZE must be a positive integer, got {text!r}")
    return world


def check_batch_size(batch_size: int) -> None:
    """The global batch must split evenly over the ranks: checked before any process group
    exists, so a bad value fails fast on every rank (one line, exit 2) instead of hanging."""
    world = world_size_from_env()
    if batch_size % world:
        raise ValueError(f"batch size {batch_size} is not divisible by the world size {world} "
                         f"(each of the {world} processes takes an equal share of a batch)")


def init_from_env(device: str) -> DistContext:
    """Initialise the process group when launched by torchrun (WORLD_SIZE > 1)."""
    world = world_size_from_env()
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
