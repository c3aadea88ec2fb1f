"""Metrics trackers (JSONL always; TensorBoard or W&B on request, imported only then) and image grids."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import torch
from torch import Tensor

logger = logging.getLogger(__name__)


class Tracker:
    """Writes one JSON object per ``log`` call to ``metrics.jsonl`` (appending, so a resumed run continues the
    file) and mirrors scalars to TensorBoard or W&B when chosen.

    Each row is written with one ``write`` of a complete line and flushed, so a kill can only tear the last line;
    a torn or unparsable last line is dropped when the file is opened again. ``resume_step``: drop the rows past
    the checkpoint the run resumes from (rewritten atomically), so the log of a resumed run equals an uninterrupted
    run's.
    """

    def __init__(self, run_dir: str | Path, kind: str = "jsonl", *, config: dict | None = None,
                 run_name: str | None = None, wandb_project: str = "psrl", resume_step: int | None = None):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        repair_metrics(self.path, keep_through=resume_step)
        self._file = self.path.open("a")
        self._tb = None
        self._wandb = None
        if kind == "tensorboard":
            check_tracker(kind)
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))
        elif kind == "wandb":
            check_tracker(kind)
            import wandb

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


_TRACKER_PACKAGES = {"tensorboard": ("tensorboard", "psrl[tensorboard]"), "wandb": ("wandb", "psrl[wandb]")}


def check_tracker(kind: str) -> None:
    """Raise :class:`~psrl.config.ConfigError` (one line) when tracker ``kind`` needs a package that is not
    installed; checked before a run folder is made."""
    import importlib.util

    from psrl.config import ConfigError

    if kind in _TRACKER_PACKAGES:
        module, extra = _TRACKER_PACKAGES[kind]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"run.tracker={kind} needs the {module} package, which is not installed: "
                              f"pip install '{extra}' (or run.tracker=jsonl)")


def repair_metrics(path: str | Path, *, keep_through: int | None = None) -> int:
    """Make ``metrics.jsonl`` a clean log: drop a torn (incomplete or unparsable) last line, and with
    ``keep_through`` every row whose ``step`` is past it. Rewritten atomically only when something changes.
    Returns the number of rows dropped."""
    from psrl.fileio import write_text_atomic

    path = Path(path)
    if not path.is_file():
        return 0
    text = path.read_text()
    lines = text.splitlines(keepends=True)
    kept, dropped = [], 0
    for i, line in enumerate(lines):
        try:
            if not line.endswith("\n"):
                raise ValueError("no line end")
            row = json.loads(line) if line.strip() else None
        except ValueError:
            if i == len(lines) - 1:
                logger.warning("%s: dropping a torn last line (%d bytes) left by an interrupted write", path,
                               len(line))
                dropped += 1
                continue
            raise ValueError(f"{path}: line {i + 1} is not valid JSON; the metrics log is damaged") from None
        if row is not None and keep_through is not None and isinstance(row.get("step"), int) \
                and row["step"] > keep_through:
            dropped += 1
            continue
        kept.append(line)
    if dropped:
        write_text_atomic(path, "".join(kept))
        if keep_through is not None:
            logger.info("%s: dropped %d row(s) past the resumed step %d", path, dropped, keep_through)
    return dropped


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
    """The rows of a ``metrics.jsonl``; a torn last line (an interrupted write) is ignored."""
    rows = []
    lines = Path(path).read_text().splitlines(keepends=True)
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError:
            if i == len(lines) - 1 and not line.endswith("\n"):
                break
            raise
    return rows


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
