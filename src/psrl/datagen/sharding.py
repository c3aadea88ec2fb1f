"""Splitting a stage's samples over processes started by ``accelerate launch`` or ``torchrun``.

Rank ``r`` of ``w`` takes the input samples at positions ``i`` with ``i % w == r`` (positions in the input stage's
manifest, so the split does not depend on what is already done), writes ``<stage>.part-<r>.jsonl``, and rank 0
merges the parts into ``<stage>.jsonl`` after a barrier. The process group only synchronises (barriers), so it uses
gloo on every machine; the models of each rank go to ``cuda:<local_rank>`` when there is a GPU.
"""
from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Shard:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def owns(self, position: int) -> bool:
        return position % self.world == self.rank

    def barrier(self) -> None:
        if self.distributed and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()

    def device(self, requested: str = "auto") -> torch.device:
        """``auto``: this rank's GPU when there is one, else the CPU; anything else is used as given."""
        if requested != "auto":
            return torch.device(requested)
        if torch.cuda.is_available():
            return torch.device("cuda", self.local_rank % torch.cuda.device_count())
        return torch.device("cpu")


def current_shard(*, init: bool = True) -> Shard:
    """The shard of this process from the launcher's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``).
    With ``init`` and more than one process, a gloo process group is created if none exists yet."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"bad launcher environment: RANK={rank} WORLD_SIZE={world}")
    if world > 1 and init and torch.distributed.is_available() and not torch.distributed.is_initialized():
        # barriers only: gloo works whatever the device; a long timeout because ranks finish shards unevenly
        torch.distributed.init_process_group(backend="gloo", timeout=datetime.timedelta(hours=6))
        log.info("data pipeline shard %d/%d (gloo process group)", rank, world)
    return Shard(rank=rank, world=world, local_rank=local_rank)


def shutdown(shard: Shard) -> None:
    if shard.distributed and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
