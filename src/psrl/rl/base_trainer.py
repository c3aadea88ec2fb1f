"""The base every psrl trainer shares (GRPO, SFT, and the reward-model trainer): the accelerator, seeding, the
optimizer and LR schedule, start-up checks, the run directory, checkpoints and exact resume, graceful stop on
SIGINT/SIGTERM, tracking and the log/save loop. A subclass supplies its data and its step.

Order of start-up, so that a bad run fails before it costs anything or leaves a folder behind:
config-level checks (tracker package, ``hf://`` data roots fetched, ...) ->
:meth:`setup_data` -> policy -> :meth:`setup_policy` (checks that
need the policy: records against its limits, resolutions it can generate) -> optimizer -> :meth:`setup_training`
-> the run directory (claimed atomically) -> resume.

The loop (:meth:`train`) runs :meth:`run_step` for each step, then :meth:`after_step` (evaluation), checks the
weights are finite, logs one line with steps/s and the ETA, writes ``metrics.jsonl`` and saves checkpoints
(every ``save_every`` steps, every ``save_every_minutes``, at the end, and when stopped). A subclass may call
:meth:`stop_point` inside its step at points where the weights have not changed yet: a stop requested there
abandons the step and saves the state from its start, so a preempted run loses at most the step in progress.
"""
from __future__ import annotations

import logging
import math
import random
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import yaml
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from psrl.config import to_dict
from psrl.errors import ConfigError, PsrlError
from psrl.rl import checkpoint as ckpt
from psrl.rl import distributed as dist
from psrl.rl.fsdp import shard_policy
from psrl.rl.optim import clip_gradients, make_optimizer
from psrl.rl.signals import EXIT_CODES, StopSignals, TrainingStopped
from psrl.rl.tracking import Tracker, check_tracker

logger = logging.getLogger(__name__)


