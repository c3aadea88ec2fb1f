"""Building and calling the rewards of a GRPO step: the configured rewards built (each on its device), one reward
on one rollout batch with its failure turned into a message, the step's unscorable-sample reasons logged whole, the
step's reward metrics, and a reward kept on its own device (``rewards[].device``, as
PaCo serves its judge on GPUs of its own: X-GenGroup/PaCo-RL@cd3c428 PaCo-GRPO/vllm_server/launch.sh). Kept apart
from the trainer loop, which only sequences them."""
from __future__ import annotations

import logging
from collections import Counter

import torch

from psrl.rl.image_stats import nan_mean_std

logger = logging.getLogger(__name__)


def build_rewards(specs, device, what: str = "rewards") -> list:
    """The rewards of ``specs`` (``rewards`` or ``eval.rewards`` entries) built by :func:`psrl.rewards.build_reward`
    on ``device``, or on their own ``device`` (:class:`RewardOnDevice`).

    Raises:
        ConfigError: a bad ``<what>[i].device``.
        PsrlError: an unknown reward or arguments it does not take, naming ``what`` and the reward.
    """
    from psrl.errors import ConfigError, PsrlError
    from psrl.rewards import build_reward

    built = []
    for i, spec in enumerate(specs):
        try:
            own = None if spec.device is None else reward_device(spec.device, cuda_count=torch.cuda.device_count())
        except ValueError as e:
            raise ConfigError(f"{what}[{i}].device: {e}") from e
        try:
            reward = build_reward(spec.name, dict(spec.args), device=device if own is None else own)
            if spec.label:  # its scores, failures and eval metrics go by the label
                reward.name = spec.label
            built.append(reward if own is None else RewardOnDevice(reward, own))
        except KeyError as e:
            raise PsrlError(f"{what}: {e.args[0] if e.args else e}") from e
        except (TypeError, ValueError) as e:
            raise PsrlError(f"{what}: cannot build {spec.name!r} with args {spec.args}: {e}") from e
    return built


def reward_summary(rewards: torch.Tensor, failures: torch.Tensor, specs, weights: torch.Tensor) -> dict[str, float]:
    """A step's reward metrics from its gathered ``rewards`` ``[N, K]`` (NaN: unscorable), the unscorable count per
    reward ``failures`` ``[K]`` and the configured ``weights`` ``[K]``: ``reward/<name>/mean``, ``/std``
    (population, over the scorable samples; NaN when none) and ``/failure_rate``, and ``reward/total/mean`` and
    ``/std`` of the weighted sum over the samples every reward scored."""
    out = {}
    for k, spec in enumerate(specs):
        out[f"reward/{spec.key}/mean"], out[f"reward/{spec.key}/std"] = nan_mean_std(rewards[:, k])
        out[f"reward/{spec.key}/failure_rate"] = float(failures[k]) / rewards.shape[0]
    out["reward/total/mean"], out["reward/total/std"] = nan_mean_std(rewards @ weights)
    return out


def call_reward(reward, rollout):
    """``(RewardOutput, None)``, or ``(None, why)`` when the reward raised or returned the wrong shape."""
    name = getattr(reward, "name", type(reward).__name__)
    try:
        out = reward(rollout.images, rollout.records)
    except torch.OutOfMemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - any reward bug must end the run with its name, not a traceback
        return None, f"reward {name!r} raised {type(e).__name__}: {e}"
    scores = getattr(out, "scores", None)
    if not isinstance(scores, torch.Tensor) or scores.numel() != len(rollout):
        got = scores.numel() if isinstance(scores, torch.Tensor) else type(scores).__name__
        return None, f"reward {name!r} returned {got} scores for {len(rollout)} images"
    return out, None


def reward_device(value: str, *, cuda_count: int) -> torch.device:
    """``rewards[].device`` as a ``torch.device``: ``cpu``, ``cuda`` or ``cuda:<n>`` with ``n`` below
    ``cuda_count`` (the CUDA devices torch sees). Pure.

    Raises:
        ValueError: not a device name, another device type, or a CUDA device this machine does not have.
    """
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError):
        raise ValueError(f"{value!r} is not a device (use cpu, cuda or cuda:<n>)") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"{value!r}: only cpu and cuda devices are supported")
    if device.type == "cuda" and (device.index or 0) >= cuda_count:
        raise ValueError(f"{value!r}, but torch sees {cuda_count} CUDA device(s)")
    return device


class RewardOnDevice:
    """A reward built on its own ``device``: images are moved there before each call, and the scores come back on
    the CPU (:class:`psrl.rewards.base.RewardOutput` keeps them there), so the trainer sees the same output as from a
    reward on the policy's device. Other attributes (``name``, ``refs``, ...) are the wrapped reward's."""

    def __init__(self, reward, device: torch.device):
        self.reward = reward
        self.device = torch.device(device)

    def __getattr__(self, attr):
        return getattr(self.__dict__["reward"], attr)

    def __call__(self, images: torch.Tensor, records):
        return self.reward(images.to(self.device), records)


def log_failure_reasons(per_process: list[dict]) -> None:
    """One warning per reward that could not score some samples this step, with the commonest reasons whole (a
    failure rate alone does not say what to fix)."""
    merged: dict[str, Counter] = {}
    for reasons in per_process:
        for name, counts in reasons.items():
            merged.setdefault(name, Counter()).update(counts)
    for name, counts in merged.items():
        if counts:
            top = "; ".join(f"{n} x {why}" for why, n in counts.most_common(3))
            more = f"; and {len(counts) - 3} other reason(s)" if len(counts) > 3 else ""
            logger.warning("reward %r could not score %d sample(s): %s%s", name, sum(counts.values()), top, more)


__all__ = ["RewardOnDevice", "build_rewards", "call_reward", "log_failure_reasons", "reward_device", "reward_summary"]
