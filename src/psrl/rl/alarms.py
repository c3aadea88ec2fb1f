"""The reward-hacking monitor's alarm rules and their thresholds (:class:`MonitorConfig`; :mod:`psrl.rl.monitor`
runs the rules and acts): pure functions over a run's logged metrics, in the :data:`ALARMS` registry::

    alarm(steps: list[dict], evals: list[dict], cfg: MonitorConfig) -> list[Alarm]

``steps`` are the metrics of the last ``cfg.window`` steps (each with ``"step"``), ``evals`` the evaluations so far
(the ``eval/*`` keys and ``"step"`` of the steps that evaluated, step 0 first when the trainer evaluates before
training). An alarm looks at the newest entry and returns what it finds there; the cool-down between two firings
of one alarm is the monitor's. A rule is added with one ``@ALARMS.register("name")``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from psrl.config import check_range
from psrl.registry import Registry
from psrl.rl.image_stats import IMAGE_STATS

#: keys of :mod:`psrl.rl.eval_metrics`: a trained reward's eval mean, a held-out reward's, the image statistics
TRAINED_PREFIX, TRAINED_SUFFIX = "eval/", "/mean"
HELDOUT_PREFIX = "eval/heldout/"
STAT_PREFIX = "eval/stats/"
DIVERSITY_KEY = "eval/stats/diversity"


ActionName = Literal["warn", "raise_beta", "stop", "rollback"]

_DEFAULT_DRIFT = {"dark_fraction": 0.3, "bright_fraction": 0.3, "saturation": 0.3, "color_entropy": 2.0,
                  "edge_density": 0.3}


# alike on purpose: a typed field list, the shape of every config section
@dataclass
class MonitorConfig:
    """The reward-hacking monitor (psrl.rl.monitor): named alarms on the eval metrics and the step metrics, and the
    action each one takes. Eval alarms need ``eval.every > 0``; the held-out alarm needs ``eval.rewards``; the
    diversity alarm needs ``eval.group_size >= 2``. An alarm whose metrics are absent stays silent.

    Attributes:
        enabled: run the monitor at all.
        action: what every alarm does unless ``actions`` names it: ``warn`` (a log line, the ``monitor/alarm/<name>``
            metric and a line in the final table), ``raise_beta`` (multiply train.beta by ``beta_factor``; from 0 it
            becomes ``beta_floor``), ``stop`` (save a checkpoint and exit 1), ``rollback`` (restore the weights of
            the evaluation with the best mean held-out reward, reset the optimizer moments, multiply the learning
            rate by ``lr_factor`` and continue; needs eval.rewards).
        actions: per-alarm overrides ``{alarm name: action}`` (names: reward_hacking, diversity_collapse,
            image_stat_drift, kl_runaway, clipfrac_runaway).
        window: evaluations compared by the held-out alarm (the newest against the one ``window`` evaluations
            earlier); also the cool-down, in evaluations (steps for the step alarms), before an alarm fires again.
        hack_rise: the trained reward's eval mean must have risen by more than this over the window (its units).
        hack_drop: and a held-out reward's eval mean must have fallen by more than this (its units).
        diversity_fraction: alarm when within-group diversity falls below this fraction of its first value.
        stat_drift: ``{statistic: largest absolute change from its first value}`` for the eval image statistics
            (dark_fraction, bright_fraction, saturation, edge_density: fractions in [0, 1]; color_entropy: bits).
        max_kl: alarm when the mean ``approx_kl`` over the last ``window`` steps exceeds this (0 disables; the
            default 0.1 is ten times the target_kl PPO implementations commonly stop at).
        max_clipfrac: alarm when the mean ``clipfrac`` over the last ``window`` steps exceeds this (0 disables).
        beta_factor: raise_beta multiplies train.beta by this.
        beta_floor: raise_beta's beta when train.beta was 0.
        lr_factor: rollback multiplies the learning rate by this.
    """

    enabled: bool = True
    action: ActionName = "warn"
    actions: dict[str, ActionName] = field(default_factory=dict)
    window: int = 2
    hack_rise: float = 0.0
    hack_drop: float = 0.01
    diversity_fraction: float = 0.5
    stat_drift: dict[str, float] = field(default_factory=lambda: dict(_DEFAULT_DRIFT))
    max_kl: float = 0.1
    max_clipfrac: float = 0.5
    beta_factor: float = 2.0
    beta_floor: float = 0.01
    lr_factor: float = 0.5

    def __post_init__(self):
        check_range(self, "window", 1, section="monitor")
        unknown = sorted(set(self.actions) - set(ALARMS.names()))
        if unknown:
            raise ValueError(f"monitor.actions: unknown alarm(s) {unknown}; known: {', '.join(ALARMS.names())}")
        check_range(self, ("hack_rise", "hack_drop", "max_kl", "max_clipfrac", "beta_floor"), 0, section="monitor")
        check_range(self, ("diversity_fraction", "lr_factor"), 0, 1, lo_open=True, hi_open=True, section="monitor")
        check_range(self, "beta_factor", 1, lo_open=True, section="monitor")
        bad = sorted(set(self.stat_drift) - set(IMAGE_STATS))
        if bad:
            raise ValueError(f"monitor.stat_drift: unknown statistic(s) {bad}; known: {', '.join(IMAGE_STATS)}")
        if any(not v > 0 for v in self.stat_drift.values()):
            raise ValueError(f"monitor.stat_drift: every threshold must be > 0, got {self.stat_drift}")

    def action_for(self, alarm: str) -> str:
        return self.actions.get(alarm, self.action)

    def uses(self, action: str) -> bool:
        return self.enabled and (self.action == action or action in self.actions.values())


@dataclass(frozen=True)
class Alarm:
    """One alarm: its registered ``name``, the step it fired at, a one-line ``message`` and the ``value`` that
    crossed the threshold."""

    name: str
    step: int
    message: str
    value: float

    def to_dict(self) -> dict:
        return {"step": self.step, "name": self.name, "message": self.message, "value": self.value}


ALARMS = Registry("monitor alarm")
#: alarms judged on the per-step metrics (their cool-down counts steps); the others count evaluations
STEP_ALARMS = ("kl_runaway", "clipfrac_runaway")


def finite_number(v) -> bool:
    """Whether ``v`` is a finite int or float (a logged metric that can be compared); NaN, inf, None are not."""
    return isinstance(v, (int, float)) and math.isfinite(v)


def trained_eval_rewards(row: dict) -> dict[str, float]:
    """``{reward: eval mean}`` of the trained rewards in one eval row (keys ``eval/<name>/mean``)."""
    return {k[len(TRAINED_PREFIX):-len(TRAINED_SUFFIX)]: v for k, v in row.items()
            if k.startswith(TRAINED_PREFIX) and k.endswith(TRAINED_SUFFIX) and not k.startswith(HELDOUT_PREFIX)
            and not k.startswith(STAT_PREFIX) and finite_number(v)}


def heldout_eval_rewards(row: dict) -> dict[str, float]:
    """``{reward: eval mean}`` of the held-out rewards in one eval row (keys ``eval/heldout/<name>``)."""
    return {k[len(HELDOUT_PREFIX):]: v for k, v in row.items()
            if k.startswith(HELDOUT_PREFIX) and "/" not in k[len(HELDOUT_PREFIX):] and finite_number(v)}


def heldout_score(row: dict) -> float:
    """The mean of a row's held-out reward means (NaN when it has none): what ``rollback`` ranks evaluations by."""
    values = list(heldout_eval_rewards(row).values())
    return sum(values) / len(values) if values else math.nan


