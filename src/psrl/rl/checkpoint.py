"""Atomic training checkpoints: ``runs/<name>/checkpoints/step-N/``.

Contents of ``step-N/``:

* ``lora/``: the LoRA in the diffusers format (``policy.save_lora``), loadable with ``load_lora_weights``;
  ``lora_ema/`` the same with the EMA weights, when an EMA is kept (what evaluation uses); a full-parameter run
  (``model.lora: null``) writes ``transformer/`` and ``transformer_ema/`` instead (``save_pretrained``,
  safetensors: a pipeline's ``transformer`` subfolder);
* ``trainable.safetensors``: the exact trainable tensors by parameter name (what ``--resume`` restores);
* ``optimizer.pt``, ``scheduler.pt``, ``ema.pt``; ``rng/rank-R.pt`` per process (python, numpy, torch, CUDA);
* ``config.yaml``; ``state.json`` (step, updates, processes, and ``files``: the size of every other file) written
  last.

The directory is assembled as ``.step-N.tmp`` and renamed, so a crash never leaves a ``step-N`` that looks
complete; pruning renames a checkpoint to ``.step-N.trash`` before deleting it, for the same reason. ``--resume``
takes the newest checkpoint whose files all match ``state.json`` and names the ones it skipped. All processes must
share the run directory's filesystem.
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import random
import shutil
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from psrl.config import dump_yaml
from psrl.errors import PsrlError
from psrl.fileio import atomic_dir, step_dirs, write_json_atomic
from psrl.rl import distributed as dist

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"


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

    A new (not resumed) run claims its folder with an exclusive ``mkdir``: when the name is taken (an earlier run,
    or another process starting at the same instant) it takes the first free ``name-<n>``, so two runs never share a
    folder. Decided on the main process and broadcast; ``cfg.run.name`` is updated to the folder's name. Call it
    only once everything checkable has been checked, so a failed start leaves no folder behind.
    """
    from psrl.rl.tracking import environment_info

    root = Path(cfg.run.output_dir)
    name = cfg.run.name or time.strftime(f"{default_prefix}%Y%m%d-%H%M%S")
    if is_main:
        name = _claim_run_dir(root, name) if not resume else name
        if resume and not (root / name).is_dir():
            raise PsrlError(f"--resume: no complete checkpoint under {root / name / CHECKPOINTS} (the run folder "
                            "does not exist)")
    name = dist.broadcast_object(name)
    cfg.run.name = name
    run_dir = root / name
    if is_main:
        dump_yaml(cfg, run_dir / "config.yaml")
        from psrl.models.loading import model_source

        # where the base weights came from (hub commit when known), for reproduction and the pushed model card
        info = {**environment_info(), "num_processes": num_processes, "model": model_source(cfg.model)}
        write_json_atomic(run_dir / "env.json", info)
    dist.barrier()
    return run_dir


def _claim_run_dir(root: Path, name: str) -> str:
    """Create ``root/name`` (or ``name-1``, ``name-2`` ... when taken) with ``mkdir(exist_ok=False)``, which is
    atomic: of two processes racing for one name exactly one wins. Returns the name claimed."""
    root.mkdir(parents=True, exist_ok=True)
    base, n = name, 0
    while True:
        try:
            (root / name).mkdir()
            break
        except FileExistsError:
            n += 1
            name = f"{base}-{n}"
    if name != base:
        logger.warning("%s already exists; this new run goes to %s (use --resume to continue the old one)",
                       root / base, root / name)
    return name


def step_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step-{step}"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Checkpoints that look complete (a ``state.json`` inside), oldest first; see :func:`verify_checkpoint`."""
    return [(step, d) for step, d in step_dirs(Path(run_dir) / CHECKPOINTS) if (d / "state.json").is_file()]


def verify_checkpoint(path: str | Path) -> str | None:
    """``None`` when checkpoint ``path`` is complete, else why not: ``state.json`` readable, every file it lists
    present with its recorded size, the safetensors headers readable. (Checkpoints written before ``files`` was
    recorded are checked for the files every checkpoint has.)"""
    path = Path(path)
    try:
        state = json.loads((path / "state.json").read_text())
    except (OSError, ValueError) as e:
        return f"state.json unreadable ({e})"
    files = state.get("files") or {name: None for name in _REQUIRED}
    for rel, size in files.items():
        f = path / rel
        if not f.is_file():
            return f"{rel} is missing"
        if size is not None and f.stat().st_size != size:
            return f"{rel} has {f.stat().st_size} bytes, state.json recorded {size}"
        if rel.endswith(".safetensors"):
            try:
                with safe_open(str(f), framework="pt") as h:
                    h.keys()
            except Exception as e:  # noqa: BLE001 - any failure to parse the header means unusable
                return f"{rel} is unreadable ({type(e).__name__}: {e})"
    return None


