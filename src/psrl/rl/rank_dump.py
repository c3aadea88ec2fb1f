"""What ``run.dump_rank_data`` writes: every process's view of each GRPO step under ``run_dir/rank_data/``, to
check that a distributed run (several processes, FSDP) computes what a single process does."""
from __future__ import annotations

from pathlib import Path

from safetensors.torch import save_file

from psrl.fileio import atomic_path, write_json_atomic


def dump_rank_data(run_dir: Path, step: int, rank: int, assignment, records, all_rewards, result) -> None:
    """``rank-<rank>-step-<step>.json``: the process's slice of the step's samples, the record ids and groups of
    the whole step, the gathered rewards ``[N, K]``, the advantages ``[N, T]`` and the trained mask ``[N]``."""
    data = {
        "step": step, "rank": rank, "local": [assignment.local.start, assignment.local.stop],
        "record_ids": [records[i].id for i in assignment.record_indices],
        "group_ids": list(assignment.group_ids),
        "rewards": all_rewards.tolist(), "advantages": result.advantages.tolist(),
        "trained": result.trained.tolist(),
    }
    write_json_atomic(Path(run_dir) / "rank_data" / f"rank-{rank}-step-{step}.json", data, indent=None)


def dump_weights(run_dir: Path, step: int, rank: int, named_params: dict) -> None:
    """``rank-<rank>-step-<step>.safetensors``: the process's trainable tensors after the step, by name."""
    with atomic_path(Path(run_dir) / "rank_data" / f"rank-{rank}-step-{step}.safetensors") as tmp:
        save_file({k: p.detach().cpu().contiguous() for k, p in named_params.items()}, tmp)


__all__ = ["dump_rank_data", "dump_weights"]
