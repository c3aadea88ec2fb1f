"""Which prompts each process rolls out in a GRPO step, and the noise seed of every sample.

Every process builds the same global list for a step from ``seed + step`` (no communication needed): ``groups``
prompts drawn without replacement while the pool lasts (a fresh permutation per pass), each repeated ``group_size``
times contiguously. Process ``r`` takes the ``r``-th contiguous slice, so a group may span two processes; advantages
are computed on the gathered rewards with the global ``group_ids``.
"""
from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

import torch

from psrl.sampling import plan_steps
from psrl.seeding import stable_seed


@dataclass(frozen=True)
class StepAssignment:
    """The global plan of one step and this process's slice of it.

    ``record_indices[i]`` / ``group_ids[i]`` / ``sample_seeds[i]`` describe global sample ``i``; ``local`` is the
    ``slice`` of this process."""

    record_indices: tuple[int, ...]
    group_ids: tuple[int, ...]
    sample_seeds: tuple[int, ...]
    local: slice

    @property
    def local_record_indices(self) -> tuple[int, ...]:
        return self.record_indices[self.local]

    @property
    def local_group_ids(self) -> tuple[int, ...]:
        return self.group_ids[self.local]

    @property
    def local_sample_seeds(self) -> tuple[int, ...]:
        return self.sample_seeds[self.local]


def sample_seed(seed: int, step: int, index: int, salt: str = "rollout") -> int:
    """A 63-bit seed from ``(seed, step, index)``: independent of batch split and process count, so a resumed or
    re-sharded run draws exactly the same noise."""
    return stable_seed(salt, seed, step, index)


class GroupSampler:
    """Draws ``groups_per_step`` prompts per step, repeats each ``group_size`` times, splits over processes.

    Args:
        num_records: size of the prompt pool.
        groups_per_step: prompts per step (over all processes).
        group_size: ``G``.
        seed: base seed; step ``s`` uses ``seed + s``.
        num_processes, process_index: this process's place.
    """

    def __init__(self, num_records: int, groups_per_step: int, group_size: int, seed: int,
                 num_processes: int = 1, process_index: int = 0):
        if num_records < 1:
            raise ValueError("the prompt pool is empty")
        total = groups_per_step * group_size
        if total % num_processes:
            raise ValueError(f"{total} samples per step do not split over {num_processes} processes")
        self.num_records = num_records
        self.groups_per_step = groups_per_step
        self.group_size = group_size
        self.seed = seed
        self.num_processes = num_processes
        self.process_index = process_index

    def prompts_for_step(self, step: int) -> list[int]:
        """The ``groups_per_step`` record indices of ``step`` (identical on every process)."""
        gen = torch.Generator().manual_seed(self.seed + step)
        chosen: list[int] = []
        while len(chosen) < self.groups_per_step:
            chosen.extend(torch.randperm(self.num_records, generator=gen).tolist())
        return chosen[: self.groups_per_step]

    def assign(self, step: int) -> StepAssignment:
        prompts = self.prompts_for_step(step)
        record_indices = tuple(p for p in prompts for _ in range(self.group_size))
        group_ids = tuple(g for g in range(self.groups_per_step) for _ in range(self.group_size))
        # one seed per sample; sharing the initial noise inside a group is the policy's job
        # (sampling.same_noise_per_group), since the SDE noise must still differ
        seeds = [sample_seed(self.seed, step, i) for i in range(len(record_indices))]
        per_process = len(record_indices) // self.num_processes
        start = self.process_index * per_process
        return StepAssignment(record_indices, group_ids, tuple(seeds), slice(start, start + per_process))


def step_sampling(sampling, seed: int, step: int):
    """The sampling config and trained steps of GRPO step ``step``: ``(SamplingConfig, trained step indices)``. A
    Flow-GRPO-Fast window is drawn once per step from ``seed + step`` (identical on every process and after a
    resume) and passed to the policy as a list; PaCo's random sparse noise steps (``train_steps: list`` with
    ``num_noise_steps``) are drawn from the seed and the step too."""
    s = sampling
    plan = plan_steps(s.num_steps, s.train_steps, k=s.train_k,
                      window_range=tuple(s.window_range) if s.window_range else None,
                      steps=s.noise_steps, rng=random.Random(seed + step))
    if s.train_steps == "fast_window":
        s = dataclasses.replace(s, train_steps="list", noise_steps=list(plan.trained))
    elif s.train_steps == "list" and s.num_noise_steps:
        chosen = sorted(random.Random(seed * 1_000_003 + step).sample(list(s.noise_steps), s.num_noise_steps))
        s = dataclasses.replace(s, noise_steps=chosen)
        plan = plan_steps(s.num_steps, "list", steps=chosen)
    return s, plan.trained
