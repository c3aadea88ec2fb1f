"""Metrics trackers (JSONL always; TensorBoard or W&B on request, imported only then) and image grids."""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import torch
from torch import Tensor

logger = logging.getLogger(__name__)


class Tracker:
    """Writes one JSON object per ``log`` call to ``metrics.jsonl`` (appending, so a resumed run continues the
    file) and mirrors scalars to TensorBoard or W&B when chosen."""

    def __init__(self, run_dir: str | Path, kind: str = "jsonl", *, config: dict | None = None,
                 run_name: str | None = None, wandb_project: str = "psrl"):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a")
        self._tb = None
        self._wandb = None
        if kind == "tensorboard":
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ImportError("run.tracker=tensorboard needs the tensorboard package: "
                                  "pip install 'psrl[tensorboard]'") from e
            self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))
        elif kind == "wandb":
            try:
                import wandb
            except ImportError as e:
                raise ImportError("run.tracker=wandb needs the wandb package: pip install 'psrl[wandb]'") from e
            self._wandb = wandb.init(project=wandb_project, name=run_name, config=config, dir=str(run_dir))

    def log(self, metrics: dict, step: int) -> None:
        record = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        scalars = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def _plain(v):
    if isinstance(v, Tensor):
        v = v.item() if v.numel() == 1 else v.tolist()
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else str(v)  # JSON has no NaN/inf
    return v


def environment_info() -> dict:
    """Versions of python and the key packages, and the devices: for run directories and bug reports."""
    import importlib.metadata
    import platform

    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("psrl", "torch", "diffusers", "transformers", "peft", "accelerate", "safetensors", "numpy"):
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    versions["cuda_available"] = torch.cuda.is_available()
    versions["cuda_version"] = torch.version.cuda
    versions["devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] or ["cpu"]
    return versions


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a ``metrics.jsonl``."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def image_grid(images: Tensor, ncols: int | None = None) -> Tensor:
    """``[B, 3, H, W]`` in [0, 1] -> one ``[3, rows * H, cols * W]`` image (row-major, black padding)."""
    b, c, h, w = images.shape
    ncols = ncols or math.ceil(math.sqrt(b))
    nrows = math.ceil(b / ncols)
    grid = images.new_zeros(c, nrows * h, ncols * w)
    for i in range(b):
        r, col = divmod(i, ncols)
        grid[:, r * h:(r + 1) * h, col * w:(col + 1) * w] = images[i]
    return grid


def save_image(image: Tensor, path: str | Path) -> None:
    """Write ``[3, H, W]`` in [0, 1] as PNG atomically."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    array = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(array).save(tmp, format="PNG")
    os.replace(tmp, path)
