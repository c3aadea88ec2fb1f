"""Atomic training checkpoints: ``runs/<name>/checkpoints/step-N/``.

Contents of ``step-N/``:

* ``lora/``: the LoRA in the diffusers format (``policy.save_lora``), loadable with ``load_lora_weights``;
  ``lora_ema/`` the same with the EMA weights, when an EMA is kept (what evaluation uses);
* ``trainable.safetensors``: the exact trainable tensors by parameter name (what ``--resume`` restores);
* ``optimizer.pt``, ``scheduler.pt``, ``ema.pt``; ``rng/rank-R.pt`` per process (python, numpy, torch, CUDA);
* ``config.yaml``; ``state.json`` (step, updates, processes) written last.

The directory is assembled as ``.step-N.tmp`` and renamed, so a crash never leaves a ``step-N`` that looks
complete. All processes must share the run directory's filesystem.
"""
from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def named_trainable(module: nn.Module, trainable: Iterable[nn.Parameter]) -> dict[str, nn.Parameter]:
    """``{name: parameter}`` for the trainable parameters, names from ``module.named_parameters()``."""
    wanted = {id(p) for p in trainable}
    named = {name: p for name, p in module.named_parameters() if id(p) in wanted}
    if len(named) != len(wanted):
        raise ValueError(f"{len(wanted) - len(named)} trainable parameters are not registered in policy.module")
    return named


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def make_run_dir(cfg, *, resume: bool, is_main: bool, num_processes: int, default_prefix: str = "") -> Path:
    """``cfg.run.output_dir / cfg.run.name`` (a timestamp when unnamed), with ``config.yaml`` and ``env.json``.

    A new (not resumed) run never mixes into an earlier run's folder: it gets the first free ``name-<n>``, decided
    on the main process and broadcast; ``cfg.run.name`` is updated to the folder's name.
    """
    import time

    from psrl.config import dump_yaml
    from psrl.fileio import write_json_atomic
    from psrl.rl import distributed as dist
    from psrl.rl.tracking import environment_info

    root = Path(cfg.run.output_dir)
    name = cfg.run.name or time.strftime(f"{default_prefix}%Y%m%d-%H%M%S")
    if not resume and is_main:
        base, n = name, 0
        while (root / name / "metrics.jsonl").exists() or (root / name / CHECKPOINTS).exists():
            n += 1
            name = f"{base}-{n}"
        if name != base:
            logger.warning("%s already holds a run; this new run goes to %s (use --resume to continue the old one)",
                           root / base, root / name)
    name = dist.broadcast_object(name)
    cfg.run.name = name
    run_dir = root / name
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        dump_yaml(cfg, run_dir / "config.yaml")
        info = {**environment_info(), "num_processes": num_processes}
        write_json_atomic(run_dir / "env.json", info)
    dist.barrier()
    return run_dir


def step_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step-{step}"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (a ``state.json`` inside), oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    found = []
    if root.is_dir():
        for d in root.iterdir():
            m = _STEP_DIR.match(d.name)
            if m and d.is_dir() and (d / "state.json").is_file():
                found.append((int(m.group(1)), d))
    return sorted(found)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def save_checkpoint(run_dir: str | Path, step: int, *, policy, named_params: dict[str, nn.Parameter],
                    optimizer: torch.optim.Optimizer, scheduler, ema, config_yaml: str, state: dict,
                    process_index: int = 0, barrier: Callable[[], None] = lambda: None,
                    keep_last: int = 0) -> Path:
    """Write ``step-N`` atomically; every process calls this (each writes its RNG state), rank 0 the rest."""
    final = step_dir(run_dir, step)
    tmp = final.parent / f".{final.name}.tmp"
    main = process_index == 0
    if main:
        if tmp.exists():
            shutil.rmtree(tmp)
        (tmp / "rng").mkdir(parents=True)
    barrier()
    torch.save(rng_state(), tmp / "rng" / f"rank-{process_index}.pt")
    barrier()
    if main:
        from safetensors.torch import save_file

        save_file({k: p.detach().cpu().contiguous() for k, p in named_params.items()}, tmp / "trainable.safetensors")
        policy.save_lora(tmp / "lora")
        if ema is not None:
            with ema.swapped_in():
                policy.save_lora(tmp / "lora_ema")
            torch.save(ema.state_dict(), tmp / "ema.pt")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        (tmp / "config.yaml").write_text(config_yaml)
        (tmp / "state.json").write_text(json.dumps({"step": step, **state}, indent=2))
        old = final.parent / f".{final.name}.old"
        if final.exists():  # re-saving a step (after a resume): keep the old copy until the new one is in place
            if old.exists():
                shutil.rmtree(old)
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
        if keep_last:
            for _, old in list_checkpoints(run_dir)[:-keep_last]:
                shutil.rmtree(old, ignore_errors=True)
        logger.info("saved checkpoint %s", final)
    barrier()
    return final


def load_checkpoint(path: str | Path, *, named_params: dict[str, nn.Parameter], optimizer, scheduler, ema,
                    process_index: int = 0) -> dict:
    """Restore what :func:`save_checkpoint` wrote; returns ``state.json``. Raises ``ValueError`` naming the
    parameter when the checkpoint does not fit the model."""
    from safetensors.torch import load_file

    path = Path(path)
    state = json.loads((path / "state.json").read_text())
    saved = load_file(path / "trainable.safetensors")
    missing = sorted(set(named_params) - set(saved))
    unexpected = sorted(set(saved) - set(named_params))
    if missing or unexpected:
        raise ValueError(f"checkpoint {path} does not fit the model: missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]} (was it made with another model or LoRA config?)")
    with torch.no_grad():
        for name, p in named_params.items():
            if saved[name].shape != p.shape:
                raise ValueError(f"checkpoint {path}: {name} has shape {tuple(saved[name].shape)}, "
                                 f"the model {tuple(p.shape)}")
            p.copy_(saved[name].to(p.device, p.dtype))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu"))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    if ema is not None:
        if (path / "ema.pt").is_file():
            ema.load_state_dict(torch.load(path / "ema.pt", weights_only=True))
        else:
            logger.warning("checkpoint %s has no EMA state; the EMA restarts from the current weights", path)
    rng_file = path / "rng" / f"rank-{process_index}.pt"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=True))
    else:
        logger.warning("checkpoint %s has no RNG state for process %d (was it saved with fewer processes?)",
                       path, process_index)
    return state