_REQUIRED = ("trainable.safetensors", "optimizer.pt", "scheduler.pt", "lora/pytorch_lora_weights.safetensors")


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint; incomplete newer ones are skipped with a warning naming them and why."""
    for step, d in reversed(list_checkpoints(run_dir)):
        why = verify_checkpoint(d)
        if why is None:
            return d
        logger.warning("skipping incomplete checkpoint %s: %s", d, why)
    return None


def check_finite(named_params: dict[str, nn.Parameter], step: int) -> None:
    """Raise :class:`PsrlError` naming ``step`` and the first non-finite trainable parameter (NaN or inf weights
    are never saved: a LoRA full of NaN is not a result)."""
    for name, p in named_params.items():
        if not bool(torch.isfinite(p.detach()).all()):
            bad = int((~torch.isfinite(p.detach())).sum())
            raise PsrlError(f"step {step}: trainable parameter {name} has {bad} non-finite value(s) (NaN/inf); "
                            "nothing was saved for this step. Lower the learning rate, check the rewards and "
                            "advantage settings, or resume from the last checkpoint")


def _tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _space_error(final: Path, e: OSError, named_params, run_dir) -> PsrlError:
    """One line for a failed write: the path, and for a full disk the free space against what is needed."""
    if e.errno not in (errno.ENOSPC, errno.EDQUOT):
        return PsrlError(f"could not write checkpoint {final}: {e.strerror or e}")
    previous = list_checkpoints(run_dir)
    if previous:
        need = _tree_bytes(previous[-1][1])
    else:  # weights + AdamW's two moments, roughly
        need = 3 * sum(p.numel() * p.element_size() for p in named_params.values())
    free = shutil.disk_usage(final.parent).free
    return PsrlError(f"no space left on device writing checkpoint {final}: about {_mb(need)} needed, {_mb(free)} "
                     "free; free some space (or lower train.keep_last) and --resume. Earlier checkpoints are intact")


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n < 2**30 else f"{n / 2**30:.2f} GiB"


def prune_checkpoints(run_dir: str | Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` checkpoints. Each is first renamed to ``.step-N.trash`` (atomic) and
    then deleted, so a kill mid-way never leaves a ``step-N`` with ``state.json`` but without its weights."""
    if not keep_last:
        return
    for _, d in list_checkpoints(run_dir)[:-keep_last]:
        trash = d.parent / f".{d.name}.trash"
        if trash.exists():
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(d, trash)
        shutil.rmtree(trash, ignore_errors=True)


def clean_leftovers(run_dir: str | Path) -> None:
    """Remove ``.step-N.tmp`` / ``.trash`` / ``.old`` folders a killed run left behind."""
    root = Path(run_dir) / CHECKPOINTS
    if root.is_dir():
        for d in root.iterdir():
            if d.name.startswith(".step-") and d.name.endswith((".tmp", ".trash", ".old")):
                shutil.rmtree(d, ignore_errors=True)


