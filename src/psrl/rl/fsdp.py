"""Sharding the frozen base across processes with FSDP2 (``torch.distributed.fsdp.fully_shard``) when the run is
started with accelerate's FSDP plugin::

    accelerate launch --config_file configs/accelerate/fsdp.yaml -m psrl train --config configs/psr_kontext.yaml

Each transformer block (every element of the denoiser's ``ModuleList`` children: FLUX's ``transformer_blocks`` and
``single_transformer_blocks``, SD3's and Qwen-Image's ``transformer_blocks``) and then the rest of the denoiser
become FSDP units: every process keeps ``1 / world_size`` of the frozen weights and all-gathers one block at a time
for its forward (rollout, log-prob recompute, the LoRA-disabled KL reference alike). The LoRA parameters are
``ignored_params``: they stay whole, ordinary tensors on every process, so psrl's own one-all-reduce gradient
averaging (:mod:`psrl.rl.distributed`), the optimizer, EMA and the diffusers-format checkpoints are unchanged.
The all-gathered weights are the original ones bit for bit, so a sharded run computes what the unsharded
multi-process run computes.

Why not ``accelerator.prepare(model)``: psrl never hands the denoiser to DDP/FSDP wrappers (see
:mod:`psrl.rl.distributed`); sharding only what is frozen keeps the LoRA's bookkeeping in one place. On a CPU
machine accelerate runs an FSDP config as plain ``MULTI_CPU`` and drops the plugin; the launcher's ``FSDP_*``
environment still says what was asked, and the plugin is rebuilt from it, so two gloo processes shard too.
"""
from __future__ import annotations

import logging
import os

from torch import nn

from psrl.errors import ConfigError

logger = logging.getLogger(__name__)


def fsdp_plugin(accelerator):
    """accelerate's ``FullyShardedDataParallelPlugin`` when the run was launched with an FSDP config on more than
    one process, else ``None``."""
    if accelerator.num_processes < 2:
        return None
    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    if plugin is None and os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true"):
        from accelerate.utils import FullyShardedDataParallelPlugin

        plugin = FullyShardedDataParallelPlugin()  # reads the launcher's FSDP_* variables
    return plugin


def fsdp_units(module: nn.Module) -> list[nn.Module]:
    """The blocks that become FSDP units: every element of ``module``'s direct ``ModuleList`` children, in order.
    The root (embedders, final norm and projection) is sharded last, around them."""
    return [block for child in module.children() if isinstance(child, nn.ModuleList) for block in child]


def shard_frozen_base(module: nn.Module, trainable: list[nn.Parameter], *, reshard_after_forward: bool = True,
                      offload_policy=None) -> int:
    """``fully_shard`` each of :func:`fsdp_units` and then ``module`` itself, leaving ``trainable`` (the LoRA)
    unsharded. In place; returns the number of units (blocks + the root). Needs an initialised process group."""
    from torch.distributed.fsdp import OffloadPolicy, fully_shard

    kwargs = {"reshard_after_forward": reshard_after_forward, "ignored_params": set(trainable),
              "offload_policy": offload_policy if offload_policy is not None else OffloadPolicy()}
    units = fsdp_units(module)
    for block in units:
        fully_shard(block, **kwargs)
    fully_shard(module, **kwargs)
    return len(units) + 1


def shard_policy(accelerator, policy, cfg) -> bool:
    """Shard ``policy.module``'s frozen weights when the run was launched with accelerate's FSDP plugin (see the
    module docstring); a no-op otherwise. Returns whether it sharded.

    Raises:
        ConfigError: the plugin asks for FSDP1 (``fsdp_version: 1``; psrl shards with FSDP2's ``fully_shard``), or
            ``eval.every`` is set (evaluation generates on the main process alone, which sharded weights cannot:
            every process must join each forward).
    """
    plugin = fsdp_plugin(accelerator)
    if plugin is None:
        return False
    if getattr(plugin, "fsdp_version", 2) != 2:
        raise ConfigError(f"accelerate config fsdp_config.fsdp_version: {plugin.fsdp_version}; psrl shards the "
                          "frozen base with FSDP2 (fully_shard): set fsdp_version: 2")
    every = getattr(getattr(cfg, "eval", None), "every", 0)
    if every:
        raise ConfigError(f"eval.every: {every}; evaluation generates on the main process only, which an "
                          "FSDP-sharded model cannot do (every process joins each forward): set eval.every: 0 "
                          "and evaluate the saved LoRA with `psrl bench` or `psrl generate`")
    from torch.distributed.fsdp import OffloadPolicy

    offload = plugin.cpu_offload if isinstance(plugin.cpu_offload, OffloadPolicy) else None
    trainable = list(policy.trainable_parameters())
    units = shard_frozen_base(policy.module, trainable, reshard_after_forward=bool(plugin.reshard_after_forward),
                              offload_policy=offload)
    frozen = sum(p.numel() for p in policy.module.parameters() if not p.requires_grad)
    logger.info("FSDP2 sharded the frozen denoiser into %d units over %d processes (%.1fM frozen parameters, "
                "%.2fM LoRA parameters replicated)", units, accelerator.num_processes, frozen / 1e6,
                sum(p.numel() for p in trainable) / 1e6)
    return True


__all__ = ["fsdp_plugin", "fsdp_units", "shard_frozen_base", "shard_policy"]
