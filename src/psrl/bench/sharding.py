"""Splitting benchmark work across processes (``accelerate launch`` / ``torchrun``) and waiting for each other.

Rank ``r`` of ``W`` takes the items at positions ``i % W == r`` of one fixed, ordered list, so every item has
exactly one owner whatever the batch size. Each rank writes its own files; rank 0 merges after a barrier. The
barrier uses a gloo process group (CPU tensors only), which works whatever the accelerator.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Shard:
    rank: int = 0
    world: int = 1

    def __post_init__(self):
        if self.world < 1 or not 0 <= self.rank < self.world:
            raise ValueError(f"invalid shard rank {self.rank} of world {self.world}")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def take(self, items: Sequence[T]) -> list[T]:
        """This rank's items: positions ``i % world == rank``."""
        return [x for i, x in enumerate(items) if i % self.world == self.rank]

    def barrier(self) -> None:
        """Wait for every rank (no-op for a single process)."""
        if self.world == 1:
            return
        import torch.distributed as dist

        if not dist.is_initialized():
            raise RuntimeError("Shard.barrier: no process group; create the shard with shard_from_env()")
        dist.barrier()

    def all_sum(self, values: list[int]) -> list[int]:
        """Element-wise sum of ``values`` over every rank (counts for the final message)."""
        if self.world == 1:
            return list(values)
        import torch
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.long)
        dist.all_reduce(t)
        return t.tolist()


def shard_from_env() -> Shard:
    """The shard of this process from the launcher's ``RANK`` / ``WORLD_SIZE`` (1 process when unset); joins a
    gloo process group when there are several. ``torchrun`` and ``accelerate launch --multi_gpu`` set them (on a
    CPU-only machine too); ``accelerate launch --cpu`` with several processes goes through MPI and does not."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    shard = Shard(rank, world)
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo")
        log.info("benchmark shard: rank %d of %d", rank, world)
    return shard


def local_device(requested: str | None) -> str:
    """``requested`` as given, or ``cuda:<LOCAL_RANK>`` when CUDA is available, else ``cpu``."""
    if requested:
        return requested
    import torch

    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return "cpu"