class StepAbandoned(Exception):
    """Raised inside a step, before any weight changed, to end the run cleanly: the trainer saves the state from
    the step's start and raises :class:`TrainingStopped` with ``message`` and ``exit_code``."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class BaseTrainer:
    """Shared machinery of psrl's trainers.

    Args:
        cfg: the run config; it has ``model``, ``run`` and the optimisation section ``args``.
        args: the optimisation section (``cfg.train`` for GRPO, ``cfg.sft`` for SFT): ``max_steps``, ``seed``,
            ``lr``, ``betas``, ``weight_decay``, ``adam_eps``, ``lr_warmup_steps``, ``optimizer``, ``device``,
            ``mixed_precision``, ``save_every``, ``save_every_minutes``, ``keep_last``, ``log_every``.
        policy: an already built policy (tests, notebooks); else ``build_policy(cfg.model)``.
        resume: continue from the newest complete checkpoint of ``run.output_dir/run.name``.
        progress: a tqdm bar on the main process; None (default): only when stderr is a terminal, so log files
            get the plain per-step lines (steps/s and ETA) without bar redraws.

    Raises:
        ConfigError, RecordError, PsrlError: a one-line reason, before the run directory exists.
    """

    name = "train"  # the bar's label and the default run-name prefix ("" for GRPO)
    run_prefix = ""

    def __init__(self, cfg, args, *, policy=None, resume: bool = False, progress: bool | None = None):
        self.cfg = cfg
        self.args = args
        self.resume = resume
        self.progress = wants_progress(progress)
        if resume and not cfg.run.name:
            raise PsrlError("--resume needs the run's name (run.name or --run-name) to find its checkpoints")
        check_tracker(cfg.run.tracker)
        self.full_finetune = check_full_finetune(cfg, args)
        if getattr(cfg.run, "push_to_hub", False):
            _check_push(cfg.run.hub_model_id or cfg.run.name or "run")
        self.accelerator = dist.make_accelerator(args.device, args.mixed_precision)
        self.is_main = self.accelerator.is_main_process
        self.setup_data()
        # identical initialisation on every process (then broadcast to be certain)
        random.seed(args.seed)
        torch.manual_seed(args.seed)
        if policy is None:
            from psrl.models.factory import build_policy

            policy = build_policy(cfg.model, self.accelerator.device)
        self.policy = policy
        self.setup_policy()
        if self.full_finetune:
            from psrl.models.flow_policy import unwrap_module

            unwrap_module(policy.module).requires_grad_(True)
        shard_policy(self.accelerator, policy, cfg)  # launched with accelerate's FSDP plugin: shard the frozen base
        self.params = list(policy.trainable_parameters())
        if not self.params:
            raise PsrlError("the policy has no trainable parameters (is LoRA configured?)")
        if self.full_finetune:
            logger.info("full-parameter training: %d tensors, %.2fM weights of the denoiser", len(self.params),
                        sum(p.numel() for p in self.params) / 1e6)
        self.named_params = ckpt.named_trainable(policy.module, self.params)
        dist.broadcast_parameters(self.params)
        self.optimizer = make_optimizer(self.params, args.optimizer, lr=args.lr, betas=args.betas,
                                        weight_decay=args.weight_decay, eps=args.adam_eps)
        warmup = args.lr_warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda n: min(1.0, (n + 1) / warmup) if warmup else 1.0)
        self.ema = None
        self.setup_training()
        self.run_dir = ckpt.make_run_dir(cfg, resume=resume, is_main=self.is_main,
                                         num_processes=self.accelerator.num_processes,
                                         default_prefix=self.run_prefix)
        self.start_step = 0
        self.updates = 0
        if resume:
            self._resume()
        self.tracker = None
        self.history: list[dict] = []
        self._stop: StopSignals | None = None
        self._step_rng: dict | None = None

    # ------------------------------------------------------------------ hooks
    def setup_data(self) -> None:
        """Load what needs no model (records); raise for anything wrong with it."""

    def setup_policy(self) -> None:
        """Checks and settings that need the built policy (records against its limits, sizes it can generate)."""

    def setup_training(self) -> None:
        """Everything else the step needs (rewards, EMA, samplers), built before the run directory."""

    def run_step(self, step: int) -> dict:  # pragma: no cover - abstract
        """One step (0-based); returns its metrics (identical on every process)."""
        raise NotImplementedError

    def before_loop(self) -> None:
        """Runs once before the first step (after the tracker exists)."""

    def after_step(self, done: int, metrics: dict) -> None:
        """Runs after step ``done`` (1-based) on every process; may add to ``metrics`` (evaluation)."""

    def describe(self) -> str:
        """One line logged at the start: what one step does."""
        return ""

    def step_summary(self, metrics: dict) -> str:
        """The step's part of the log line."""
        return ""

    def extra_state(self) -> dict:
        """JSON-able state saved with each checkpoint (beside step and updates) and given back to
        :meth:`load_extra_state` on resume: everything that changes during a run and decides later steps."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        """Restore what :meth:`extra_state` saved; ``state`` is the checkpoint's whole ``state.json``. A key an
        older checkpoint lacks keeps its start-of-run default (say so in a log line)."""

    def checkpoint_modules(self) -> dict:
        """``{name: object with state_dict()/load_state_dict()}`` saved as ``name.pt`` with each checkpoint and
        restored on resume (e.g. the old policy)."""
        return {}

    def optional_checkpoint_modules(self) -> set[str]:
        """Names in :meth:`checkpoint_modules` an older checkpoint may lack (they then keep their fresh state)."""
        return set()

    def postfix(self, metrics: dict) -> dict:
        """The progress bar's postfix."""
        return {}

    # ------------------------------------------------------------------ helpers for subclasses
    def log_images(self, name: str, images, step: int) -> None:
        """Log a PIL image, a ``[3, H, W]`` / ``[B, 3, H, W]`` tensor in [0, 1] or a list of PIL images to the
        run's image trackers (TensorBoard, W&B) at ``step``; nothing on other processes or before the tracker
        exists. The caller saves the PNG itself."""
        if self.tracker is not None:
            self.tracker.log_images(name, images, step)

    def autocast(self):
        return self.accelerator.autocast() if self.args.mixed_precision != "no" else nullcontext()

    def apply_update(self) -> float:
        """One optimizer update from the gradients accumulated so far, the same for every trainer: averaged over
        processes (one all-reduce, :func:`psrl.rl.distributed.average_gradients`), clipped to ``max_grad_norm``,
        optimizer and LR schedule stepped, gradients cleared, ``updates`` counted, the EMA (when kept) updated.
        Returns the global gradient norm before clipping (float, may be inf/NaN: the caller's health check reads
        it)."""
        dist.average_gradients(self.params)
        norm = clip_gradients(self.params, self.args.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.updates += 1
        if self.ema is not None:
            self.ema.after_update()
        return norm

    def stop_point(self) -> None:
        """Call inside a step where the weights have not changed yet: a stop signal received by any process
        abandons the step (collective: every process must call it at the same point)."""
        if self._stop is not None:
            sig = self._stop.requested()
            if sig:
                raise StepAbandoned(_stopped_message(sig), EXIT_CODES[sig])

    # ------------------------------------------------------------------ resume and save
    def _resume(self) -> None:
        if self.is_main:
            ckpt.clean_leftovers(self.run_dir)
        path = ckpt.latest_checkpoint(self.run_dir)
        if path is None:
            raise PsrlError(f"--resume: no complete checkpoint under {self.run_dir / ckpt.CHECKPOINTS}")
        state = ckpt.load_checkpoint(path, named_params=self.named_params, optimizer=self.optimizer,
                                     scheduler=self.scheduler, ema=self.ema,
                                     process_index=self.accelerator.process_index,
                                     modules=self.checkpoint_modules(),
                                     optional=self.optional_checkpoint_modules())
        self.start_step = int(state["step"])
        self.updates = int(state.get("updates", 0))
        self.load_extra_state(state)
        logger.info("resumed from %s (step %d)", path, self.start_step)

    def save(self, step: int, *, rng: dict | None = None) -> Path:
        """Checkpoint ``step`` (every process calls this). ``rng``: the RNG state to record instead of the
        current one (an abandoned step saves the state from its start)."""
        path = ckpt.save_checkpoint(
            self.run_dir, step, policy=self.policy, named_params=self.named_params, optimizer=self.optimizer,
            scheduler=self.scheduler, ema=self.ema, config_yaml=yaml.safe_dump(to_dict(self.cfg), sort_keys=False),
            state={"updates": self.updates, "num_processes": self.accelerator.num_processes, **self.extra_state()},
            process_index=self.accelerator.process_index, barrier=dist.barrier, keep_last=self.args.keep_last,
            rng=rng, modules=self.checkpoint_modules(), full=self.full_finetune)
        self._last_save = time.monotonic()
        return path

    def _save_due(self, done: int) -> bool:
        a = self.args
        if done == a.max_steps or (a.save_every and done % a.save_every == 0):
            return True
        if a.save_every_minutes:
            due = time.monotonic() - self._last_save >= a.save_every_minutes * 60
            return bool(dist.broadcast_object(due))  # rank 0's clock decides, so all ranks save together
        return False

    # ------------------------------------------------------------------ loop
    def train(self) -> list[dict]:
        """Run to ``max_steps`` from the resumed step; returns the per-step metrics.

        Raises:
            TrainingStopped: after a stop signal (exit code 130/143) or a step that could not run (1), once the
                checkpoint is written.
            PsrlError: non-finite weights (nothing saved for that step), a failed checkpoint write.
        """
        a = self.args
        logger.info("psrl %s: %s; run dir %s", self.name, self.describe(), self.run_dir)
        if self.is_main:
            self.tracker = Tracker(self.run_dir, self.cfg.run.tracker, config=to_dict(self.cfg),
                                   run_name=self.cfg.run.name, wandb_project=self.cfg.run.wandb_project,
                                   resume_step=self.start_step if self.resume else None)
        bar = None
        if self.progress and self.is_main:
            bar = tqdm(total=a.max_steps, initial=self.start_step, desc=self.name, unit="step")
        self._last_save = time.monotonic()
        t_start, saved = time.monotonic(), self.start_step
        try:
            # while the bar is drawn, log lines go through tqdm.write so they print above it instead of tearing it
            logs_above = logging_redirect_tqdm(tqdm_class=type(bar)) if bar is not None else nullcontext()
            with StopSignals() as stop, logs_above:
                self._stop = stop
                self.before_loop()
                for step in range(self.start_step, a.max_steps):
                    self._step_rng = ckpt.rng_state()
                    try:
                        metrics = self.run_step(step)
                    except StepAbandoned as e:
                        self.save(step, rng=self._step_rng)
                        raise TrainingStopped(f"{e} at step {step} of {a.max_steps}; saved checkpoint "
                                              f"{ckpt.step_dir(self.run_dir, step)}; continue with --resume",
                                              e.exit_code) from None
                    done = step + 1
                    self.after_step(done, metrics)
                    ckpt.check_finite(self.named_params, done)
                    self.history.append(metrics)
                    rate = (done - self.start_step) / max(time.monotonic() - t_start, 1e-9)
                    if self.is_main:
                        logger.info("step %d/%d  %s  (%.2f steps/s, ETA %s)", done, a.max_steps,
                                    self.step_summary(metrics), rate, format_duration((a.max_steps - done) / rate))
                    if self.tracker is not None and (done % a.log_every == 0 or done == a.max_steps):
                        self.tracker.log(metrics, done)
                    # the health check may act on the state (the monitor raises beta, rolls back): it runs before
                    # the save, so a checkpoint holds the state the next step starts from
                    try:
                        self.check_health(done, metrics)
                    except StepAbandoned as e:
                        self.save(done)
                        raise TrainingStopped(f"{e}; saved checkpoint {ckpt.step_dir(self.run_dir, done)}",
                                              e.exit_code) from None
                    if self._save_due(done):
                        self.save(done)
                        saved = done
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(self.postfix(metrics))
                    sig = stop.requested()
                    if sig:
                        if saved != done:
                            self.save(done)
                        raise TrainingStopped(f"{_stopped_message(sig)} after step {done} of {a.max_steps}; saved "
                                              f"checkpoint {ckpt.step_dir(self.run_dir, done)}; continue with "
                                              "--resume", EXIT_CODES[sig])
        finally:
            self._stop = None
            if bar is not None:
                bar.close()
            if self.tracker is not None:
                self.tracker.close()
        # run.push_to_hub is not done here: psrl.push.push_finished_run reads LoRA files and checkpoints (models, rl),
        # so it sits above rl and cannot be imported from here; psrl train and psrl sft each call it after train()
        return self.history

    def check_health(self, done: int, metrics: dict) -> None:
        """Called after each step is logged, before its checkpoint is saved when due (what it changes is saved);
        raise :class:`StepAbandoned` to end the run (the trainer saves step ``done`` first)."""


def wants_progress(progress: bool | None, stream=None) -> bool:
    """``progress`` as given, or when None whether ``stream`` (default ``sys.stderr``) is a terminal."""
    if progress is not None:
        return bool(progress)
    stream = sys.stderr if stream is None else stream
    return bool(getattr(stream, "isatty", lambda: False)())


def check_full_finetune(cfg, args) -> bool:
    """Whether the run trains every weight of the denoiser (``model.lora: null``), checked before anything is
    built: the weights must be float32 (AdamW updates of bf16/fp16 weights round away), and a KL penalty
    (``train.beta > 0``) needs a frozen reference that full fine-tuning does not keep (LoRA runs use the base with
    the adapter off), so it must be 0.

    Raises:
        ConfigError: one line naming the field and value.
    """
    model = getattr(cfg, "model", None)
    if model is None or not hasattr(model, "lora") or model.lora is not None:
        return False
    if getattr(model, "dtype", "float32") != "float32":
        raise ConfigError(f"model.dtype: {model.dtype!r} with model.lora: null (full-parameter training) would "
                          "update low-precision weights; use model.dtype: float32 (and mixed_precision for speed)")
    beta = float(getattr(args, "beta", 0.0))
    if beta > 0:
        raise ConfigError(f"train.beta: {beta} needs a frozen KL reference, and full-parameter training "
                          "(model.lora: null) keeps none; set train.beta: 0 or train a LoRA")
    return True


def _check_push(repo_id: str) -> None:
    """``run.push_to_hub`` must be able to work before hours are spent: a valid id, the Hub reachable, a token."""
    from psrl.hub import HubError, check_can_push

    try:
        check_can_push(repo_id)
    except HubError as e:
        raise ConfigError(f"run.push_to_hub: {e}") from None


def _stopped_message(sig: int) -> str:
    return f"stopped by {signal.Signals(sig).name}"


def format_duration(seconds: float) -> str:
    """``h:mm:ss`` (``m:ss`` under an hour) of ``seconds`` rounded, a negative as 0; ``?`` when not finite."""
    if not math.isfinite(seconds):
        return "?"
    h, rem = divmod(int(round(max(0.0, seconds))), 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


__all__ = ["BaseTrainer", "StepAbandoned", "check_full_finetune", "format_duration", "wants_progress"]
