"""``psrl world pretrain``: train the pocket generator (:mod:`psrl.world.models`) from scratch on world records.

Two stages, each psrl's own code path:

1. the VAE: a short reconstruction loop (this module): MSE on ``[-1, 1]`` pixels of the records' targets and
   references plus ``kl_weight`` times the posterior KL (Rombach et al., arXiv 2112.10752, Section 3: a lightly
   KL-regularised autoencoder); then ``shift_factor`` / ``scaling_factor`` are set to the latents' mean and inverse
   standard deviation on the training images, as SD3's and FLUX.1's were;
2. the transformer: ``psrl sft`` with ``model.lora: null`` (full-parameter rectified-flow training, logit-normal
   noise levels, AdamW with warm-up, an EMA) on the same records, through ``FluxKontextPolicy`` loading the stage-1
   pipeline folder with ``from_pretrained``.

The EMA transformer and the VAE are written as a diffusers ``FluxKontextPipeline`` folder in fp16 (~7 MB) with a
``README.md`` model card that records the recipe and the measured numbers (``pretrain.json``).
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch

from psrl.config import check_range
from psrl.data.records import Record, read_records, resolve_records, resolve_under, write_records
from psrl.errors import PsrlError
from psrl.rl.signals import TrainingStopped

logger = logging.getLogger(__name__)


@dataclass
class PretrainConfig:
    """What ``psrl world pretrain`` does.

    Attributes:
        vae_steps, vae_batch, vae_lr, kl_weight: the VAE loop (AdamW, constant lr after 20 warm-up steps).
        vae_crop: the VAE trains on random square crops of this side (a multiple of 8; the autoencoder is
            convolutional, so a 32 px crop costs a quarter of a 64 px image and teaches the same local code).
        sft_steps, sft_batch, sft_lr, warmup, ema_decay: the transformer's ``psrl sft`` run.
        vae_minutes, sft_minutes: wall-clock caps of the two stages (0 = none): a stage ends at its step count or
            its cap, whichever comes first, and ``pretrain.json`` records the steps it ran.
        reference_size: references are resized to this long side before encoding (``model.args`` of the
            policy); 32 gives 16 tokens per reference after 4x VAE downsampling and 2x2 packing, 64 gives 64.
        max_sequence_length: T5 tokens of the instruction (the pocket tokenizer spells a world word as one).
        size: target resolution (square).
        holdout: fraction of the records kept out of training for the held-out PSNR and loss.
        seed: every draw.
    """

    # alike on purpose: a typed field list (every config section has one; a scanner sees their shape alike)
    vae_steps: int = 1500
    vae_batch: int = 16
    vae_lr: float = 1e-3
    kl_weight: float = 1e-5
    vae_crop: int = 32
    vae_minutes: float = 0.0
    sft_steps: int = 3000
    sft_batch: int = 32
    sft_lr: float = 7e-4
    warmup: int = 100
    ema_decay: float = 0.995
    sft_minutes: float = 0.0
    reference_size: int = 32
    max_sequence_length: int = 48  # the world's longest instruction (Complex) is 41 pocket T5 tokens
    size: int = 64
    holdout: float = 0.05
    seed: int = 0

    def __post_init__(self):
        check_range(self, ("vae_steps", "vae_batch", "sft_steps", "sft_batch", "reference_size", "size",
                           "max_sequence_length"), 1)
        check_range(self, "holdout", 0.0, 0.5, hi_open=True)
        if self.size % 8 or self.reference_size % 8 or self.vae_crop % 8:
            raise ValueError(f"size, reference_size and vae_crop must be multiples of 8 (4x VAE x 2x2 packing), "
                             f"got {self.size}, {self.reference_size} and {self.vae_crop}")


# ----------------------------------------------------------------------------- pure helpers
def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of images in [0, 1] (``10 log10(1 / MSE)``); ``inf`` when equal."""
    mse = float(torch.mean((a.float() - b.float()) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


def latent_normalisation(latents: torch.Tensor) -> tuple[float, float]:
    """``(shift_factor, scaling_factor)`` that map ``latents`` to zero mean and unit standard deviation:
    ``(z - shift) * scale``. Raises ``ValueError`` for constant latents."""
    mean, std = float(latents.float().mean()), float(latents.float().std())
    if not std > 0:
        raise ValueError("latents are constant; the VAE did not train")
    return mean, 1.0 / std


def split_records(records: Sequence[Record], holdout: float) -> tuple[list[Record], list[Record]]:
    """Deterministic split: every ``round(1 / holdout)``-th record is held out (none when ``holdout`` is 0)."""
    if holdout <= 0:
        return list(records), []
    every = max(2, round(1 / holdout))
    train = [r for i, r in enumerate(records) if i % every]
    held = [r for i, r in enumerate(records) if not i % every]
    return train, held


# ----------------------------------------------------------------------------- images
def load_images(root: Path, paths: Sequence[str], size: int) -> torch.Tensor:
    """``[N, 3, size, size]`` uint8 of the images at ``paths`` under ``root`` (one loader: :mod:`psrl.images`),
    resized with nearest-neighbour when they are another size (world images are drawn at the right size)."""
    from PIL import Image

    from psrl.images import load_image, pil_to_tensor

    out = torch.empty(len(paths), 3, size, size, dtype=torch.uint8)
    for i, rel in enumerate(paths):
        img = load_image(resolve_under(root, rel, what="pretraining image"))
        if img.size != (size, size):
            img = img.resize((size, size), Image.NEAREST)
        out[i] = (pil_to_tensor(img) * 255).round().to(torch.uint8)
    return out


def record_images(records: Sequence[Record]) -> list[str]:
    """Every distinct target and reference path of ``records``, in first-seen order."""
    seen: dict[str, None] = {}
    for r in records:
        for p in (r.target, *(s.image for s in r.subjects)):
            if p:
                seen.setdefault(p, None)
    return list(seen)


# ----------------------------------------------------------------------------- stage 1: the VAE
def train_vae(vae, train: torch.Tensor, held: torch.Tensor, cfg: PretrainConfig, log_every: int = 20) -> dict:
    """Train ``vae`` in place on uint8 images ``train [N, 3, S, S]``; returns the held-out PSNR (dB) before and
    after, the final loss and the wall time. Inputs are scaled to [-1, 1] as diffusers VAEs expect."""
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda n: min(1.0, (n + 1) / 20))
    before = vae_psnr(vae, held) if len(held) else float("nan")
    t0, loss_v = time.perf_counter(), float("nan")
    vae.train()
    steps = 0
    for step in range(cfg.vae_steps):
        if cfg.vae_minutes and time.perf_counter() - t0 > cfg.vae_minutes * 60:
            break
        steps = step + 1
        idx = torch.randint(0, len(train), (cfg.vae_batch,), generator=gen)
        x = random_crops(train[idx], cfg.vae_crop, gen).float() / 127.5 - 1.0
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
        rec = vae.decode(z).sample
        loss = torch.nn.functional.mse_loss(rec, x) + cfg.kl_weight * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        loss_v = float(loss.detach())
        if not math.isfinite(loss_v):
            raise PsrlError(f"VAE loss is {loss_v} at step {step}; lower vae_lr")
        if (step + 1) % log_every == 0:
            logger.info("vae step %d/%d  loss %.4f  (%.1f s)", step + 1, cfg.vae_steps, loss_v,
                        time.perf_counter() - t0)
    vae.eval()
    return {"vae_psnr_before": before, "vae_psnr": vae_psnr(vae, held) if len(held) else float("nan"),
            "vae_loss": loss_v, "vae_steps_run": steps, "vae_seconds": time.perf_counter() - t0}


def random_crops(images: torch.Tensor, side: int, generator: torch.Generator) -> torch.Tensor:
    """One random ``side x side`` crop of each image of ``images [B, C, H, W]`` (the images when ``side >= H``)."""
    h, w = images.shape[-2:]
    if side >= h and side >= w:
        return images
    ys = torch.randint(0, h - side + 1, (len(images),), generator=generator).tolist()
    xs = torch.randint(0, w - side + 1, (len(images),), generator=generator).tolist()
    return torch.stack([img[:, y:y + side, x:x + side] for img, y, x in zip(images, ys, xs)])


@torch.no_grad()
def vae_psnr(vae, images: torch.Tensor, batch: int = 64) -> float:
    """Reconstruction PSNR (dB) of uint8 ``images`` through the posterior mode."""
    vae.eval()
    recs = []
    for i in range(0, len(images), batch):
        x = images[i:i + batch].float() / 127.5 - 1.0
        recs.append(vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1))
    return psnr((torch.cat(recs) + 1) / 2, images.float() / 255)


