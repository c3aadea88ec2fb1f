"""Metrics trackers: ``metrics.jsonl`` always, plus accelerate's TensorBoard and W&B trackers on request (their
packages imported only then), with run hyperparameters and images; and image grids.

The trackers are ``accelerate.tracking.GeneralTracker`` objects (JSONL is one too, :class:`JSONLTracker`), chosen
by ``run.tracker`` (TRL's ``report_to``) through :data:`TRACKERS`, so adding one is one registry entry.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import math
import platform
from pathlib import Path

import numpy as np
import torch
from accelerate.tracking import GeneralTracker
from torch import Tensor

from psrl.errors import ConfigError
from psrl.fileio import jsonl_lines, write_text_atomic
from psrl.images import tensor_to_pil

logger = logging.getLogger(__name__)


class JSONLTracker(GeneralTracker):
    """One JSON object per ``log`` call in ``<run_dir>/metrics.jsonl`` (appending, so a resumed run continues the
    file). Each row is one ``write`` of a complete line, flushed, so a kill can only tear the last line; a torn
    last line is dropped when the file is opened again, and with ``resume_step`` so are the rows past the
    checkpoint the run resumes from (so a resumed run's log equals an uninterrupted run's). NaN is written as
    ``null`` and infinities as strings (JSON has neither). Images are not written here: the trainer saves them as
    PNG files under ``samples/``."""

    name = "jsonl"
    requires_logging_directory = True
    main_process_only = False  # the Tracker is only made on the main process

    def __init__(self, run_dir: str | Path, *, resume_step: int | None = None):
        super().__init__()
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        repair_metrics(self.path, keep_through=resume_step)
        self._file = self.path.open("a")

    @property
    def tracker(self):
        return self._file

    def log(self, values: dict, step: int | None = None, **kwargs) -> None:
        self._file.write(json.dumps({"step": step, **values}) + "\n")
        self._file.flush()

    def log_images(self, values: dict, step: int | None = None, **kwargs) -> None:
        """Nothing: images are PNG files in the run directory already."""

    def finish(self) -> None:
        self._file.close()


def _tensorboard(run_dir: Path, *, run_name: str | None, project: str) -> GeneralTracker:
    from accelerate.tracking import TensorBoardTracker

    return TensorBoardTracker("tensorboard", str(run_dir))  # events under <run_dir>/tensorboard/


def _wandb(run_dir: Path, *, run_name: str | None, project: str) -> GeneralTracker:
    from accelerate.tracking import WandBTracker

    return WandBTracker(project, name=run_name, dir=str(run_dir))  # its first argument is the W&B project


# name -> builder of an accelerate tracker (JSONL is always on and built by Tracker itself)
TRACKERS = {"tensorboard": _tensorboard, "wandb": _wandb}

_TRACKER_PACKAGES = {"tensorboard": ("tensorboard", "psrl[tensorboard]"), "wandb": ("wandb", "psrl[wandb]")}


class Tracker:
    """The run's trackers: :class:`JSONLTracker` always, and each other name of ``kind`` (``"tensorboard"``,
    ``"wandb"``, or a list of names; ``"jsonl"`` alone adds nothing) as an accelerate tracker. Made on the main
    process only.

    ``config`` (the run config as plain data) is logged once as hyperparameters, flattened to dotted keys with the
    psrl version added as ``psrl_version`` (lists and ``None`` as text, which TensorBoard's hparams need).

    Raises:
        ConfigError: a tracker whose package is not installed (:func:`check_tracker`, also run before the run
            directory is made).
    """

    def __init__(self, run_dir: str | Path, kind: str | list[str] | tuple[str, ...] = "jsonl", *,
                 config: dict | None = None, run_name: str | None = None, wandb_project: str = "psrl",
                 resume_step: int | None = None):
        names = tracker_names(kind)
        check_tracker(names)
        run_dir = Path(run_dir)
        self.jsonl = JSONLTracker(run_dir, resume_step=resume_step)
        self.path = self.jsonl.path
        self.trackers: list[GeneralTracker] = []
        if any(name in TRACKERS for name in names):
            from accelerate import PartialState

            PartialState()  # accelerate's trackers log through its logger, which needs the (shared) state
        for name in names:
            if name in TRACKERS:
                t = TRACKERS[name](run_dir, run_name=run_name, project=wandb_project)
                t.start()
                t.store_init_configuration(hparams(config or {}))
                self.trackers.append(t)

    def log(self, metrics: dict, step: int) -> None:
        """Append ``metrics`` (numbers, tensors, strings, lists) to ``metrics.jsonl``; mirror the finite scalars to
        the other trackers."""
        record = {k: _plain(v) for k, v in metrics.items()}
        self.jsonl.log(record, step)
        scalars = {k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        for t in self.trackers:
            t.log(scalars, step=step)

    def log_images(self, name: str, images, step: int) -> None:
        """Log a PIL image, a ``[3, H, W]`` / ``[B, 3, H, W]`` tensor in [0, 1], or a list of PIL images under
        ``name`` (e.g. ``eval/samples``) to the trackers that show images (TensorBoard, W&B) at ``step``."""
        pils = _to_pils(images)
        if not pils or not self.trackers:
            return
        for t in self.trackers:
            if t.name == "tensorboard":
                for i, pil in enumerate(pils):  # one add_images call per image: sizes may differ
                    key = name if len(pils) == 1 else f"{name}/{i}"
                    t.log_images({key: np.asarray(pil.convert("RGB"))[None]}, step=step, dataformats="NHWC")
            elif hasattr(t, "log_images"):
                t.log_images({name: pils}, step=step)

    def close(self) -> None:
        self.jsonl.finish()
        for t in self.trackers:
            t.finish()


def tracker_names(kind: str | list[str] | tuple[str, ...]) -> list[str]:
    """``run.tracker`` as a list of names (a single string is a list of one)."""
    return [kind] if isinstance(kind, str) else list(kind)


def hparams(config: dict) -> dict:
    """The run config flattened to ``{"train.lr": 0.03, ...}`` plus ``psrl_version``: values are numbers, bools or
    strings (lists, mappings and ``None`` as JSON text), as TensorBoard's hparams and W&B's config accept."""
    flat: dict = {}

    def walk(node, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(v, f"{prefix}.{k}" if prefix else str(k))
        elif isinstance(node, (bool, int, float, str)):
            flat[prefix] = node
        else:
            flat[prefix] = json.dumps(node)

    walk(config, "")
    try:
        flat["psrl_version"] = importlib.metadata.version("psrl")
    except importlib.metadata.PackageNotFoundError:
        flat["psrl_version"] = "unknown"
    return flat


def _to_pils(images) -> list:
    if isinstance(images, Tensor):
        batch = images[None] if images.dim() == 3 else images
        return [tensor_to_pil(im) for im in batch]
    if isinstance(images, (list, tuple)):
        return [tensor_to_pil(im) if isinstance(im, Tensor) else im for im in images]
    return [images]


def check_tracker(kind: str | list[str] | tuple[str, ...]) -> None:
    """Raise :class:`~psrl.config.ConfigError` (one line) when a tracker of ``kind`` needs a package that is not
    installed; checked before a run folder is made."""
    for name in tracker_names(kind):
        if name in _TRACKER_PACKAGES:
            module, extra = _TRACKER_PACKAGES[name]
            if importlib.util.find_spec(module) is None:
                raise ConfigError(f"run.tracker={name} needs the {module} package, which is not installed: "
                                  f"pip install '{extra}' (or run.tracker=jsonl)")


def repair_metrics(path: str | Path, *, keep_through: int | None = None) -> int:
    """Make ``metrics.jsonl`` a clean log: drop a torn (incomplete or unparsable) last line, and with
    ``keep_through`` every row whose ``step`` is past it. Rewritten atomically only when something changes.
    Returns the number of rows dropped."""
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
    text = Path(path).read_text()
    rows = jsonl_lines(path, text)
    if rows and isinstance(rows[-1][1], ValueError) and not text.endswith("\n"):
        rows.pop()  # the torn last line
    for where, row in rows:
        if isinstance(row, ValueError):
            raise ValueError(f"{where}: not valid JSON ({row})")
    return [row for _, row in rows]


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
