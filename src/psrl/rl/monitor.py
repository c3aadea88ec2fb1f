"""A reward-hacking monitor: named alarms over a run's metrics, and what to do when one fires (psrl's own;
issue #17 section 1).

The Flow-GRPO family's trackers keep finding the same failure hours too late: the trained reward climbs while the
images degrade (crushed blacks under a darkness or OCR reward, over-saturation, grid artefacts, one image for every
noise). A *held-out* reward (``eval.rewards``: scored at evaluation, never trained on) and image statistics
(:mod:`psrl.rl.image_stats`, logged by :mod:`psrl.rl.eval_metrics`) see it; this module watches them.

The alarms are pure functions in the :data:`psrl.rl.alarms.ALARMS` registry, beside their config. The monitor
keeps the last ``cfg.window`` steps' metrics (older ones are not kept, so a run of any length saves a small state)
and every evaluation, runs the alarms on them, and fires each alarm name at most once per ``cfg.window``
evaluations (or steps, for step alarms), so one drift is not reported at every step.

The monitor's state (:meth:`TrainingMonitor.state_dict`, and the best held-out weights for ``rollback``) is saved
with each checkpoint and restored on ``--resume``, so a resumed run fires, cools down and acts exactly as the
uninterrupted one.

Actions (:data:`ACTIONS`): ``warn`` (log only), ``raise_beta`` (multiply the KL weight), ``stop`` (save, exit
non-zero) and ``rollback`` (restore the weights of the best evaluation by held-out reward, reset the optimizer
moments, lower the learning rate, continue).
"""
from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from psrl.fileio import write_text_atomic
from psrl.rl.alarms import (ALARMS, HELDOUT_PREFIX, STAT_PREFIX, STEP_ALARMS, Alarm, MonitorConfig, alarm_lines,
                            alarm_metrics, finite_number, heldout_eval_rewards, heldout_score, trained_eval_rewards)

logger = logging.getLogger(__name__)


def check_monitor_config(cfg: MonitorConfig, eval_cfg, trained_names: Sequence[str]) -> None:
    """What the monitor needs from the rest of the config, checked before a run starts.

    Raises:
        ValueError: a held-out reward that is also trained (``eval.rewards`` names must differ from ``rewards``
            and be unique), or ``rollback`` without ``eval.rewards`` and ``eval.every`` (nothing to rank by).
    """
    heldout = [r.key for r in eval_cfg.rewards]
    both = sorted(set(heldout) & set(trained_names))
    if both:
        raise ValueError(f"eval.rewards: {both} are trained rewards too; a held-out reward must not be trained on")
    if heldout and not eval_cfg.every:  # `--set eval.every=0` turns evaluation off; it should not need a second edit
        logger.warning("eval.rewards %s are not scored: eval.every is 0 (evaluation is off)", heldout)
    if len(set(heldout)) != len(heldout):
        raise ValueError(f"eval.rewards: names must be unique, got {heldout}")
    if cfg.uses("rollback") and not (heldout and eval_cfg.every):
        raise ValueError("monitor: action rollback restores the best evaluation by held-out reward; it needs "
                         f"eval.rewards and eval.every > 0 (got {len(heldout)} held-out reward(s), eval.every="
                         f"{eval_cfg.every})")


# ---------------------------------------------------------------------------------------------------------- actions
class MonitorStop(Exception):
    """Raised by the ``stop`` action; the trainer turns it into a saved, non-zero exit."""


def _warn(trainer, alarm: Alarm, cfg: MonitorConfig) -> str:
    return "warned"


def _raise_beta(trainer, alarm: Alarm, cfg: MonitorConfig) -> str:
    t = trainer.cfg.train
    before = t.beta
    # the loss reads train.beta at every pass and the reference is the LoRA-disabled model, so a beta raised
    # mid-run takes effect at the next update with nothing to rebuild
    t.beta = before * cfg.beta_factor if before > 0 else cfg.beta_floor
    return f"train.beta {before:g} -> {t.beta:g}"


def _stop(trainer, alarm: Alarm, cfg: MonitorConfig) -> str:
    raise MonitorStop(f"monitor alarm {alarm.name} at step {alarm.step}: {alarm.message}; stopping "
                      f"(monitor.action=stop)")


