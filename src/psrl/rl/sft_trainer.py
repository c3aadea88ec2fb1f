"""Supervised flow-matching fine-tuning of a policy's LoRA (PSR stage 1) on records that carry a target image.

Each update draws ``batch_size * gradient_accumulation`` records per process (from ``seed + step``, identical on
every process, each process taking its slice), loads their target images (and, for reference-conditioned
policies, their references, through the policy), draws one noise level per sample from the configured density and
minimises :meth:`Policy.flow_matching_loss`. Checkpoints, resume, tracking and distribution reuse the GRPO
machinery (:mod:`psrl.rl.checkpoint`, :mod:`psrl.rl.tracking`, :mod:`psrl.rl.distributed`), so an SFT
checkpoint's ``lora/`` folder is what PSR's stage 2 fuses under its GRPO LoRA (``model.lora.fuse``).
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image
from torch import Tensor

from psrl.data.records import Record, RecordError
from psrl.errors import PsrlError
from psrl.images import ImageLoadError, load_image, pil_to_tensor
from psrl.sampling import SamplingConfig
from psrl.models.checks import check_sampling_size, validate_records
from psrl.rl import distributed as dist
from psrl.rl.base_trainer import BaseTrainer
from psrl.rl.ema import ParameterEMA
from psrl.rl.sampler import sample_seed
from psrl.rl.run_config import run_records
from psrl.rl.sft_config import SFTRunConfig

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- pure helpers
def sample_sigmas(n: int, scheme: str, generator: torch.Generator | None = None, *, logit_mean: float = 0.0,
                  logit_std: float = 1.0, mode_scale: float = 1.29, shift: float = 1.0) -> Tensor:
    """``n`` noise levels in (0, 1) drawn like diffusers' ``compute_density_for_timestep_sampling``:

    * ``logit_normal``: ``sigmoid(N(logit_mean, logit_std^2))`` (SD3 / FLUX training default);
    * ``uniform``: ``U(0, 1)``;
    * ``mode``: ``u = U(0, 1)``, ``1 - u - mode_scale (cos^2(pi u / 2) - 1 + u)``;

    then the static shift ``shift * s / (1 + (shift - 1) s)``. Clamped to ``[1e-4, 1]`` so no sample is clean."""
    if scheme == "logit_normal":
        u = torch.sigmoid(torch.randn(n, generator=generator) * logit_std + logit_mean)
    elif scheme == "uniform":
        u = torch.rand(n, generator=generator)
    elif scheme == "mode":
        u = torch.rand(n, generator=generator)
        u = 1 - u - mode_scale * (torch.cos(math.pi * u / 2) ** 2 - 1 + u)
    else:
        raise ValueError(f"unknown sigma sampling scheme {scheme!r}")
    s = shift * u / (1 + (shift - 1) * u)
    return s.clamp(1e-4, 1.0).float()


def load_target(record: Record, height: int, width: int) -> Tensor:
    """The target of a resolved record (:func:`psrl.data.records.load_records`) as ``[3, height, width]`` float32
    in [0, 1]: decoded by :func:`psrl.images.load_image` (EXIF orientation, 16-bit scaling, transparency onto
    white, the shared minimum side and aspect limit), resized so it covers the size (LANCZOS), then centre-cropped.
    Errors are :class:`RecordError` naming the record and the path as its records file holds it."""
    if not record.target:
        raise RecordError(f"record {record.id!r} has no 'target' image; SFT needs one per record")
    shown = record.relative_path(record.target)
    path = Path(record.target)
    if not path.is_absolute():
        raise RecordError(f"record {record.id!r}: target image {shown!r} is not resolved against a data root (load "
                          "records with psrl.data.records.load_records / resolve_records)")
    if not path.is_file():
        raise RecordError(f"record {record.id!r}: target image {shown!r} not found (looked at {path})")
    try:
        img = load_image(path)
    except ImageLoadError as e:
        why = "is unreadable" if e.kind == "unreadable" else "is unusable"
        raise RecordError(f"record {record.id!r}: target image {shown!r} {why} ({e})") from e
    scale = max(width / img.width, height / img.height)
    rw, rh = max(width, round(img.width * scale)), max(height, round(img.height * scale))
    if (rw, rh) != img.size:
        img = img.resize((rw, rh), resample=Image.LANCZOS)
    left, top = (rw - width) // 2, (rh - height) // 2
    img = img.crop((left, top, left + width, top + height))
    return pil_to_tensor(img)


# ----------------------------------------------------------------------------- trainer
class SFTTrainer(BaseTrainer):
    """Flow-matching SFT of ``policy`` (built from ``cfg.model`` when not given) under the
    :class:`~psrl.rl.sft_config.SFTRunConfig` ``cfg``; ``policy``, ``resume`` and ``progress`` as
    :class:`~psrl.rl.base_trainer.BaseTrainer`.

    Raises:
        ConfigError, RecordError, PsrlError: before the run directory exists, with every bad record listed.
    """

    name = "sft"
    run_prefix = "sft-"

    def __init__(self, cfg: SFTRunConfig, *, policy=None, resume: bool = False, progress: bool = False):
        self._fixed_batch = None
        super().__init__(cfg, cfg.sft, policy=policy, resume=resume, progress=progress)

    def setup_data(self) -> None:
        cfg = self.cfg
        self.records = run_records(cfg)  # targets and references resolved

    def setup_policy(self) -> None:
        cfg, t = self.cfg, self.cfg.sft
        check_sampling_size(self.policy, SamplingConfig(height=t.height, width=t.width), "sft.height/width")
        self.records = validate_records(self.records, self.policy, cfg.data.records,
                                        skip_invalid=cfg.data.skip_invalid, needs_target=True)

    def setup_training(self) -> None:
        e = self.cfg.sft.ema
        self.ema = ParameterEMA(self.params, e.decay, e.every) if e.enabled else None

    def describe(self) -> str:
        t = self.cfg.sft
        return (f"{len(self.records)} records, batch {t.batch_size} x accumulation {t.gradient_accumulation} x "
                f"{self.accelerator.num_processes} processes")

    def step_summary(self, m: dict) -> str:
        fixed = f"  loss/fixed {m['loss/fixed']:.4f}" if "loss/fixed" in m else ""
        return f"loss {m['loss']:.4f}{fixed}  grad_norm {m['grad_norm']:.3f}  ({m['time/step']:.1f}s)"

    def postfix(self, m: dict) -> dict:
        return {"loss": f"{m['loss']:.4f}"}

    def extra_state(self) -> dict:
        return {"kind": "sft"}

    # ------------------------------------------------------------------ data
    def _indices(self, step: int) -> list[int]:
        """This process's record indices for ``step``: the global draw is identical on every process."""
        t, acc = self.cfg.sft, self.accelerator
        per_process = t.batch_size * t.gradient_accumulation
        total = per_process * acc.num_processes
        gen = torch.Generator().manual_seed(t.seed + step)
        chosen: list[int] = []
        while len(chosen) < total:
            chosen.extend(torch.randperm(len(self.records), generator=gen).tolist())
        start = acc.process_index * per_process
        return chosen[start:start + per_process]

    def _targets(self, records: Sequence[Record]) -> Tensor:
        t = self.cfg.sft
        return torch.stack([load_target(r, t.height, t.width) for r in records])

    def _loss(self, records, targets, sigmas, generator) -> Tensor:
        with self.autocast():
            return self.policy.flow_matching_loss(records, targets, sigmas, generator,
                                                  guidance_scale=self.cfg.sft.guidance_scale)

    # ------------------------------------------------------------------ loop
    def fixed_loss(self) -> float | None:
        """Loss on the first records at the fixed ``eval_sigmas`` with fixed noise (no gradient): comparable across
        steps, unlike the training loss whose noise levels are random."""
        t = self.cfg.sft
        if not t.eval_sigmas:
            return None
        if self._fixed_batch is None:
            records = self.records[: max(1, min(4, len(self.records)))]
            self._fixed_batch = (records, self._targets(records))
        records, targets = self._fixed_batch
        was_training = self.policy.module.training
        self.policy.train(False)
        losses = []
        with torch.no_grad():
            for k, s in enumerate(t.eval_sigmas):
                gen = torch.Generator().manual_seed(sample_seed(t.seed, 0, k, salt="sft-fixed") % (2**62))
                sig = torch.full((len(records),), float(s))
                losses.append(float(self._loss(records, targets, sig, gen)))
        self.policy.train(was_training)
        return sum(losses) / len(losses)

    def run_step(self, step: int) -> dict:
        t, acc = self.cfg.sft, self.accelerator
        t0 = time.perf_counter()
        self.policy.train(True)
        indices = self._indices(step)
        gen = torch.Generator().manual_seed(sample_seed(t.seed, step, acc.process_index, salt="sft") % (2**62))
        losses, sigma_means = [], []
        self.optimizer.zero_grad(set_to_none=True)
        for k in range(t.gradient_accumulation):
            records = [self.records[i] for i in indices[k * t.batch_size:(k + 1) * t.batch_size]]
            targets = self._targets(records)
            sigmas = sample_sigmas(len(records), t.sigma_sampling, gen, logit_mean=t.logit_mean,
                                   logit_std=t.logit_std, mode_scale=t.mode_scale, shift=t.sigma_shift)
            loss = self._loss(records, targets, sigmas, gen)
            if not torch.isfinite(loss):
                raise PsrlError(f"SFT loss is {float(loss)} at step {step} (records "
                                f"{[r.id for r in records]}); lower sft.lr or check the data")
            (loss / t.gradient_accumulation).backward()
            losses.append(float(loss.detach()))
            sigma_means.append(float(sigmas.mean()))
        norm = self.apply_update()
        loss_t = torch.tensor([sum(losses) / len(losses)])
        loss_all = dist.gather_rows(loss_t.to(acc.device)).cpu()
        return {"loss": float(loss_all.mean()), "lr": self.scheduler.get_last_lr()[0], "grad_norm": norm,
                "sigma_mean": sum(sigma_means) / len(sigma_means), "time/step": time.perf_counter() - t0}

    def before_loop(self) -> None:
        if self.start_step == 0 and self.is_main:
            fixed = self.fixed_loss()
            if fixed is not None:
                self.tracker.log({"loss/fixed": fixed}, 0)

    def after_step(self, done: int, metrics: dict) -> None:
        """``loss/fixed`` every ``log_every`` steps and at the end (main process)."""
        t = self.cfg.sft
        if (done % t.log_every == 0 or done == t.max_steps) and self.is_main:
            fixed = self.fixed_loss()
            if fixed is not None:
                metrics["loss/fixed"] = fixed


__all__ = ["SFTTrainer", "load_target", "sample_sigmas"]