@torch.no_grad()
def set_latent_normalisation(vae, images: torch.Tensor, batch: int = 64) -> tuple[float, float]:
    """Measure and store ``shift_factor`` / ``scaling_factor`` on uint8 ``images`` (posterior modes)."""
    lats = [vae.encode(images[i:i + batch].float() / 127.5 - 1.0).latent_dist.mode()
            for i in range(0, len(images), batch)]
    shift, scale = latent_normalisation(torch.cat(lats))
    vae.register_to_config(shift_factor=shift, scaling_factor=scale)
    return shift, scale


# ----------------------------------------------------------------------------- stage 2: the transformer
def sft_config(cfg: PretrainConfig, base: Path, records: Path, data_root: Path, runs: Path,
               name: str = "transformer") -> dict:
    """The ``psrl sft`` config (as a dict) that trains the pocket transformer in full from ``base``."""
    return {
        "model": {"name": "flux_kontext", "path": str(base), "lora": None,
                  "max_sequence_length": cfg.max_sequence_length,
                  "args": {"reference_long_side_single": cfg.reference_size,
                           "reference_long_side_multi": cfg.reference_size, "reference_cache_size": 100000}},
        "sft": {"max_steps": cfg.sft_steps, "batch_size": cfg.sft_batch, "height": cfg.size, "width": cfg.size,
                "lr": cfg.sft_lr, "lr_warmup_steps": cfg.warmup, "weight_decay": 0.0, "max_grad_norm": 1.0,
                "sigma_sampling": "logit_normal", "guidance_scale": 1.0, "seed": cfg.seed,
                "ema": {"enabled": True, "decay": cfg.ema_decay, "every": 1}, "eval_sigmas": [0.25, 0.5, 0.75],
                "save_every_minutes": 5.0, "keep_last": 1, "log_every": 25, "device": "cpu"},
        "data": {"records": str(records), "data_root": str(data_root)},
        "run": {"name": name, "output_dir": str(runs)},
    }