def _rollback(trainer, alarm: Alarm, cfg: MonitorConfig) -> str:
    monitor = trainer.monitor
    if monitor.best is None:
        return "no evaluation with a held-out reward to roll back to; continuing"
    step, score, saved = monitor.best
    with torch.no_grad():
        for p, s in zip(trainer.params, saved):
            p.copy_(s.to(p.device, p.dtype))
        # the EMA and the old policy follow the restored weights; the Adam moments were built on the hacked
        # trajectory and would push straight back along it, so they start again
        for holder in (trainer.ema, trainer.old_policy):
            if holder is not None:
                for s, p in zip(holder.shadow, trainer.params):
                    s.copy_(p.detach().to(s.dtype))
    trainer.optimizer.state.clear()
    trainer.last_eval = None  # the weights changed outside an update: the newest evaluation no longer describes them
    for group in trainer.optimizer.param_groups:
        group["lr"] *= cfg.lr_factor
    trainer.scheduler.base_lrs = [lr * cfg.lr_factor for lr in trainer.scheduler.base_lrs]
    return (f"restored the weights of step {step} (held-out {score:.4f}), optimizer moments reset, learning rate x "
            f"{cfg.lr_factor} -> {trainer.scheduler.base_lrs[0]:.3g}")


#: action name -> ``fn(trainer, alarm, cfg) -> str`` (what it did, for the log line)
ACTIONS: dict[str, Callable] = {"warn": _warn, "raise_beta": _raise_beta, "stop": _stop, "rollback": _rollback}


