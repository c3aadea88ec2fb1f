"""The model-agnostic half of a flow-matching policy: rollout, log-prob recompute, ODE generation, SFT loss.

A concrete policy (SD3, Qwen-Image-Edit-Plus, ...) only says how to encode records into conditioning tensors, how
to draw initial noise in its latent layout, which sigma schedule its pipeline uses, how to predict the velocity
(CFG included) and how to decode. Everything that touches the SDE, the step plan and log-probs lives here, in fp32,
through :func:`psrl.sampling.sde_step_with_logprob`, so every policy shares exactly the trainer-facing semantics.

Conditioning tensors are stored batch-first in ``Rollout.cond`` with a fixed per-policy width (padded, with the true
lengths alongside), so rollouts from different calls concatenate; the reference-conditioned policies' ``predict``
groups samples whose true shapes agree and runs the transformer once per group on the unpadded tensors, which keeps
results identical to the diffusers pipelines.
"""
from __future__ import annotations

import contextlib
import copy
import random
from typing import Any, Hashable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from psrl.data.records import Record
from psrl.config import ConfigError
from psrl.models.base import Rollout, StepLogProb
from psrl.models.config import ModelConfig
from psrl.models.loading import load_policy_components, torch_dtype_from_name
from psrl.models.truncation import warn_truncated_prompts
from psrl.sampling import SamplingConfig, plan_steps, resolution_shift_mu, sde_step_with_logprob

Generator = torch.Generator | list[torch.Generator] | None


def scheduler_schedule(scheduler, num_steps: int, *, sigmas=None, image_seq_len: int | None = None,
                       max_shift: float = 1.15) -> tuple[Tensor, Tensor]:
    """``(sigmas [T + 1], timesteps [T])`` in float32 exactly as a diffusers pipeline gets them from
    ``scheduler.set_timesteps`` (a deep copy is used, the scheduler itself is untouched). ``image_seq_len``: the
    target's token count, for the resolution-dependent shift ``mu`` the pipelines' ``calculate_shift`` computes
    from the scheduler config (:func:`psrl.sampling.resolution_shift_mu`; ``max_shift`` is the pipeline's default
    when the config has none: 1.15, SD3's 1.16)."""
    sched = copy.deepcopy(scheduler)
    c = scheduler.config
    kwargs: dict[str, Any] = {} if image_seq_len is None else {"mu": resolution_shift_mu(
        image_seq_len, c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096), c.get("base_shift", 0.5),
        c.get("max_shift", max_shift))}
    if sigmas is not None:
        sched.set_timesteps(sigmas=list(np.asarray(sigmas, dtype=np.float64)), device="cpu", **kwargs)
    else:
        sched.set_timesteps(num_steps, device="cpu", **kwargs)
    sig = sched.sigmas.detach().float().cpu()
    ts = sched.timesteps.detach().float().cpu()
    if sig.shape[0] != num_steps + 1 or ts.shape[0] != num_steps:
        raise ValueError(f"scheduler gave {ts.shape[0]} timesteps for {num_steps} steps")
    return sig, ts


def unwrap_module(module: nn.Module) -> nn.Module:
    """Strip DistributedDataParallel / accelerate / torch.compile wrappers."""
    while True:
        inner = getattr(module, "module", None)  # DDP / accelerate
        if not isinstance(inner, nn.Module):
            inner = getattr(module, "_orig_mod", None)  # torch.compile
        if not isinstance(inner, nn.Module):
            return module
        module = inner


def window_rng(generator: Generator) -> random.Random:
    """A ``random.Random`` seeded from ``generator`` (the first one of a list): every rank that holds the same
    generator state draws the same Flow-GRPO-Fast window."""
    g = generator[0] if isinstance(generator, (list, tuple)) else generator
    seed = torch.randint(0, 2**31 - 1, (1,), generator=g, device=g.device if g is not None else "cpu")
    return random.Random(int(seed))