def prompt_fit(records: Sequence[Record], max_sequence_length: int) -> dict:
    """How the instructions fit ``max_sequence_length`` pocket T5 tokens: ``{"longest_prompt_tokens",
    "truncated_prompts"}``, logged once before training (the policy would otherwise name records one by one)."""
    from psrl.world.models import pocket_t5_tokenizer

    # the length the encoder sees, special tokens included (as psrl.models.truncation.tokens_dropped counts)
    lengths = [len(ids) for ids in pocket_t5_tokenizer()([r.prompt for r in records], verbose=False)["input_ids"]]
    longest, cut = max(lengths, default=0), sum(n > max_sequence_length for n in lengths)
    if cut:
        logger.warning("%d of %d training instructions are longer than --max-sequence-length %d (longest %d tokens) "
                       "and are truncated", cut, len(records), max_sequence_length, longest)
    return {"longest_prompt_tokens": longest, "truncated_prompts": cut}


def pretrain(out: str | Path, records_path: str | Path, cfg: PretrainConfig, *, data_root: str | Path | None = None,
             resume: bool = False) -> dict:
    """Run both stages on the records at ``records_path`` (targets and references under ``data_root``, default
    the records' folder) and write the pipeline folder ``out``. Work files go to ``out/.work`` (the VAE-stage
    pipeline and the SFT run, resumable with ``resume``). Returns the measured numbers (also in
    ``out/pretrain.json``).

    Raises:
        PsrlError: no records with a target, a non-finite loss.
    """
    from psrl.config import from_dict
    from psrl.rl.sft_config import SFTRunConfig
    from psrl.rl.sft_trainer import SFTTrainer
    from psrl.world.models import pocket_components, pocket_vae, save_pocket_pipeline

    out, records_path = Path(out), Path(records_path)
    root = Path(data_root) if data_root else records_path.parent
    records = [r for r in read_records(records_path) if r.target]
    if not records:
        raise PsrlError(f"{records_path}: no record has a 'target' image; pretraining needs world scenes "
                        "(`psrl world make`)")
    train, held = split_records(records, cfg.holdout)
    stats_prompts = prompt_fit(train, cfg.max_sequence_length)
    work = out / ".work"
    work.mkdir(parents=True, exist_ok=True)
    base = work / "base"
    stats: dict = {"config": asdict(cfg), "records": len(train), "held_out_records": len(held), **stats_prompts}
    t_start = time.perf_counter()
    if not (resume and (base / "model_index.json").is_file()):
        images = load_images(root, record_images(train), cfg.size)
        held_images = load_images(root, [r.target for r in held], cfg.size) if held else images[:0]
        logger.info("VAE stage: %d training images, %d held-out targets", len(images), len(held_images))
        vae = pocket_vae(cfg.seed, sample_size=cfg.size)
        stats.update(train_vae(vae, images, held_images, cfg))
        stats["latent_shift"], stats["latent_scale"] = set_latent_normalisation(vae, images[:2048])
        save_pocket_pipeline(pocket_components(cfg.seed, vae=vae), base, dtype=torch.float32)
        (work / "vae.json").write_text(json.dumps(stats, indent=2))
    else:
        stats.update(json.loads((work / "vae.json").read_text()))
    train_path = work / "train.jsonl"
    write_records(train, train_path)
    sft = from_dict(SFTRunConfig, sft_config(cfg, base, train_path, root.resolve(), work / "runs"))
    trainer = _budgeted(SFTTrainer)(sft, resume=resume and (work / "runs" / "transformer").is_dir())
    trainer.deadline = time.monotonic() + cfg.sft_minutes * 60 if cfg.sft_minutes else None
    t_sft = time.perf_counter()
    try:
        history = trainer.train()
    except TrainingStopped as e:
        if e.exit_code != 0:
            raise
        history = trainer.history
    stats["sft_seconds"] = time.perf_counter() - t_sft
    stats["sft_steps_run"] = trainer.start_step + len(history)
    if history:
        stats["sft_loss_first"], stats["sft_loss_last"] = history[0]["loss"], history[-1]["loss"]
        fixed = [m["loss/fixed"] for m in history if "loss/fixed" in m]
        if fixed:
            stats["sft_fixed_loss_last"] = fixed[-1]
    if held:  # resolved like the trainer's own records (psrl.data.resolve_records)
        stats["held_out_fixed_loss"] = held_out_loss(trainer, resolve_records(held, root))
    with trainer.ema.swapped_in():
        transformer = trainer.policy.transformer
        components = pocket_components(cfg.seed, vae=trainer.policy.vae, transformer=transformer)
        save_pocket_pipeline(components, out)
    stats["total_seconds"] = time.perf_counter() - t_start
    if not resume:  # a fresh run starts a fresh list of parts
        (work / "sft_parts.json").unlink(missing_ok=True)
    stats = continued_stats(work / "sft_parts.json", stats)
    (out / "pretrain.json").write_text(json.dumps(stats, indent=2))
    (out / "README.md").write_text(model_card(stats))
    return stats


