"""A finished run as a Hub model repository (``psrl push RUN_DIR --repo-id ...``, and ``run.push_to_hub`` at the end
of training).

What goes into the repository, from ``runs/<name>/``:

* ``pytorch_lora_weights.safetensors``: the LoRA of the newest complete checkpoint (its EMA weights when kept, the
  ones its evaluation used), loadable with diffusers' ``load_lora_weights``. When the run trained on a base with
  LoRAs fused into it (``model.lora.fuse``, PSR's SFT stage), this is the exact sum of those and the trained one
  (:func:`psrl.models.lora_merge.combine_lora_files`, as ``psrl lora combine``), so it loads on the plain base; the
  trained stage alone is ``rl_stage_lora.safetensors`` (``sft_stage_lora.safetensors`` for an SFT run);
* ``README.md``: the model card (:mod:`psrl.model_card`);
* ``psrl_config.yaml`` (the run's config, secret values as ``***``), ``metrics.jsonl``, and ``images/``: the
  before/after grid and the first and last evaluation grids from ``samples/``.

``huggingface_hub`` uploads it (``create_repo(exist_ok=True)`` + ``upload_folder``) with the token of ``HF_TOKEN``
or ``hf auth login``, never printed.
"""
from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from psrl.errors import PsrlError
from psrl.model_card import RunSummary, SampleImage, example_prompts, redact, render_model_card

logger = logging.getLogger(__name__)

WEIGHT_NAME = "pytorch_lora_weights.safetensors"
STAGE_WEIGHT_NAMES = {"grpo": "rl_stage_lora.safetensors", "sft": "sft_stage_lora.safetensors"}
_STEP_GRID = re.compile(r"^step-(\d+)\.png$")


@dataclass
class RunFiles:
    """A run's files to push and the summary its card is written from.

    Attributes:
        run_dir: the run folder.
        summary: the facts the model card states.
        lora: the trained LoRA file (the checkpoint's ``lora_ema/`` or ``lora/``).
        fused: ``(file, scale)`` of each LoRA fused under it; summed with it into the main file.
        images: ``(local file, path in the repository)`` of each gallery image.
    """

    run_dir: Path
    summary: RunSummary
    lora: Path
    fused: list = field(default_factory=list)
    images: list = field(default_factory=list)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def pick_samples(samples_dir: Path) -> list[Path]:
    """The gallery: ``before_after.png`` when the run wrote one, then the first and last evaluation grids
    (``step-N.png``, by step)."""
    if not samples_dir.is_dir():
        return []
    grids = sorted((int(m.group(1)), p) for p in samples_dir.iterdir() if (m := _STEP_GRID.match(p.name)))
    chosen = [samples_dir / "before_after.png"] if (samples_dir / "before_after.png").is_file() else []
    picks = [grids[0], grids[-1]] if len(grids) > 1 else grids
    for _, p in picks:
        if p not in chosen:
            chosen.append(p)
    return chosen


def summarize_run(run_dir: str | Path, *, fused_loras: list[str] | None = None) -> RunFiles:
    """Read what a push needs from ``run_dir``, checking it first.

    ``fused_loras``: files to use for the LoRAs the trained one records as fused under it (in its order), when
    they have moved since training; they are recognised by content when combined.

    Raises:
        PsrlError: not a run folder (no ``config.yaml``), no complete checkpoint, a fused LoRA that is gone, or
            ``fused_loras`` of the wrong length.
    """
    from psrl.models.lora import FUSED_METADATA_KEY, read_lora_file, resolve_lora_path
    from psrl.rl.checkpoint import latest_checkpoint
    from psrl.rl.tracking import read_metrics

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise PsrlError(f"{run_dir} is not a psrl run folder (no config.yaml); give runs/<name>")
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    except yaml.YAMLError as e:
        raise PsrlError(f"{run_dir / 'config.yaml'}: not valid YAML ({str(e).splitlines()[0]})") from None
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        raise PsrlError(f"{run_dir} has no complete checkpoint under checkpoints/; nothing to push")
    lora = resolve_lora_path(checkpoint)
    recorded = read_lora_file(lora)[2].get(FUSED_METADATA_KEY, [])
    if fused_loras is not None and len(fused_loras) != len(recorded):
        raise PsrlError(f"--fused-lora given {len(fused_loras)} time(s), but {lora} was trained on "
                        f"{len(recorded)} fused LoRA(s)")
    fused = []
    for i, entry in enumerate(recorded):
        path = Path(fused_loras[i]) if fused_loras is not None else Path(entry["path"])
        if not path.exists():
            raise PsrlError(f"{lora} was trained with {entry['path']} fused into its base, which is gone; pass "
                            "--fused-lora with a copy of it (recognised by content) to push the combined LoRA")
        fused.append((path, float(entry.get("scale", 1.0))))
    kind = "sft" if "sft" in config and "rewards" not in config else "grpo"
    env = _read_json(run_dir / "env.json")
    model_cfg = config.get("model") if isinstance(config.get("model"), dict) else {}
    model = env.get("model") if isinstance(env.get("model"), dict) else {
        "path": model_cfg.get("path"), "revision": model_cfg.get("revision"), "variant": model_cfg.get("variant"),
        "commit": None}
    step = int(_read_json(checkpoint / "state.json").get("step", 0))
    metrics = read_metrics(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").is_file() else []
    prompts = " | ".join(example_prompts(config, 4, sections=("eval",))) or "the eval prompts"
    images = []
    for p in pick_samples(run_dir / "samples"):
        m = _STEP_GRID.match(p.name)
        caption = (f"step {m.group(1)}: {prompts}" if m else f"before and after training: {prompts}")[:300]
        images.append((p, f"images/{p.name}", caption))
    summary = RunSummary(
        name=run_dir.name, kind=kind, config=redact(config), step=step, ema=lora.parent.name == "lora_ema",
        fused=[{"path": str(p), "scale": s} for p, s in fused], metrics=metrics, model=model,
        psrl_version=env.get("psrl"), weight_name=WEIGHT_NAME,
        stage_weight_name=STAGE_WEIGHT_NAMES[kind] if fused else None,
        images=[SampleImage(path=repo_path, caption=caption) for _, repo_path, caption in images])
    return RunFiles(run_dir=run_dir, summary=summary, lora=lora, fused=fused,
                    images=[(p, repo_path) for p, repo_path, _ in images])


def write_repo_folder(files: RunFiles, out: str | Path, repo_id: str, *, license: str | None = None) -> list[str]:
    """Write the repository's files into ``out`` (see the module docstring); returns their repository paths."""
    from psrl.models.lora_merge import combine_lora_files

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    s = files.summary
    if files.fused:
        combine_lora_files([p for p, _ in files.fused] + [files.lora], out / WEIGHT_NAME,
                           scales=[sc for _, sc in files.fused] + [1.0])
        shutil.copyfile(files.lora, out / s.stage_weight_name)
    else:
        shutil.copyfile(files.lora, out / WEIGHT_NAME)
    (out / "psrl_config.yaml").write_text(yaml.safe_dump(s.config, sort_keys=False))
    if (files.run_dir / "metrics.jsonl").is_file():
        shutil.copyfile(files.run_dir / "metrics.jsonl", out / "metrics.jsonl")
    for local, repo_path in files.images:
        (out / repo_path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local, out / repo_path)
    write_card(files, out, repo_id, license=license)
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())