@ALARMS.register("reward_hacking")
def reward_hacking(steps: Sequence[dict], evals: Sequence[dict], cfg: MonitorConfig) -> list[Alarm]:
    """A trained reward's eval mean rose by more than ``hack_rise`` while a held-out reward's fell by more than
    ``hack_drop``, between the evaluation ``window`` evaluations back and the newest. Value: the held-out fall."""
    if len(evals) <= cfg.window:
        return []
    old, new = evals[-1 - cfg.window], evals[-1]
    t_old, t_new = trained_eval_rewards(old), trained_eval_rewards(new)
    h_old, h_new = heldout_eval_rewards(old), heldout_eval_rewards(new)
    rises = {n: t_new[n] - t_old[n] for n in t_new if n in t_old and t_new[n] - t_old[n] > cfg.hack_rise}
    falls = {n: h_old[n] - h_new[n] for n in h_new if n in h_old and h_old[n] - h_new[n] > cfg.hack_drop}
    if not rises or not falls:
        return []
    trained, rise = max(rises.items(), key=lambda kv: kv[1])
    heldout, fall = max(falls.items(), key=lambda kv: kv[1])
    return [Alarm("reward_hacking", new["step"],
                  f"trained reward {trained} rose {rise:+.4f} while held-out reward {heldout} fell {-fall:+.4f} "
                  f"between steps {old['step']} and {new['step']} (monitor.hack_drop={cfg.hack_drop})", fall)]