class TrainingMonitor:
    """Runs the registered alarms after every step, keeps the alarms raised, and the best held-out weights.

    Args:
        cfg: the ``monitor`` config.
        params: the trained parameters.
        evaluated: ``() -> tensors`` aligned with ``params``: the weights an evaluation scores (the EMA shadow when
            one is kept; default ``params``). ``rollback`` keeps a CPU copy of them at the best held-out evaluation
            and restores exactly those.
        log_path: where each alarm is appended as a JSON line (``<run_dir>/alarms.jsonl``), read by ``psrl report``.
    """

    def __init__(self, cfg: MonitorConfig, params: Sequence[torch.nn.Parameter] = (), *,
                 evaluated: Callable[[], Sequence[torch.Tensor]] | None = None, log_path: str | Path | None = None):
        self.cfg = cfg
        self.params = list(params)
        self.evaluated = evaluated if evaluated is not None else (lambda: self.params)
        self.log_path = Path(log_path) if log_path is not None else None
        self.steps: list[dict] = []  # the last cfg.window steps
        self.evals: list[dict] = []
        self.alarms: list[Alarm] = []
        self.best: tuple[int, float, list[torch.Tensor]] | None = None
        self._last_fired: dict[str, int] = {}
        self._num_steps = 0  # steps observed: the step alarms' clock
        self._replaying = False

    def observe(self, step: int, metrics: dict) -> list[Alarm]:
        """Record step ``step``'s metrics (an evaluation when they hold ``eval/*`` keys) and run the alarms.
        Returns the alarms that fired now (each logged as a warning and appended to ``alarms.jsonl``)."""
        if not self.cfg.enabled:
            return []
        row = {"step": step, **{k: v for k, v in metrics.items() if finite_number(v)}}
        evaluated = any(k.startswith("eval/") for k in row)
        if step > 0 or not evaluated:
            self.steps.append(row)
            del self.steps[:-self.cfg.window]
            self._num_steps += 1
        if evaluated:
            row = {k: v for k, v in row.items() if k == "step" or k.startswith("eval/")}
            self.evals.append(row)
            if not self._replaying:
                self._keep_best(row)
        fired = []
        for name in ALARMS.names():
            is_step = name in STEP_ALARMS
            if not is_step and not evaluated:
                continue
            clock = self._num_steps if is_step else len(self.evals)
            last = self._last_fired.get(name)
            if last is not None and clock - last < self.cfg.window:
                continue
            found = ALARMS.get(name)(self.steps, self.evals, self.cfg)
            if found:
                self._last_fired[name] = clock
                fired.extend(found)
        for alarm in fired if not self._replaying else ():
            logger.warning("ALARM %s at step %d: %s (action: %s)", alarm.name, alarm.step, alarm.message,
                           self.cfg.action_for(alarm.name))
            self._append(alarm)
        self.alarms.extend(fired)
        return fired

    def state_dict(self) -> dict:
        """Everything the next observations depend on, as JSON: the step window, the evaluations, the alarms
        raised, each alarm's last firing (on its clock) and the step count. The best held-out weights are tensors:
        :meth:`best_weights` saves them."""
        return {"steps": [dict(r) for r in self.steps], "evals": [dict(r) for r in self.evals],
                "alarms": [a.to_dict() for a in self.alarms], "last_fired": dict(self._last_fired),
                "num_steps": self._num_steps}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` (the step window cut to the current ``cfg.window``)."""
        self.steps = [dict(r) for r in state["steps"]][-self.cfg.window:]
        self.evals = [dict(r) for r in state["evals"]]
        self.alarms = [Alarm(a["name"], int(a["step"]), a["message"], float(a["value"])) for a in state["alarms"]]
        self._last_fired = {str(k): int(v) for k, v in state["last_fired"].items()}
        self._num_steps = int(state["num_steps"])

    def best_weights(self) -> "BestWeights":
        """The best held-out evaluation's weights as a checkpoint module (``state_dict`` / ``load_state_dict``)."""
        return BestWeights(self)

    def resume(self, rows: Sequence[dict], step: int) -> None:
        """For a checkpoint saved without the monitor's state (older psrl): rebuild the history of a run resumed at
        ``step`` from its logged ``metrics.jsonl`` rows (those up to ``step``), so the windows and cool-downs
        continue: the alarms are re-run without logging, writing or acting, and :meth:`forget_after` drops the
        abandoned future's alarm lines. Only what was logged is replayed (every ``train.log_every`` steps), and
        the best held-out weights are not in the rows: ``rollback`` ranks the evaluations from the resume on."""
        if not self.cfg.enabled:
            return
        self._replaying = True
        try:
            for r in rows:
                if isinstance(r.get("step"), int) and r["step"] <= step:
                    self.observe(r["step"], {k: v for k, v in r.items() if k != "step"})
        finally:
            self._replaying = False
        self.forget_after(step)

    def forget_after(self, step: int) -> None:
        """Drop the ``alarms.jsonl`` lines of steps after ``step`` (written by the run before it was resumed at
        ``step``: they belong to an abandoned future)."""
        if self.log_path is not None and self.log_path.is_file():
            kept = [x for x in self.log_path.read_text().splitlines()
                    if x.strip() and json.loads(x).get("step", 0) <= step]
            write_text_atomic(self.log_path, "".join(x + "\n" for x in kept))

    def _keep_best(self, row: dict) -> None:
        score = heldout_score(row)
        if not self.cfg.uses("rollback") or not math.isfinite(score):
            return
        if self.best is None or score > self.best[1]:
            self.best = (row["step"], score, [p.detach().cpu().clone() for p in self.evaluated()])

    def _append(self, alarm: Alarm) -> None:
        if self.log_path is None:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("a") as f:
            f.write(json.dumps(alarm.to_dict()) + "\n")

    def act(self, trainer, alarms: Sequence[Alarm]) -> list[str]:
        """Run each alarm's action on ``trainer``; returns what each did. ``stop`` raises :class:`MonitorStop`
        after the other actions ran."""
        done, stop = [], None
        for alarm in alarms:
            action = self.cfg.action_for(alarm.name)
            if action == "stop":
                stop = alarm
                continue
            what = ACTIONS[action](trainer, alarm, self.cfg)
            if action != "warn":
                logger.warning("monitor action %s on %s: %s", action, alarm.name, what)
            done.append(f"{alarm.name}: {action} ({what})")
        if stop is not None:
            ACTIONS["stop"](trainer, stop, self.cfg)
        return done


class BestWeights:
    """Checkpoint module (``monitor_best.pt``) of a monitor's best held-out evaluation: ``{"step": int, "score":
    float, "weights": [CPU tensors]}``, or ``{}`` when there is none yet."""

    def __init__(self, monitor: TrainingMonitor):
        self.monitor = monitor

    def state_dict(self) -> dict:
        best = self.monitor.best
        return {} if best is None else {"step": best[0], "score": best[1], "weights": list(best[2])}

    def load_state_dict(self, state: dict) -> None:
        self.monitor.best = (int(state["step"]), float(state["score"]), [t.clone() for t in state["weights"]]) \
            if state else None


# the alarm names (psrl.rl.alarms) stay importable from here, where the trainer and psrl report look for them
__all__ = ["ACTIONS", "ALARMS", "Alarm", "BestWeights", "HELDOUT_PREFIX", "MonitorConfig", "MonitorStop",
           "STAT_PREFIX", "TrainingMonitor", "alarm_lines", "alarm_metrics", "heldout_score", "heldout_eval_rewards",
           "trained_eval_rewards"]
