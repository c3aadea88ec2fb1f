"""The whole config of a ``psrl train`` run, its loader (YAML + ``--set`` overrides) and the derived batch sizes.

Layout of a run config (every section optional; defaults are the dataclass defaults)::

    model:     ModelConfig      (psrl.models.config)
    sampling:  SamplingConfig   (psrl.models.base)
    train:     TrainConfig      (psrl.rl.grpo_config)
    advantage: AdvantageConfig  (psrl.rl.grpo_config)
    rewards:   [{name, weight, args}, ...]
    data:      {records, data_root}
    eval:      {records, data_root, every, num_steps, height, width, resolution, guidance_scale, seed, rewards,
                group_size, statistics, embedder, at_start}
    run:       {name, output_dir, tracker (alias report_to), wandb_project, push_to_hub, ...}
    monitor:   MonitorConfig    (psrl.rl.monitor)
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from psrl.config import ConfigError, beside, check_range, load_config
from psrl.data.records import Record, load_records, local_root, misplaced_data_root, records_root
from psrl.sampling import SamplingConfig
from psrl.models.config import ModelConfig
from psrl.rl.grpo_config import AdvantageConfig, TrainConfig
from psrl.rl.monitor import MonitorConfig, check_monitor_config

logger = logging.getLogger(__name__)

DEFAULT_CONFIG_NAME = "tiny_flux.yaml"

TrackerName = Literal["jsonl", "tensorboard", "wandb"]


@dataclass
class RewardSpec:
    """One reward of the run.

    Attributes:
        name: a registered reward (``psrl reward list``) or ``module:attr``.
        weight: its weight in the aggregation.
        args: constructor arguments of the reward.
        device: where this reward's models run (``cpu``, ``cuda``, ``cuda:1``); default (null) the policy's device.
            Images are moved there and scores come back, e.g. a VLM judge on a GPU of its own as PaCo runs it.
        label: the name its metrics (``reward/<label>/mean``), logs and the monitor use; default (null) ``name``.
            Two entries of one reward need labels, e.g. ``pocket_subjects`` with ``score: identity_dense`` and
            with ``score: fidelity``.
    """

    name: str = ""
    weight: float = 1.0
    args: dict[str, Any] = field(default_factory=dict)
    device: str | None = None
    label: str | None = None

    @property
    def key(self) -> str:
        """``label`` when set, else ``name``: what this reward is called in metrics, logs and alarms."""
        return self.label or self.name

    def __post_init__(self):
        if not self.name:
            raise ValueError("each reward needs a 'name'")
        if self.device is not None:
            from psrl.rl.reward_calls import reward_device

            try:  # the kind of device here; whether this machine has it is checked when the reward is built
                reward_device(self.device, cuda_count=1 << 30)
            except ValueError as e:
                raise ValueError(f"device {e}") from None


@dataclass
class DataConfig:
    """Training prompts. Every record (and every eval record) is checked before the run starts: subject count
    against the policy's limit, each reference (and SFT target) exists, decodes and is at least
    :data:`psrl.images.MIN_SIDE` pixels on its short side; by default one error lists every bad record.

    Attributes:
        records: a JSONL records file (relative paths resolve against the config's folder) or a list of prompts.
        data_root: folder the records' image paths are relative to (default: the records file's folder), or an
            hf://<org>/<dataset>[@revision][/folder] fetched before the run starts.
        skip_invalid: train on the valid records and log how many were skipped, instead of stopping.
    """

    records: str | list[str] | None = None
    data_root: str | None = None
    skip_invalid: bool = False

    def __post_init__(self):
        if isinstance(self.records, list) and not all(isinstance(p, str) and p.strip() for p in self.records):
            raise ValueError(f"data.records: every inline prompt must be a non-empty string, got {self.records!r}")


@dataclass
class EvalConfig:
    """Fixed evaluation prompts generated with the ODE (EMA weights when kept) every ``every`` steps, saved as an
    image grid under ``runs/<name>/samples/`` and scored with the training rewards.

    Attributes:
        records: eval records (a JSONL path or a list of prompts); fixed for the whole run.
        data_root: where the eval records' subject images live (default: data.data_root).
        every: evaluate every this many steps (0 disables evaluation).
        num_steps: ODE steps of the eval samples.
        height, width: eval size (default: the sampling size).
        resolution: sets both sides (PaCo's resolution-decoupled evaluation).
        guidance_scale: eval guidance (default: the sampling guidance).
        seed: seed of the eval noise (the same images every evaluation).
        rewards: held-out rewards, each {name, args} (a registered reward or ``module:attr``; weight unused):
            scored on the eval images and logged as ``eval/heldout/<name>``, never trained on; the monitor's
            reward_hacking alarm compares them with the trained rewards.
        group_size: eval images per record (seeds fixed for the run); 2 or more logs within-group diversity.
        statistics: log the eval image statistics (``eval/stats/*``: colour entropy, saturation, dark and bright
            fraction, edge density, diversity; psrl.rl.eval_metrics).
        embedder: what diversity is measured on: ``pixels`` (16x16 area-averaged pixels, no model) or an embedder
            spec such as ``{kind: dinov2, path: facebook/dinov2-base}`` (dinov2, dino_vit or clip).
        at_start: also evaluate the untrained policy before the first step (logged as step 0, grid
            ``samples/step-0.png``): the monitor's baseline and the first grid of ``psrl report``.
    """

    records: str | list[str] | None = None
    data_root: str | None = None
    every: int = 0
    num_steps: int = 28
    height: int | None = None
    width: int | None = None
    resolution: int | None = None
    guidance_scale: float | None = None
    seed: int = 0
    rewards: list[RewardSpec] = field(default_factory=list)
    group_size: int = 1
    statistics: bool = True
    embedder: str | dict[str, Any] = "pixels"
    at_start: bool = False

    def __post_init__(self):
        check_range(self, ("group_size", "num_steps", "height", "width", "resolution"), 1, section="eval")
        check_range(self, "every", 0, section="eval")
        if self.every and not self.records:
            raise ValueError("eval.every > 0 needs eval.records (a records path or a list of prompts)")


@dataclass
class RunSection:
    """Where the run goes: ``<output_dir>/<name>/``.

    Attributes:
        name: the run folder's name (default: a timestamp); a taken name gets the next free ``name-<n>``.
        output_dir: parent folder of runs.
        tracker: where metrics (and eval images) go: jsonl, tensorboard, wandb, or a list of them (TRL's
            report_to); metrics.jsonl is always written, the others are accelerate trackers.
        wandb_project: the W&B project.
        dump_rank_data: write every process's view of each step to rank_data/ (to check a distributed run).
        push_to_hub: upload the final LoRA with a model card when the run finishes (as psrl push; the token from
            HF_TOKEN or hf auth login, checked before the run starts).
        hub_model_id: the Hub repository (org/name; default: the run's name in the token's namespace).
        hub_private_repo: create the repository private.
    """

    name: str | None = None
    output_dir: str = "runs"
    tracker: TrackerName | list[TrackerName] = "jsonl"
    wandb_project: str = "psrl"
    dump_rank_data: bool = False
    push_to_hub: bool = False
    hub_model_id: str | None = None
    hub_private_repo: bool = False

    def __post_init__(self):
        names = [self.tracker] if isinstance(self.tracker, str) else list(self.tracker)
        if not names:
            raise ValueError("run.tracker must name at least one tracker (jsonl is always written)")
        self.tracker = list(dict.fromkeys(names))  # one list, duplicates dropped, the order kept
        if self.hub_model_id is not None:
            from psrl.hub import HubError, check_repo_id

            try:
                check_repo_id(self.hub_model_id)
            except HubError as e:
                raise ValueError(f"run.hub_model_id: {e}") from None
        if self.name is not None and (not self.name or "/" in self.name or self.name in (".", "..")):
            raise ValueError(f"run.name must be a plain folder name, got {self.name!r}")


@dataclass
class RunConfig:
    """A ``psrl train`` run.

    Attributes:
        model: the policy.
        sampling: how rollouts are sampled.
        train: optimisation and the shape of a step.
        advantage: how rewards become advantages.
        rewards: the rewards, each {name, weight, args}.
        data: the training records.
        eval: periodic evaluation.
        run: where the run goes and how it is tracked.
        monitor: the reward-hacking monitor: alarms and their actions.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    advantage: AdvantageConfig = field(default_factory=AdvantageConfig)
    rewards: list[RewardSpec] = field(default_factory=list)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunSection = field(default_factory=RunSection)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)

    def __post_init__(self):
        if not self.rewards:
            raise ValueError("rewards: at least one reward is needed, e.g. [{name: mean_color, weight: 1.0}]")
        if not self.data.records:
            raise ValueError("data.records is required: a records JSONL path or a non-empty list of prompts")
        names = [r.key for r in self.rewards]
        if len(set(names)) != len(names):
            raise ValueError(f"rewards: names must be unique, got {names}; give repeated rewards a label "
                             f"(rewards.<i>.label)")
        check_monitor_config(self.monitor, self.eval, names)
        for args, key in [(self.model.args, "model.args"),
                          *((r.args, f"rewards.{i}.args") for i, r in enumerate(self.rewards)),
                          *((r.args, f"eval.rewards.{i}.args") for i, r in enumerate(self.eval.rewards))]:
            if why := misplaced_data_root(args, key):
                raise ValueError(why)


def run_records(cfg, which: str = "data") -> list[Record]:
    """A run's training (``which="data"``) or evaluation (``"eval"``) records, resolved (a JSONL path, or inline
    prompts with ids ``prompt-<i>``): the one place a run's records meet their data roots. Training images resolve
    under ``data.data_root``, else the records file's folder; eval images under ``eval.data_root``, else that
    training root (Customized-GRPO evaluates on DreamBench while training on SynCD: its own root). ``cfg``: a
    :class:`RunConfig` or an SFT config (``data`` only).

    Raises:
        RecordError: an unreadable file, an image path outside its root, or no records.
    """
    # an hf:// root is fetched here so that its error names the config field (data.data_root / eval.data_root)
    train_root = (local_root(cfg.data.data_root, what="data.data_root") if cfg.data.data_root
                  else records_root(cfg.data.records))
    if which == "data":
        return load_records(cfg.data.records, train_root, what="data.records")
    eval_root = local_root(cfg.eval.data_root, what="eval.data_root") if cfg.eval.data_root else train_root
    return load_records(cfg.eval.records, eval_root, what="eval.records")


def default_config_text() -> str:
    """The embedded default config (tiny FLUX on the CPU), shipped as package data."""
    return resources.files("psrl").joinpath("configs", DEFAULT_CONFIG_NAME).read_text()


def load_run_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Load a run config from YAML (the embedded default when ``path`` is None) with dotted ``--set`` overrides.

    Relative ``model.path``/``data.records``/``data.data_root``/``eval.records``/``eval.data_root`` paths in a file
    resolve against the file's folder (so configs can ship next to their data and weights) unless they exist
    relative to the working directory (``model.path: tiny`` is built in code, never a folder).
    """
    default = None if path is not None else yaml.safe_load(default_config_text()) or {}
    paths = ("data.records", "data.data_root", "eval.records", "eval.data_root")
    cfg = load_config(RunConfig, path, overrides, default, paths=paths,
                      default_name=f"embedded default {DEFAULT_CONFIG_NAME}")
    if path is not None and cfg.model.path != "tiny":
        cfg.model.path = beside(cfg.model.path, path)
    return cfg


@dataclass(frozen=True)
class DerivedSizes:
    """Batch arithmetic of one GRPO step, per process unless named ``global``."""

    num_processes: int
    images_per_step: int
    images_per_process: int
    rollout_batches: int
    micro_batches: int
    updates_per_step: int

    def describe(self) -> str:
        return (f"{self.images_per_step} images per step ({self.images_per_process} per process x "
                f"{self.num_processes}), {self.rollout_batches} rollout batches and {self.micro_batches} training "
                f"micro-batches per process per inner epoch, {self.updates_per_step} optimizer updates per step")


def derive_sizes(train: TrainConfig, num_processes: int) -> DerivedSizes:
    """Compute and check the step's batch arithmetic; a :class:`ConfigError` names the keys that do not divide."""
    images = train.groups_per_step * train.group_size
    if images % num_processes:
        raise ConfigError(
            f"train.groups_per_step * train.group_size = {train.groups_per_step} * {train.group_size} = {images} "
            f"images per step do not split over {num_processes} processes; make it a multiple of {num_processes}")
    per_process = images // num_processes
    if per_process % train.sample_batch_size:
        raise ConfigError(
            f"{per_process} images per process (train.groups_per_step * train.group_size / {num_processes} "
            f"processes) is not a multiple of train.sample_batch_size={train.sample_batch_size}")
    micro = per_process // train.train_batch_size
    if micro % train.gradient_accumulation:
        raise ConfigError(
            f"{micro} training micro-batches per process (images per process {per_process} / "
            f"train.train_batch_size {train.train_batch_size}) is not a multiple of "
            f"train.gradient_accumulation={train.gradient_accumulation}; every update must see the same number of "
            "micro-batches")
    return DerivedSizes(
        num_processes=num_processes,
        images_per_step=images,
        images_per_process=per_process,
        rollout_batches=per_process // train.sample_batch_size,
        micro_batches=micro,
        updates_per_step=micro // train.gradient_accumulation * train.num_inner_epochs,
    )