@ALARMS.register("diversity_collapse")
def diversity_collapse(steps: Sequence[dict], evals: Sequence[dict], cfg: MonitorConfig) -> list[Alarm]:
    """Within-group diversity (``eval/stats/diversity``) fell below ``diversity_fraction`` of its first finite
    value. Value: the current fraction of the start."""
    values = [(e["step"], e[DIVERSITY_KEY]) for e in evals if finite_number(e.get(DIVERSITY_KEY))]
    if len(values) < 2 or not finite_number(evals[-1].get(DIVERSITY_KEY)) or values[0][1] <= 0:
        return []
    (s0, start), (s1, now) = values[0], values[-1]
    frac = now / start
    if frac >= cfg.diversity_fraction:
        return []
    return [Alarm("diversity_collapse", s1, f"within-group diversity fell to {now:.4f}, {frac:.0%} of its value "
                  f"{start:.4f} at step {s0} (monitor.diversity_fraction={cfg.diversity_fraction})", frac)]


@ALARMS.register("image_stat_drift")
def image_stat_drift(steps: Sequence[dict], evals: Sequence[dict], cfg: MonitorConfig) -> list[Alarm]:
    """An eval image statistic moved further than ``stat_drift[name]`` from its first value (one alarm naming the
    statistic that moved furthest beyond its threshold). Value: the change."""
    if len(evals) < 2:
        return []
    worst = None
    for name, limit in cfg.stat_drift.items():
        key = STAT_PREFIX + name
        first = next((e for e in evals if finite_number(e.get(key))), None)
        now = evals[-1].get(key)
        if first is None or first is evals[-1] or not finite_number(now):
            continue
        change = now - first[key]
        if abs(change) > limit and (worst is None or abs(change) / limit > worst[0]):
            worst = (abs(change) / limit, name, change, first)
    if worst is None:
        return []
    _, name, change, first = worst
    return [Alarm("image_stat_drift", evals[-1]["step"],
                  f"eval image statistic {name} moved {change:+.4f} from {first[STAT_PREFIX + name]:.4f} at step "
                  f"{first['step']} (monitor.stat_drift.{name}={cfg.stat_drift[name]})", change)]


def _runaway(steps: Sequence[dict], cfg: MonitorConfig, key: str, limit: float, name: str) -> list[Alarm]:
    if not limit or len(steps) < cfg.window:
        return []
    recent = [s.get(key) for s in steps[-cfg.window:]]
    if not all(finite_number(v) for v in recent):
        return []
    mean = sum(recent) / len(recent)
    if mean <= limit:
        return []
    return [Alarm(name, steps[-1]["step"], f"{key} averaged {mean:.4g} over the last {cfg.window} step(s), above "
                  f"monitor.max_{key}={limit}", mean)]


@ALARMS.register("kl_runaway")
def kl_runaway(steps: Sequence[dict], evals: Sequence[dict], cfg: MonitorConfig) -> list[Alarm]:
    """The mean ``approx_kl`` of the last ``window`` steps exceeds ``max_kl``: the policy runs off its data."""
    return _runaway(steps, cfg, "approx_kl", cfg.max_kl, "kl_runaway")


@ALARMS.register("clipfrac_runaway")
def clipfrac_runaway(steps: Sequence[dict], evals: Sequence[dict], cfg: MonitorConfig) -> list[Alarm]:
    """The mean ``clipfrac`` of the last ``window`` steps exceeds ``max_clipfrac``: most updates are clipped."""
    return _runaway(steps, cfg, "clipfrac", cfg.max_clipfrac, "clipfrac_runaway")


def alarm_metrics(alarms: Sequence[Alarm]) -> dict[str, float]:
    """``{monitor/alarm/<name>: value}`` for the alarms of one step (absent keys: no alarm)."""
    return {f"monitor/alarm/{a.name}": float(a.value) for a in alarms}


def alarm_lines(alarms: Sequence[Alarm], cfg: MonitorConfig) -> list[str]:
    """The lines ``psrl train`` prints under its final table: one per alarm, or one saying there was none."""
    if not alarms:
        return ["monitor: no alarm"]
    return [f"ALARM step {a.step:>4}  {a.name}: {a.message} (action: {cfg.action_for(a.name)})" for a in alarms]


__all__ = ["ALARMS", "Alarm", "DIVERSITY_KEY", "HELDOUT_PREFIX", "MonitorConfig", "STAT_PREFIX", "STEP_ALARMS",
           "alarm_lines", "alarm_metrics", "finite_number", "heldout_eval_rewards", "heldout_score",
           "trained_eval_rewards"]