def group_by_key(keys: Sequence[Hashable]) -> list[list[int]]:
    """Indices grouped by equal key, in order of first appearance."""
    groups: dict[Hashable, list[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    return list(groups.values())


def unique_records(records: Sequence[Record]) -> tuple[list[Record], list[int]]:
    """Distinct records (by value) and, per input position, the index of its distinct record: a group of G copies
    of one record is encoded once."""
    uniq: list[Record] = []
    index: dict[Any, int] = {}
    where: list[int] = []
    for r in records:
        key = (r.id, r.prompt, r.subjects)
        if key not in index:
            index[key] = len(uniq)
            uniq.append(r)
        where.append(index[key])
    return uniq, where


class FlowPolicyBase:
    """Rollout / log-prob / generate / SFT loss over abstract model hooks, and the one way every policy is built:
    ``Policy(components, cfg, device)``, or :meth:`from_config` to load the components first. Subclasses implement:

    * ``init_components(components) -> frozen modules``: attributes from the components and ``self.cfg.args``;
      sets ``transformer``, ``vae_scale_factor`` and ``patch_size`` (sizes must be multiples of their product);
    * ``tiny_components(cfg) -> components`` (classmethod): the offline tiny set;
    * ``encode(records, sampling) -> (cond, meta)``: batch-first conditioning and shared metadata;
    * ``initial_noise(n, sampling, generator) -> Tensor`` in the latent layout the denoiser takes, fp32;
    * ``schedule(sampling) -> (sigmas [T + 1], timesteps [T])``;
    * ``predict(latents, timesteps [B], cond, meta, guidance: bool) -> velocity`` (fp32, same layout);
    * ``decode(latents, meta) -> [B, 3, H, W]`` in [0, 1];
    * ``encode_targets(images [B, 3, H, W] in [0, 1], meta) -> clean latents`` (SFT).

    ``module`` is what forward calls.
    """

    #: the ``POLICIES`` name (messages, the default config)
    name = ""
    #: what ``from_pretrained`` loads: component (= subfolder) -> ``(library, class)``
    COMPONENT_SPEC: dict[str, tuple[str, str]] = {}
    #: components a pipeline may lack (SD3's T5)
    OPTIONAL_COMPONENTS: tuple[str, ...] = ()
    #: the ``model.args`` this policy reads; ``TINY_ARGS`` are read only with ``path: tiny``
    ARGS: tuple[str, ...] = ()
    TINY_ARGS: tuple[str, ...] = ()
    #: frozen modules (attribute names) kept in fp32 whatever ``model.dtype``
    KEEP_FP32: tuple[str, ...] = ()

    transformer: nn.Module
    module: nn.Module
    device: torch.device
    dtype: torch.dtype
    vae_scale_factor: int
    patch_size: int
    lora_prefix = "transformer"

    # ------------------------------------------------------------------ construction (the same for every policy)
    def __init__(self, components: dict, cfg: ModelConfig | None = None, device: Any = "cpu"):
        """``components``: the diffusers pipeline's kwargs (``COMPONENT_SPEC``'s names); ``cfg``: dtype, LoRA,
        memory options and ``args`` (default ``ModelConfig(name=self.name)``); ``device``: where the denoiser runs.
        Checks the args, calls :meth:`init_components`, then the shared :meth:`_setup`.

        Raises:
            ConfigError: an unknown ``model.args`` key, or a tiny-only one with a loaded model.
            ValueError: a required component is missing.
        """
        cfg = cfg if cfg is not None else ModelConfig(name=self.name)
        self.check_args(cfg)
        missing = [k for k in self.COMPONENT_SPEC if components.get(k) is None and k not in self.OPTIONAL_COMPONENTS]
        if missing:
            raise ValueError(f"{type(self).__name__} components are missing {missing}")
        self.cfg = cfg
        self._frozen = list(self.init_components(components))
        self._setup(device)

    @classmethod
    def from_config(cls, cfg: ModelConfig, device: Any = "cpu"):
        """Build from a :class:`ModelConfig`: ``path: tiny`` gives the offline tiny components
        (:meth:`tiny_components`, seeded by ``tiny_seed``), anything else is loaded with ``from_pretrained`` (hub id
        or local pipeline folder, ``COMPONENT_SPEC``, through :func:`psrl.models.loading.load_policy_components`:
        ``cfg.dtype``, ``cfg.revision``, ``cfg.variant``'s weight files, ``cfg.quantization``).

        Raises:
            ConfigError: a bad ``model.args`` key, or a quantization this device cannot run (checked before any
                weight loads).
            ModelLoadError: the weights cannot be loaded (the message names the path and component).
        """
        cls.check_args(cfg)
        if cfg.path == "tiny":
            components = cls.tiny_components(cfg)
        else:
            components = load_policy_components(cfg, cls.COMPONENT_SPEC, device)
        return cls(components, cfg, device)

    @classmethod
    def check_args(cls, cfg: ModelConfig) -> None:
        """Raise :class:`ConfigError` for a ``model.args`` key this policy does not read."""
        known = (*cls.ARGS, *cls.TINY_ARGS)
        unknown = sorted(set(cfg.args) - set(known))
        if unknown:
            raise ConfigError(f"model.args.{unknown[0]}: unknown option for {cls.name or cls.__name__} "
                              f"(known: {', '.join(known) or 'none'})")
        tiny_only = sorted(set(cfg.args) & set(cls.TINY_ARGS))
        if tiny_only and cfg.path != "tiny":
            raise ConfigError(f"model.args.{tiny_only[0]} only applies to model.path: tiny (a loaded model's "
                              "transformer config decides)")

    @classmethod
    def tiny_components(cls, cfg: ModelConfig) -> dict:
        raise NotImplementedError

    def init_components(self, components: dict) -> Sequence[nn.Module]:
        raise NotImplementedError

    def _setup(self, device: Any) -> None:
        """Apply ``self.cfg``: every weight in ``cfg.dtype`` (a no-op for weights loaded in it; ``KEEP_FP32``
        modules in fp32), frozen modules without gradients, in eval mode and, unless ``offload_frozen``, on
        ``device``; the denoiser on ``device`` with the LoRA (``lora.fuse``, the adapter, ``lora.path``: see
        :func:`psrl.models.lora_merge.prepare_lora`; ``lora: null`` leaves it frozen) and gradient checkpointing."""
        from psrl.models.lora_merge import prepare_lora
        from psrl.models.quantization import is_quantized

        cfg = self.cfg
        self.device = torch.device(device)
        self.dtype = torch_dtype_from_name(cfg.dtype)
        self.offload_frozen = bool(cfg.offload_frozen)
        fp32 = [getattr(self, name) for name in self.KEEP_FP32]
        for m in (*self._frozen, self.transformer):
            m.requires_grad_(False)
            m.eval()
            dtype = torch.float32 if any(m is k for k in fp32) else self.dtype
            # diffusers warns on every .to(dtype), even a no-op; a quantized model's dtype was fixed when loaded
            if next(m.parameters()).dtype != dtype and not is_quantized(m):
                m.to(dtype)
        self.transformer.to(self.device)
        if cfg.lora is not None:
            prepare_lora(self.transformer, cfg.lora, prefix=self.lora_prefix)
        if cfg.gradient_checkpointing:
            self.transformer.enable_gradient_checkpointing()
        self.module = self.transformer
        self.to(self.device)  # the frozen modules

    def frozen_modules(self) -> list[nn.Module]:
        """The text encoders and the VAE (never trained)."""
        return list(self._frozen)

    # ------------------------------------------------------------------ geometry (the one size rule)
    def latent_size(self, height: int, width: int) -> tuple[int, int]:
        """The latent grid ``(h, w)`` of a ``height x width`` image.

        Raises:
            ValueError: a side is not a multiple of ``vae_scale_factor * patch_size`` (the message names both).
        """
        multiple = self.vae_scale_factor * self.patch_size
        if height % multiple or width % multiple:
            raise ValueError(f"height and width must be multiples of {multiple} for this model (VAE scale "
                             f"{self.vae_scale_factor} x patch {self.patch_size}), got {height}x{width}")
        return height // self.vae_scale_factor, width // self.vae_scale_factor

    # ------------------------------------------------------------------ hooks (subclasses)
    def encode(self, records: Sequence[Record], sampling: SamplingConfig) -> tuple[dict[str, Tensor], dict]:
        raise NotImplementedError

    def initial_noise(self, n: int, sampling: SamplingConfig, generator) -> Tensor:
        raise NotImplementedError

    def schedule(self, sampling: SamplingConfig) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def predict(self, latents: Tensor, timesteps: Tensor, cond: dict[str, Tensor], meta: dict,
                guidance: bool = True) -> Tensor:
        raise NotImplementedError

    def decode(self, latents: Tensor, meta: dict) -> Tensor:
        raise NotImplementedError

    def encode_targets(self, images: Tensor, meta: dict) -> Tensor:
        raise NotImplementedError

    # ------------------------------------------------------------------ sampling
    def _noise(self, records: Sequence[Record], sampling: SamplingConfig, generator,
               noise_seeds: Sequence[int] | None = None) -> Tensor:
        if noise_seeds is not None:
            # the caller says which samples share a start (GRPO: one seed per group, wherever its members run)
            seeds = [int(s) for s in noise_seeds]
            if len(seeds) != len(records):
                raise ValueError(f"got {len(seeds)} noise seeds for {len(records)} records")
            uniq = list(dict.fromkeys(seeds))
            base = self.initial_noise(len(uniq), sampling, [torch.Generator().manual_seed(s) for s in uniq])
            return base[torch.as_tensor([uniq.index(s) for s in seeds], device=base.device)]
        if not sampling.same_noise_per_group:
            return self.initial_noise(len(records), sampling, generator)
        # each distinct record's start is drawn once, with the generator of its first copy
        uniq, where = unique_records(records)
        gens = generator
        if isinstance(generator, (list, tuple)):
            gens = [generator[where.index(u)] for u in range(len(uniq))]
        base = self.initial_noise(len(uniq), sampling, gens)
        return base[torch.as_tensor(where, device=base.device)]

    @torch.no_grad()
    def _sample(self, records: Sequence[Record], sampling: SamplingConfig, generator, *, sde: bool,
                noise_seeds: Sequence[int] | None = None) -> Rollout:
        records = list(records)
        if not records:
            raise ValueError("rollout needs at least one record")
        cond, meta = self.encode(records, sampling)
        meta = dict(meta, sampling=sampling)
        sigmas, timesteps = self.schedule(sampling)
        n_steps = sampling.num_steps
        # same draw order as FluxPolicy: initial noise, then (fast_window only) the window, then the step noise
        x = self._noise(records, sampling, generator, noise_seeds).to(self.device, torch.float32)
        if sde:
            rng = window_rng(generator) if sampling.train_steps == "fast_window" else None
            plan = plan_steps(n_steps, sampling.train_steps, k=sampling.train_k,
                              window_range=tuple(sampling.window_range) if sampling.window_range else None,
                              steps=sampling.noise_steps, rng=rng)
            noisy, trained = plan.noisy, plan.trained
        else:
            noisy, trained = (False,) * n_steps, ()
        b = x.shape[0]
        traj, log_probs = [x], []
        was_training = self.module.training
        self.module.eval()  # sampling never uses dropout; the trainer's mode is restored below
        try:
            for i in range(n_steps):
                v = self.predict(x, timesteps[i].to(self.device).expand(b), cond, meta, guidance=True)
                level = sampling.noise_level if noisy[i] else 0.0
                # ODE steps use the plain Euler form whatever sde_kind is (CPS at level 0 is the same step, written
                # differently, and would round differently from the diffusers scheduler)
                x, lp, _, _ = sde_step_with_logprob(
                    x, v, float(sigmas[i]), float(sigmas[i + 1]), level, generator=generator,
                    kind=sampling.sde_kind if level > 0 else "sde",
                    reduce=sampling.log_prob_reduce, cps_compat=sampling.cps_compat)
                traj.append(x)
                log_probs.append(lp)
        finally:
            self.module.train(was_training)
        return Rollout(
            records=records, images=self.decode(x, meta).float(), latents=torch.stack(traj, dim=1),
            log_probs=torch.stack(log_probs, dim=1), sigmas=sigmas.clone(),
            timesteps=timesteps.unsqueeze(0).expand(b, -1).clone(), noisy=torch.tensor(noisy, dtype=torch.bool),
            trained_steps=tuple(trained), cond=cond, meta=meta)

    def rollout(self, records: Sequence[Record], sampling: SamplingConfig,
                generator: Generator = None, *, noise_seeds: Sequence[int] | None = None) -> Rollout:
        """SDE rollout on the planned steps (ODE elsewhere); latents and per-step log-probs, fp32.

        ``noise_seeds`` (one per record): the initial noise of each sample comes from its own seed, so samples with
        equal seeds start identically in any batch or process (GRPO's ``same_noise_per_group``); ``generator`` then
        drives only the step noise. Without it, ``sampling.same_noise_per_group`` shares the start among equal
        records of this call."""
        return self._sample(records, sampling, generator, sde=True, noise_seeds=noise_seeds)

    def generate(self, records: Sequence[Record], sampling: SamplingConfig, generator: Generator = None) -> Tensor:
        """Deterministic ODE sampling (``noise_level`` ignored): ``[B, 3, H, W]`` in [0, 1]."""
        return self._sample(records, sampling, generator, sde=False).images

    def log_prob(self, rollout: Rollout, step: int) -> StepLogProb:
        """Recompute ``log p(latents[:, step + 1] | latents[:, step])`` with the current weights (differentiable)."""
        sampling: SamplingConfig = rollout.meta["sampling"]
        if not 0 <= step < rollout.latents.shape[1] - 1:
            raise IndexError(f"step {step} out of range for a rollout of {rollout.latents.shape[1] - 1} steps")
        x = rollout.latents[:, step].to(self.device)
        prev = rollout.latents[:, step + 1].to(self.device)
        v = self.velocity_at(rollout, x, step)
        level = sampling.noise_level if bool(rollout.noisy[step]) else 0.0
        s, s_next = float(rollout.sigmas[step]), float(rollout.sigmas[step + 1])
        _, lp, mean, std = sde_step_with_logprob(
            x, v, s, s_next, level, prev_sample=prev, kind=sampling.sde_kind if level > 0 else "sde",
            reduce=sampling.log_prob_reduce, cps_compat=sampling.cps_compat)
        dt = torch.full((x.shape[0],), s_next - s, dtype=torch.float32, device=x.device)
        return StepLogProb(log_prob=lp, mean=mean, std=std, dt=dt)

    def velocity_at(self, rollout: Rollout, latents: Tensor, step: int) -> Tensor:
        """The current weights' velocity at ``latents`` (the rollout's layout, ``[B, ...]``) for the rollout's
        conditioning at the timestep of step ``step``, with guidance as sampled (differentiable, fp32). The SDE
        log-prob and DiffusionNFT's loss (on re-noised latents) both go through here."""
        cond = {k: v.to(self.device) for k, v in rollout.cond.items()}
        return self.predict(latents.to(self.device), rollout.timesteps[:, step].to(self.device), cond, rollout.meta,
                            guidance=True)

    # ------------------------------------------------------------------ SFT
    def flow_matching_loss(self, records: Sequence[Record], targets: Tensor, sigmas: Tensor,
                           generator: torch.Generator | None = None, *, guidance_scale: float = 3.5) -> Tensor:
        """Rectified-flow velocity MSE: ``x_s = (1 - s) x0 + s eps``, target ``eps - x0``, model timestep
        ``1000 s``, conditional branch only (no CFG; ``guidance_scale`` feeds a distilled-guidance embedding such as
        FLUX's). ``targets`` ``[B, 3, H, W]`` in [0, 1] set the size; ``sigmas [B]`` in (0, 1]."""
        records = list(records)
        if targets.ndim != 4 or targets.shape[0] != len(records):
            raise ValueError(f"targets must be [B, 3, H, W] with B = {len(records)}, got {tuple(targets.shape)}")
        b, _, h, w = targets.shape
        sampling = SamplingConfig(num_steps=1, height=h, width=w, noise_level=0.0, guidance_scale=guidance_scale)
        with torch.no_grad():
            cond, meta = self.encode(records, sampling)
        meta = dict(meta, sampling=sampling)
        x0 = self.encode_targets(targets.to(self.device), meta).float()
        noise = self.initial_noise(b, sampling, generator).to(self.device, torch.float32)
        if noise.shape != x0.shape:
            raise ValueError(f"target latents {tuple(x0.shape)} do not match the noise layout {tuple(noise.shape)}")
        s = sigmas.to(self.device, torch.float32).view(-1, *([1] * (x0.ndim - 1)))
        x_s = (1 - s) * x0 + s * noise
        pred = self.predict(x_s, (sigmas.to(self.device, torch.float32) * 1000), cond, meta, guidance=False)
        return torch.nn.functional.mse_loss(pred.float(), (noise - x0).float())

    # ------------------------------------------------------------------ frozen modules
    @contextlib.contextmanager
    def _frozen_on_device(self, *modules: nn.Module):
        """With ``offload_frozen``, frozen encoders live on the CPU and visit the accelerator only while used.
        Yields the module (or the tuple of modules)."""
        yielded = modules[0] if len(modules) == 1 else modules
        if not self.offload_frozen or self.device.type == "cpu":
            yield yielded
            return
        for m in modules:
            m.to(self.device)
        try:
            yield yielded
        finally:
            for m in modules:
                m.to("cpu")
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    # ------------------------------------------------------------------ LoRA and module plumbing
    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return (p for p in self.transformer.parameters() if p.requires_grad)

    @contextlib.contextmanager
    def disable_lora(self):
        """The base model (LoRA off), e.g. for the KL reference. Trainable flags are untouched.

        Flips the peft tuner layers' ``disable_adapters`` switch directly: diffusers' ``disable_adapters()`` does the
        same plus a peft version check that reads package metadata on every call, and peft's per-layer
        ``enable_adapters`` also rewrites every LoRA tensor's ``requires_grad``; together that made a switch cost
        milliseconds, and the trainer switches around every reference pass."""
        from psrl.models.lora import tuner_layers

        layers = tuner_layers(self.transformer)
        if not layers:
            yield
            return
        before = [layer._disable_adapters for layer in layers]
        for layer in layers:
            layer._disable_adapters = True
        try:
            yield
        finally:
            for layer, flag in zip(layers, before):
                layer._disable_adapters = flag

    def save_lora(self, path) -> None:
        from psrl.models.lora import save_lora_weights

        save_lora_weights(self.transformer, path, prefix=self.lora_prefix)

    def load_lora(self, path) -> None:
        from psrl.models.lora import load_lora_weights

        load_lora_weights(self.transformer, path, prefix=self.lora_prefix)

    def train(self, mode: bool = True) -> None:
        """Only the denoiser switches mode; frozen encoders stay in eval (their dropout would break determinism)."""
        self.transformer.train(mode)

    def to(self, device) -> "FlowPolicyBase":
        self.device = torch.device(device)
        self.module.to(self.device)
        for m in self._frozen:
            m.to("cpu" if self.offload_frozen else self.device)
        return self

    def _forward(self, **kwargs) -> Tensor:
        """Call the (possibly wrapped) denoiser."""
        return self.module(**kwargs, return_dict=False)[0]

    def _warn_truncated(self, records: Sequence[Record], tokenizer, max_length: int, encoder: str,
                        budget: str) -> None:
        """Warn once per record (and text encoder) whose prompt is longer than the encoder keeps (see
        :func:`warn_truncated_prompts`); the records already checked are remembered on the policy."""
        seen = self.__dict__.setdefault("_truncation_checked", {})
        warn_truncated_prompts(records, tokenizer, max_length, encoder, budget, seen)


def pad_rows(tensors: Sequence[Tensor], width: int, what: str) -> tuple[Tensor, Tensor]:
    """Stack ``[L_i, ...]`` tensors zero-padded to ``width`` rows; returns ``(stacked [N, width, ...], lengths [N])``.

    Raises:
        ValueError: a tensor is longer than ``width`` (``what`` names it).
    """
    lengths = [int(t.shape[0]) for t in tensors]
    if max(lengths) > width:
        raise ValueError(f"{what}: {max(lengths)} rows exceed the capacity {width}")
    out = tensors[0].new_zeros((len(tensors), width, *tensors[0].shape[1:]))
    for i, t in enumerate(tensors):
        out[i, : t.shape[0]] = t
    return out, torch.tensor(lengths, dtype=torch.long)


def reorder(parts: list[tuple[list[int], Tensor]], n: int) -> Tensor:
    """Scatter per-group results back to batch order."""
    first = parts[0][1]
    out = first.new_empty((n, *first.shape[1:]))
    for idx, val in parts:
        out[torch.as_tensor(idx, device=out.device)] = val
    return out


__all__ = ["FlowPolicyBase", "group_by_key", "pad_rows", "reorder", "scheduler_schedule", "unique_records",
           "unwrap_module", "window_rng"]
