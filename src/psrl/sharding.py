"""Splitting work over the processes ``accelerate launch`` or ``torchrun`` started, and waiting for each other: the
one :class:`Shard` of the benchmark (``psrl bench generate|eval``) and the data pipeline (``psrl data``).

Rank ``r`` of ``W`` owns the positions ``i % W == r`` of one fixed, ordered list, so every item has exactly one owner
whatever the batch size or what is already done. Each rank writes its own files; rank 0 merges after a barrier. The
process group only synchronises (barriers, a few counts), so it is gloo on every machine (CPU tensors), and the
models of each rank go to ``cuda:<local_rank>`` when there is a GPU. torch is imported on first use.
"""
from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)

# ranks finish their shares unevenly (a benchmark or a data stage can run for hours), so barriers wait long
BARRIER_TIMEOUT = datetime.timedelta(hours=6)


@dataclass(frozen=True)
class Shard:
    """This process's place: ``rank`` of ``world`` processes, ``local_rank`` on its machine.

    Raises:
        ValueError: ``world < 1`` or ``rank`` outside ``[0, world)``.
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    def __post_init__(self):
        if self.world < 1 or not 0 <= self.rank < self.world:
            raise ValueError(f"invalid shard rank {self.rank} of world {self.world}")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def owns(self, position: int) -> bool:
        return position % self.world == self.rank

    def take(self, items: Sequence[T]) -> list[T]:
        """This rank's items: positions ``i % world == rank``."""
        return [x for i, x in enumerate(items) if self.owns(i)]

    def barrier(self) -> None:
        """Wait for every rank (nothing to wait for with one process).

        Raises:
            RuntimeError: several processes but no process group (make the shard with :func:`shard_from_env`).
        """
        if not self.distributed:
            return
        import torch.distributed as dist

        if not dist.is_initialized():
            raise RuntimeError("Shard.barrier: no process group; create the shard with shard_from_env()")
        dist.barrier()

    def all_sum(self, values: list[int]) -> list[int]:
        """Element-wise sum of ``values`` over every rank (counts for the final message)."""
        if not self.distributed:
            return list(values)
        import torch
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.long)
        dist.all_reduce(t)
        return t.tolist()

    def device(self, requested: str | None = "auto") -> str:
        """``requested`` as given; ``auto`` (or ``None``): ``cuda:<local_rank>`` when CUDA is available, else
        ``cpu``."""
        if requested not in (None, "", "auto"):
            return requested
        import torch

        if torch.cuda.is_available():
            return f"cuda:{self.local_rank % torch.cuda.device_count()}"
        return "cpu"


def shard_from_env(*, init: bool = True) -> Shard:
    """The shard of this process from the launcher's ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` (one process when
    unset). With ``init`` and several processes, joins a gloo process group unless one exists. ``torchrun`` and
    ``accelerate launch --multi_gpu`` set them (on a CPU-only machine too); ``accelerate launch --cpu`` with several
    processes goes through MPI and does not.

    Raises:
        ValueError: a ``RANK`` outside ``[0, WORLD_SIZE)``, naming both.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"bad launcher environment: RANK={rank} WORLD_SIZE={world}")
    shard = Shard(rank, world, local_rank)
    if shard.distributed and init:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
        log.info("shard %d/%d (gloo process group)", rank, world)
    return shard


def shutdown(shard: Shard) -> None:
    """Leave the process group (a clean exit for every rank); nothing to do with one process."""
    if not shard.distributed:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


__all__ = ["Shard", "shard_from_env", "shutdown"]
