"""Distributed glue around ``accelerate``: building the Accelerator, gathering rewards, averaging LoRA gradients.

Why psrl averages gradients itself instead of wrapping the module in DDP: a GRPO micro-batch runs several forward
passes (one per trained step, plus a LoRA-disabled reference pass when ``beta > 0``) before an update, and only the
small LoRA tensors need synchronising. One ``all_reduce`` of the flattened LoRA gradients per optimizer update is
exact, independent of the policy's module structure (no ``find_unused_parameters``, no ``no_sync`` bookkeeping)
and works the same over gloo (CPU) and NCCL.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from psrl.errors import PsrlError

logger = logging.getLogger(__name__)


def make_accelerator(device: str = "auto", mixed_precision: str = "no"):
    """``accelerate.Accelerator`` on ``device`` (``auto``: CUDA when available). On a machine without CUDA the
    CPU is forced so that ``accelerate launch --multi_gpu`` / ``torchrun`` start a gloo process group."""
    from accelerate import Accelerator

    use_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise PsrlError("train.device is 'cuda' but no CUDA device is available (set train.device: cpu or auto)")
    return Accelerator(cpu=use_cpu, mixed_precision=mixed_precision)


def is_distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() \
        and torch.distributed.get_world_size() > 1


def gather_rows(tensor: Tensor) -> Tensor:
    """Concatenate equally sized ``[n, ...]`` tensors of all processes in rank order (a no-op on one process)."""
    if not is_distributed():
        return tensor
    device = comm_device(tensor)
    parts = [torch.empty_like(tensor, device=device) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(parts, tensor.to(device).contiguous())
    return torch.cat(parts).to(tensor.device)


def average_gradients(parameters: Sequence[nn.Parameter]) -> None:
    """Average the gradients of ``parameters`` over processes with one flattened all-reduce."""
    if not is_distributed():
        return
    params = [p for p in parameters if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1).float() for p in params])
    device = comm_device(flat)
    flat = flat.to(device)
    torch.distributed.all_reduce(flat)
    flat /= torch.distributed.get_world_size()
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p.grad).to(p.grad.device, p.grad.dtype))
        offset += n


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s picklable ``obj`` on every process."""
    if not is_distributed():
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj: Any) -> list[Any]:
    """Every process's picklable ``obj``, in rank order (``[obj]`` on one process)."""
    if not is_distributed():
        return [obj]
    out = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if is_distributed():
        torch.distributed.barrier()


def comm_device(t: Tensor) -> torch.device:
    """NCCL needs CUDA tensors, gloo CPU ones."""
    backend = torch.distributed.get_backend()
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast_parameters(parameters: Sequence[nn.Parameter], src: int = 0) -> None:
    """Copy rank ``src``'s values of ``parameters`` to every process (identical starting weights)."""
    if not is_distributed():
        return
    with torch.no_grad():
        for p in parameters:
            buf = p.detach().to(comm_device(p)).contiguous()
            torch.distributed.broadcast(buf, src=src)
            p.copy_(buf.to(p.device))


def reduce_pass_stats(local: dict, count: int, keys: Sequence[str]) -> dict:
    """Loss diagnostics averaged over processes, weighted by the passes each ran (``count``); ``ratio_min`` /
    ``ratio_max`` (when among ``keys``) are the minimum / maximum over the processes that ran a pass. Returns
    ``{key: value} | {"train_passes": total passes}``; a key no process measured is 0.0. Collective."""
    if not is_distributed():
        return {k: local.get(k, 0.0) for k in keys} | {"train_passes": float(count)}
    dev = comm_device(torch.zeros(1))
    vec = torch.tensor([local.get(k, 0.0) * count for k in keys] + [float(count)], device=dev)
    torch.distributed.all_reduce(vec)
    total = float(vec[-1])
    out = {k: float(vec[i]) / total if total else 0.0 for i, k in enumerate(keys)}
    if "ratio_min" in keys:
        lo = torch.tensor([local.get("ratio_min", float("inf")) if count else float("inf")], device=dev)
        hi = torch.tensor([local.get("ratio_max", float("-inf")) if count else float("-inf")], device=dev)
        torch.distributed.all_reduce(lo, op=torch.distributed.ReduceOp.MIN)
        torch.distributed.all_reduce(hi, op=torch.distributed.ReduceOp.MAX)
        if total:
            out["ratio_min"], out["ratio_max"] = float(lo), float(hi)
    return out | {"train_passes": total}