def save_checkpoint(run_dir: str | Path, step: int, *, policy, named_params: dict[str, nn.Parameter],
                    optimizer: torch.optim.Optimizer, scheduler, ema, config_yaml: str, state: dict,
                    process_index: int = 0, barrier: Callable[[], None] = lambda: None,
                    keep_last: int = 0, rng: dict | None = None, modules: dict | None = None,
                    full: bool = False) -> Path:
    """Write ``step-N`` atomically; every process calls this (each writes its RNG state, ``rng`` when given,
    else the current one), rank 0 the rest. ``modules``: ``{name: obj}`` whose ``state_dict()`` is saved as
    ``name.pt``. ``full``: a full-parameter run, whose denoiser is written as ``transformer/`` instead of a LoRA.

    Raises:
        PsrlError: non-finite trainable weights (nothing written), or a failed write (no space left: the message
            names the path, the space needed and free; the temp folder is removed, earlier checkpoints intact).
    """
    check_finite(named_params, step)
    final = step_dir(run_dir, step)
    main = process_index == 0
    failed = None
    try:
        with contextlib.ExitStack() as stack:
            # rank 0 owns atomic_dir's temp folder (removed on an error, renamed to step-N on success); a failure
            # to make it is kept, not raised, so that every rank still meets the same collectives below
            tmp = final.with_name(f".{final.name}.tmp")
            if main:
                try:
                    stack.enter_context(atomic_dir(final))
                    (tmp / "rng").mkdir()
                except OSError as e:
                    failed = e
            barrier()
            if failed is None:
                try:
                    torch.save(rng if rng is not None else rng_state(), tmp / "rng" / f"rank-{process_index}.pt")
                except OSError as e:
                    failed = e
            # every rank's failure reaches rank 0 (a checkpoint without one rank's RNG file could not resume it);
            # the gather is also the barrier before rank 0 writes the rest
            lost = [e for e in dist.gather_objects(failed) if e is not None]
            if main:
                if lost:
                    raise lost[0]
                _write_contents(tmp, policy=policy, named_params=named_params, optimizer=optimizer,
                                scheduler=scheduler, ema=ema, config_yaml=config_yaml, state={"step": step, **state},
                                modules=modules or {}, full=full)
    except OSError as e:
        failed = _space_error(final, e, named_params, run_dir)
    if main and failed is None:
        prune_checkpoints(run_dir, keep_last)
        logger.info("saved checkpoint %s", final)
    error = dist.broadcast_object(str(failed) if failed is not None and main else None)
    barrier()
    if error is not None:
        raise failed if main and isinstance(failed, PsrlError) else PsrlError(error)
    return final


def _write_contents(tmp: Path, *, policy, named_params, optimizer, scheduler, ema, config_yaml: str,
                    state: dict, modules: dict, full: bool = False) -> None:
    save_file({k: p.detach().cpu().contiguous() for k, p in named_params.items()}, tmp / "trainable.safetensors")
    save_weights = _save_denoiser if full else (lambda pol, path: pol.save_lora(path))
    kind = "transformer" if full else "lora"
    save_weights(policy, tmp / kind)
    if ema is not None:
        with ema.swapped_in():
            save_weights(policy, tmp / f"{kind}_ema")
        torch.save(ema.state_dict(), tmp / "ema.pt")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    for name, obj in modules.items():
        torch.save(obj.state_dict(), tmp / f"{name}.pt")
    (tmp / "config.yaml").write_text(config_yaml)
    files = {f.relative_to(tmp).as_posix(): f.stat().st_size for f in sorted(tmp.rglob("*"))
             if f.is_file() and not f.name.startswith("rank-")}
    (tmp / "state.json").write_text(json.dumps({**state, "files": files}, indent=2))
    _fsync_tree(tmp)


def _save_denoiser(policy, path: Path) -> None:
    """The whole denoiser with diffusers' ``save_pretrained`` (config.json + safetensors), so the folder drops
    into a pipeline directory as its ``transformer/``."""
    from psrl.models.flow_policy import unwrap_module

    unwrap_module(policy.module).save_pretrained(path, safe_serialization=True)


def _fsync_tree(path: Path) -> None:
    """Flush the folder's files to disk before the rename publishes them (a power cut after the rename must not
    leave a ``step-N`` of empty files)."""
    for f in path.rglob("*"):
        if f.is_file():
            with contextlib.suppress(OSError), f.open("rb") as handle:
                os.fsync(handle.fileno())


def load_checkpoint(path: str | Path, *, named_params: dict[str, nn.Parameter], optimizer, scheduler, ema,
                    process_index: int = 0, modules: dict | None = None, optional: frozenset | set = frozenset()
                    ) -> dict:
    """Restore what :func:`save_checkpoint` wrote; returns ``state.json``. ``optional``: names in ``modules`` whose
    ``name.pt`` a checkpoint may lack (saved by newer versions only): those keep their current state, with a log line.
    Raises ``ValueError`` naming the parameter when the checkpoint does not fit the model, or a module file that is
    missing and not optional."""
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
    for name, obj in (modules or {}).items():
        f = path / f"{name}.pt"
        if not f.is_file() and name in optional:
            logger.info("checkpoint %s has no %s.pt (saved by an older psrl); %s starts fresh", path, name, name)
            continue
        if not f.is_file():
            raise ValueError(f"checkpoint {path} has no {name}.pt (was it saved with another train config?)")
        obj.load_state_dict(torch.load(f, weights_only=True, map_location="cpu"))
    rng_file = path / "rng" / f"rank-{process_index}.pt"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=True))
    else:
        logger.warning("checkpoint %s has no RNG state for process %d (was it saved with fewer processes?)",
                       path, process_index)
    return state