def write_card(files: RunFiles, out: str | Path, repo_id: str, *, license: str | None = None) -> Path:
    """``out/README.md``: the model card for ``repo_id``."""
    path = Path(out) / "README.md"
    path.write_text(render_model_card(files.summary, repo_id, license=license), encoding="utf-8")
    return path


def push_run(run_dir: str | Path, repo_id: str, *, private: bool = False, license: str | None = None,
             fused_loras: list[str] | None = None, commit_message: str | None = None) -> tuple[str, str, list[str]]:
    """Push run ``run_dir`` to the Hub model repository ``repo_id`` (created when missing; a bare name goes to the
    token's namespace). Returns ``(repo_id, commit_url, files)``. What ``run.push_to_hub`` calls at the end of a run.

    Raises:
        PsrlError: what :func:`summarize_run` raises; the Hub offline, no token, a bad id, or a refused upload (one
            line each; the token never appears).
    """
    from psrl.hub import HubError, check_can_push, upload_model_folder

    files = summarize_run(run_dir, fused_loras=fused_loras)
    try:
        check_can_push(repo_id)
    except HubError as e:
        raise PsrlError(str(e)) from None
    message = commit_message or f"psrl: {files.summary.kind.upper()} LoRA of run {files.summary.name}, step " \
                                f"{files.summary.step}"
    with tempfile.TemporaryDirectory(prefix="psrl-push-") as tmp:
        written = write_repo_folder(files, tmp, repo_id, license=license)
        try:
            full_id, url = upload_model_folder(
                tmp, repo_id, private=private, commit_message=message,
                finalize=lambda full: write_card(files, tmp, full, license=license) if full != repo_id else None)
        except HubError as e:
            raise PsrlError(str(e)) from None
    logger.info("pushed %s to %s (%s)", files.run_dir, full_id, url)
    return full_id, url, written


__all__ = ["RunFiles", "STAGE_WEIGHT_NAMES", "WEIGHT_NAME", "pick_samples", "push_run", "summarize_run",
           "write_card", "write_repo_folder"]


def push_finished_run(trainer) -> None:
    """``run.push_to_hub``: upload a trainer's finished run (main process; the others wait). Called by ``psrl train``
    and ``psrl sft`` after training, so the trainers stay below the Hub layer.

    Raises:
        PsrlError: the push failed; the message says the training itself is saved and how to retry.
    """
    from psrl.rl import distributed as dist

    run = trainer.cfg.run
    if not getattr(run, "push_to_hub", False):
        return
    failure = None
    if trainer.is_main:
        repo = run.hub_model_id or trainer.run_dir.name
        try:
            push_run(trainer.run_dir, repo, private=run.hub_private_repo)  # logs where it went
        except PsrlError as e:
            failure = (f"training finished and is saved in {trainer.run_dir}, but the push failed: {e}; retry with "
                       f"psrl push {trainer.run_dir} --repo-id {repo}")
    failure = dist.broadcast_object(failure)
    if failure is not None:
        raise PsrlError(failure)