def continued_stats(parts_path: Path, stats: dict) -> dict:
    """Record this invocation's SFT part in ``parts_path`` and return ``stats`` for the whole run so far: a run
    continued with ``--resume`` reports the seconds of every part (``sft_seconds``, ``total_seconds``, with
    ``sft_parts`` listing each part's steps and seconds) and the first part's first loss, not only the last part's."""
    parts = json.loads(parts_path.read_text()) if parts_path.is_file() else []
    parts.append({"steps_run": stats.get("sft_steps_run"), "sft_seconds": stats.get("sft_seconds", 0.0),
                  "total_seconds": stats.get("total_seconds", 0.0), "sft_loss_first": stats.get("sft_loss_first")})
    parts_path.write_text(json.dumps(parts, indent=2))
    out = dict(stats, sft_parts=parts)
    out["sft_seconds"] = sum(p["sft_seconds"] for p in parts)
    out["total_seconds"] = sum(p["total_seconds"] for p in parts)
    if parts[0].get("sft_loss_first") is not None:
        out["sft_loss_first"] = parts[0]["sft_loss_first"]
    return out


def _budgeted(trainer_cls):
    """``trainer_cls`` that ends its run cleanly (checkpoint saved, ``TrainingStopped`` with exit code 0) once
    ``self.deadline`` (``time.monotonic()``) has passed."""
    from psrl.rl.base_trainer import StepAbandoned

    class Budgeted(trainer_cls):
        deadline: float | None = None

        def check_health(self, done: int, metrics: dict) -> None:
            super().check_health(done, metrics)
            if self.deadline is not None and time.monotonic() > self.deadline:
                raise StepAbandoned(f"pretraining time budget reached after step {done}", 0)

    return Budgeted


