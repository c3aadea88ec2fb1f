"""The one policy protocol every generator implements, and the data a rollout carries.

The trainer only ever talks to a :class:`Policy`; it never knows whether it drives FLUX, Kontext, Qwen-Image-Edit,
SD3 or a tiny model.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace
from typing import Any, Iterator, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor, nn

from psrl.data.records import Record
from psrl.sampling.config import SamplingConfig


@dataclass
class Rollout:
    """Everything needed to recompute log-probs of a batch of sampled trajectories.

    Attributes:
        records: the ``B`` records sampled (a group repeats the same record).
        images: ``[B, 3, H, W]`` decoded final images in ``[0, 1]`` (float32, on CPU or the device).
        latents: ``[B, T + 1, ...]`` the latents ``x_T .. x_0`` in the policy's own (e.g. packed) layout, fp32.
        log_probs: ``[B, T]`` per-step log-probs at sampling time (0 for ODE steps).
        sigmas: ``[T + 1]`` the sigma schedule (last is 0).
        timesteps: ``[B, T]`` model timesteps of each step.
        noisy: ``[T]`` bool, which steps drew SDE noise.
        trained_steps: step indices the trainer updates on.
        cond: per-sample conditioning tensors, batch-first (prompt embeddings, reference tokens, ids, ...).
        meta: anything else the policy needs to recompute (sizes, guidance), not batch-indexed.
    """

    records: list[Record]
    images: Tensor
    latents: Tensor
    log_probs: Tensor
    sigmas: Tensor
    timesteps: Tensor
    noisy: Tensor
    trained_steps: tuple[int, ...]
    cond: dict[str, Tensor] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.records)

    def select(self, index: Sequence[int] | Tensor) -> "Rollout":
        """The sub-batch at ``index`` (cond tensors indexed along dim 0)."""
        idx = torch.as_tensor(list(index) if not isinstance(index, Tensor) else index, dtype=torch.long)

        def pick(t: Tensor) -> Tensor:
            return t[idx.to(t.device)]

        return replace(self, records=[self.records[int(i)] for i in idx],
                       cond={k: pick(v) for k, v in self.cond.items()},
                       **{k: pick(getattr(self, k)) for k in _PER_SAMPLE})

    @staticmethod
    def cat(parts: Sequence["Rollout"]) -> "Rollout":
        """Concatenate rollouts of one policy along the batch (same schedule and trained steps).

        Cond tensors whose widths (dim 1) differ, such as reference tokens padded to each batch's longest
        reference set, are zero-padded to the widest; the policy keeps the true lengths in another cond entry.
        """
        if not parts:
            raise ValueError("Rollout.cat needs at least one rollout")
        first = parts[0]
        for p in parts[1:]:
            if p.trained_steps != first.trained_steps or not torch.equal(p.sigmas, first.sigmas):
                raise ValueError("cannot concatenate rollouts with different schedules or trained steps")
            if set(p.cond) != set(first.cond):
                raise ValueError(f"cannot concatenate rollouts with cond keys {sorted(first.cond)} and "
                                 f"{sorted(p.cond)}")
        return replace(first, records=[r for p in parts for r in p.records],
                       cond={k: _cat_padded([p.cond[k] for p in parts], k) for k in first.cond},
                       **{k: torch.cat([getattr(p, k) for p in parts]) for k in _PER_SAMPLE})


#: the Rollout tensors indexed by sample along dim 0 (``sigmas`` and ``noisy`` are shared by the batch)
_PER_SAMPLE = ("images", "latents", "log_probs", "timesteps")


def _cat_padded(tensors: Sequence[Tensor], name: str) -> Tensor:
    """``torch.cat`` along dim 0, zero-padding dim 1 to the widest when only dim 1 differs."""
    shapes = {tuple(t.shape[2:]) for t in tensors}
    widths = {t.shape[1] for t in tensors if t.ndim >= 2}
    if len(widths) <= 1 or len(shapes) != 1 or any(t.ndim < 2 for t in tensors):
        try:
            return torch.cat(list(tensors))
        except RuntimeError as exc:
            raise ValueError(f"cannot concatenate cond[{name!r}] of shapes "
                             f"{[tuple(t.shape) for t in tensors]}") from exc
    width = max(widths)
    return torch.cat([torch.nn.functional.pad(t, (0, 0) * (t.ndim - 2) + (0, width - t.shape[1]))
                      for t in tensors])


@dataclass
class StepLogProb:
    """Recomputed step statistics, all ``float32``: ``log_prob [B]`` (differentiable), the step Gaussian's
    ``mean`` and ``std`` (for the KL to the reference) and ``dt = sigma_next - sigma``."""

    log_prob: Tensor
    mean: Tensor
    std: Tensor
    dt: Tensor


@runtime_checkable
class Policy(Protocol):
    """A flow-matching generator the GRPO and SFT trainers can drive.

    Implementations: :class:`psrl.models.flux.FluxPolicy` and the reference-conditioned policies. ``module`` is the
    ``nn.Module`` holding the trainable (LoRA) parameters (never handed to a DDP/FSDP wrapper: see
    :mod:`psrl.rl.fsdp`).
    """

    module: nn.Module

    def rollout(self, records: Sequence[Record], sampling: SamplingConfig,
                generator: torch.Generator | list[torch.Generator] | None = None, *,
                noise_seeds: Sequence[int] | None = None) -> Rollout:
        """Sample one trajectory per record with SDE noise on the planned steps; returns all latents and log-probs.
        Records repeated within a group share one prompt encoding (and reference encoding). ``noise_seeds``: one
        per record; samples with equal seeds start from identical initial noise (GRPO's same-noise groups)."""

    def log_prob(self, rollout: Rollout, step: int) -> StepLogProb:
        """Recompute the log-prob of ``latents[:, step + 1]`` given ``latents[:, step]`` with the current weights.
        Before any update the result equals ``rollout.log_probs[:, step]``."""

    def velocity_at(self, rollout: Rollout, latents: Tensor, step: int) -> Tensor:
        """The current weights' velocity at ``latents`` (``[B, ...]``, the rollout's latent layout) for the rollout's
        conditioning at step ``step``'s timestep, guidance as sampled; differentiable (DiffusionNFT)."""

    def generate(self, records: Sequence[Record], sampling: SamplingConfig,
                 generator: torch.Generator | list[torch.Generator] | None = None) -> Tensor:
        """ODE generation (``noise_level`` ignored) for evaluation: ``[B, 3, H, W]`` in ``[0, 1]``."""

    def flow_matching_loss(self, records: Sequence[Record], targets: Tensor, sigmas: Tensor,
                           generator: torch.Generator | None = None, *, guidance_scale: float = 3.5) -> Tensor:
        """SFT loss: MSE between predicted and true velocity for ``targets`` (``[B, 3, H, W]`` in [0, 1]) noised
        to ``sigmas [B]``; ``guidance_scale`` feeds a distilled-guidance embedding (FLUX), CFG policies ignore it."""

    def trainable_parameters(self) -> Iterator[nn.Parameter]: ...

    def disable_lora(self) -> contextlib.AbstractContextManager: ...

    def save_lora(self, path) -> None:
        """Write the LoRA weights in the diffusers format (``pytorch_lora_weights.safetensors``)."""

    def load_lora(self, path) -> None: ...

    def train(self, mode: bool = True) -> None: ...

    def to(self, device) -> "Policy": ...