@torch.no_grad()
def held_out_loss(trainer, records: Sequence[Record], sigmas=(0.25, 0.5, 0.75), batch: int = 32) -> float:
    """The EMA transformer's flow-matching loss on held-out records at fixed noise levels and fixed noise."""
    from psrl.rl.sft_trainer import load_target

    t = trainer.cfg.sft
    trainer.policy.train(False)
    losses = []
    with trainer.ema.swapped_in():
        for i in range(0, len(records), batch):
            chunk = list(records[i:i + batch])
            targets = torch.stack([load_target(r, t.height, t.width) for r in chunk])
            for k, s in enumerate(sigmas):
                gen = torch.Generator().manual_seed(1000 + k)
                sig = torch.full((len(chunk),), float(s))
                losses.append(float(trainer.policy.flow_matching_loss(chunk, targets, sig, gen, guidance_scale=1.0)))
    return sum(losses) / len(losses)


def model_card(stats: dict) -> str:
    """The pipeline folder's ``README.md``: what the model is, how it was made, the measured numbers."""
    c = stats["config"]

    def num(key, fmt="{:.3f}"):
        v = stats.get(key)
        return "n/a" if v is None else fmt.format(v)

    return "\n".join([
        "---", "library_name: diffusers", "pipeline_tag: image-to-image",
        "tags: [flux-kontext, psrl, pocket-world, from-scratch]", "---", "",
        "# pocket-kontext: a 2.3M-parameter FLUX.1-Kontext-architecture generator for psrl's pocket world", "",
        "A `FluxKontextPipeline` folder (diffusers classes throughout) trained from scratch on a CPU by "
        "`psrl world pretrain`, so that every stage of psrl (SFT, GRPO, rewards, benchmarks) runs for real in "
        "minutes. It draws 64x64 scenes of the world's subjects from 1-4 reference images and an instruction. "
        "It is a toy; what it does and does not draw is measured below or in `pretrain.json`.", "",
        "## Architecture", "",
        "- transformer: `FluxTransformer2DModel` (2 double + 4 single blocks, 4 heads x 32, 64 input channels = "
        "16 latent channels packed 2x2, no guidance embedding), 2.31M weights;",
        "- vae: `AutoencoderKL` (32, 64, 64 channels, 4x downsampling, 16 latent channels), 0.98M weights, "
        f"latent shift {num('latent_shift', '{:.4f}')}, scale {num('latent_scale', '{:.4f}')};",
        "- text: 2-layer CLIP and T5 encoders of width 64 over the world's words, frozen at random "
        "initialisation; scheduler: `FlowMatchEulerDiscreteScheduler` without shift.",
        "- weights stored in fp16 safetensors; load in float32 for training.", "",
        "## How it was made", "",
        f"1. VAE: {stats.get('vae_steps_run', c['vae_steps'])} steps of batch {c['vae_batch']} ({c['vae_crop']} px "
        "crops) on the records' targets and references, "
        f"MSE + {c['kl_weight']:g} x KL, AdamW lr {c['vae_lr']:g}: held-out PSNR "
        f"{num('vae_psnr_before', '{:.1f}')} -> {num('vae_psnr', '{:.1f}')} dB "
        f"({num('vae_seconds', '{:.0f}')} s).",
        f"2. transformer: `psrl sft` with `model.lora: null` (full parameters), "
        f"{stats.get('sft_steps_run', c['sft_steps'])} steps of batch "
        f"{c['sft_batch']}, AdamW lr {c['sft_lr']:g} with {c['warmup']} warm-up steps, logit-normal noise levels, "
        f"EMA {c['ema_decay']} (the EMA weights are shipped), references resized to {c['reference_size']} px: "
        f"loss {num('sft_loss_first')} -> {num('sft_loss_last')}, held-out fixed-noise loss "
        f"{num('held_out_fixed_loss')} ({num('sft_seconds', '{:.0f}')} s).",
        f"3. {stats['records']} training records, {stats['held_out_records']} held out; seed {c['seed']}; total "
        f"{num('total_seconds', '{:.0f}')} s.", "",
        "Reproduce: `psrl world make --out world && psrl world pretrain --records world/train.jsonl --out DIR` "
        "(see `psrl world pretrain --help`).", "",
        "## Use", "",
        "```yaml", "model:", "  name: flux_kontext", "  path: <this folder>   # or psrl's packaged copy",
        f"  max_sequence_length: {c['max_sequence_length']}",
        f"  args: {{reference_long_side_single: {c['reference_size']}, "
        f"reference_long_side_multi: {c['reference_size']}}}",
        "sampling: {height: 64, width: 64, guidance_scale: 1.0}", "```", "",
    ])


__all__ = ["PretrainConfig", "held_out_loss", "latent_normalisation", "load_images", "model_card", "pretrain",
           "psnr", "random_crops", "record_images", "set_latent_normalisation", "sft_config", "split_records",
           "train_vae", "vae_psnr"]
