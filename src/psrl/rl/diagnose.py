"""``psrl diagnose``: a few rollout batches of a run config, measured without training (issue #17 section 4).

What it reports, per config, before a long run costs GPU hours:

* the zero-std group ratio and the spread of every reward (groups whose rewards are equal teach nothing);
* whether the policy gradient carries signal: the cosine between the gradients of independent rollout batches
  against a shuffled-advantage control, decided by an exact swap test (:mod:`psrl.rl.diagnose_stats`), with a
  verdict line containing ``signal`` or ``noise``;
* the log-prob recompute check: the ratio of the recomputed to the rollout log-prob must be exactly 1 before an
  update, in the configured dtype and autocast (anything else makes PPO clip rounding instead of learning);
* the seconds and peak memory of each phase, extrapolated to ``train.max_steps``.

How it runs the trainer's own code without a run folder: :func:`scratch_trainer` builds a
:class:`~psrl.rl.grpo_trainer.GRPOTrainer` from a copy of the config whose ``run.output_dir`` is a temporary folder,
removed on exit. So every start-up check, the records (resolved under their data roots), the policy, the rewards, the
sampler, the advantage mode and the loss type are exactly those ``psrl train`` would use, and nothing is
left under the configured ``run.output_dir``. (The alternative, rebuilding those pieces here, would duplicate the
trainer's set-up and drift from it.) The rollouts, rewards and trained steps come from the trainer's step helpers,
so a batch is the trainer's step ``b`` exactly (same prompts, seeds and noise).

The gradient of a batch is the configured loss type's *policy* term (``LossOutput.policy_loss``; the KL term does
not depend on the rewards and would make pure noise look aligned) over the trainer's micro-batches, before any
update. One diagnosis holds ``2 x batches`` flat float32 gradients of the LoRA in host memory (tiny: kilobytes;
a rank-32 FLUX attention LoRA: about 0.2 GB each).
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from psrl.errors import ConfigError, PsrlError
from psrl.rewards.base import to_jsonable
from psrl.rl.advantages import compute_advantages
from psrl.rl.base_trainer import StepAbandoned, format_duration
from psrl.rl.diagnose_stats import (SIGNAL_ALPHA, RewardSpread, SignalTest, images_for_cosine, median, reward_spread,
                                    shuffle_within_groups, swap_test)
from psrl.rl.grpo_trainer import GRPOTrainer, micro_batches, oom_advice
from psrl.rl.image_stats import nan_mean
from psrl.rl.loss_types import LossContext
from psrl.rl.sampler import sample_seed

logger = logging.getLogger(__name__)

#: Rollout batches by default: 12 is the most the swap test enumerates exhaustively (4096 patterns). Measured on the
#: tiny model with ``model.tiny_seed: 1`` (the colour reward's per-step gradient cosine is ~0.3 there): 12 batches say
#: ``signal`` in 37 of 40 random sets of batches, 8 batches in 22 of 40; a random reward in 1 of 40 (the level is 1%).
DEFAULT_BATCHES = 12
#: A recomputed log-prob may differ from the rollout's by rounding at most this share of ``train.clip_range`` before
#: the first update: past it, PPO's clip acts on rounding error instead of on learning.
RATIO_TOLERANCE_OF_CLIP = 0.1


@dataclass
class LogProbCheck:
    """The log-prob recompute check: ``max |log p_recomputed - log p_rollout|`` over every sample and trained step,
    and ``max |ratio - 1|``, with the weights untouched. ``checked`` is False with ``reason`` when the loss type does
    not use log-probs."""

    checked: bool
    max_abs_delta: float = 0.0
    max_ratio_deviation: float = 0.0
    tolerance: float = 0.0
    reason: str = ""

    @property
    def exact(self) -> bool:
        return self.checked and self.max_abs_delta == 0.0

    @property
    def ok(self) -> bool:
        return not self.checked or self.max_ratio_deviation <= self.tolerance


@dataclass
class Phase:
    """A phase's median seconds per batch and peak accelerator memory in bytes (``None`` on the CPU)."""

    seconds: float
    peak_bytes: int | None


@dataclass
class Diagnosis:
    """Everything ``psrl diagnose`` measured; :func:`format_report` prints it, :meth:`to_dict` is its JSON."""

    batches: int
    images_per_batch: int
    group_size: int
    loss: str
    dtype: str
    mixed_precision: str
    device: str
    rewards: dict[str, RewardSpread]
    zero_std_ratio: float  # of the weighted total, as the trainer counts it (mean over batches)
    trained_fraction: float  # share of samples that got an advantage (finite rewards, group of >= 2)
    signal: SignalTest
    images_for_target: int | None
    logprob: LogProbCheck
    phases: dict[str, Phase]
    seconds_per_step: float
    max_steps: int
    process_peak_rss_bytes: int | None
    verdict: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def measured(self) -> bool:
        """Whether any batch had a group to learn from (else nothing could be measured)."""
        return self.trained_fraction > 0

    def to_dict(self) -> dict:
        """JSON-able: nested dataclasses as dicts, NaN and inf as ``null`` (JSON has neither)."""
        return to_jsonable(dataclasses.asdict(self))


@contextmanager
def scratch_trainer(cfg, *, policy=None):
    """A :class:`~psrl.rl.grpo_trainer.GRPOTrainer` for ``cfg`` whose run folder lives in a temporary directory
    that is removed on exit (``cfg`` itself is not modified). The tracker is forced to ``jsonl``: a diagnosis logs
    nothing, and should not need the W&B package."""
    cfg = copy.deepcopy(cfg)
    with tempfile.TemporaryDirectory(prefix="psrl-diagnose-") as tmp:
        cfg.run.output_dir = tmp
        cfg.run.name = "diagnose"
        cfg.run.tracker = "jsonl"
        cfg.run.dump_rank_data = False
        yield GRPOTrainer(cfg, policy=policy)


def diagnose(cfg, *, batches: int = DEFAULT_BATCHES, policy=None) -> Diagnosis:
    """Roll out ``batches`` of the trainer's steps of ``cfg`` (steps ``0 .. batches - 1``), score them, and measure
    the gradient signal, the log-prob recompute and the cost, without any update.

    Args:
        cfg: a :class:`~psrl.rl.run_config.RunConfig`.
        batches: rollout batches (each one trainer step: ``groups_per_step x group_size`` images); at least 2. More
            batches resolve weaker signals: with ``K`` the smallest p-value is ``2^-K``, so ``K >= 7`` can say
            ``signal`` at :data:`~psrl.rl.diagnose_stats.SIGNAL_ALPHA`; see :data:`DEFAULT_BATCHES`.
        policy: an already built policy (tests); else built from ``cfg.model``.

    Raises:
        ConfigError: ``batches < 2``; PsrlError: started by a multi-process launcher, a reward that raised, out
            of memory (with the settings that reduce it); and every start-up error of ``psrl train``.
    """
    if batches < 2:
        raise ConfigError(f"--batches must be at least 2 (the signal test compares batches), got {batches}")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise PsrlError("psrl diagnose runs in one process; start it with plain `psrl diagnose`, not accelerate "
                        "launch or torchrun")
    with scratch_trainer(cfg, policy=policy) as trainer:
        return _run(trainer, batches)


def _run(trainer, batches: int) -> Diagnosis:
    cfg, t = trainer.cfg, trainer.cfg.train
    device = trainer.accelerator.device
    gen = torch.Generator().manual_seed(t.seed)
    logprob = _logprob_check_setup(cfg)
    names = [spec.key for spec in cfg.rewards]
    all_rewards, all_groups, real, control = [], [], [], []
    times: dict[str, list[float]] = {"rollout": [], "reward": [], "train": []}
    peaks: dict[str, list[int]] = {"rollout": [], "train": []}
    zero_std, trained_total, samples_total = [], 0, 0
    for b in range(batches):
        phase = "rollout"
        try:
            assignment = trainer.sampler.assign(b)
            sampling, trained_steps = trainer._step_sampling(b)
            _reset_peak(device)
            t0 = time.perf_counter()
            try:
                rollouts, rewards, _, _, t1 = trainer._rollout_and_score(b, assignment, sampling, trained_steps)
            except StepAbandoned as e:  # a reward raised or returned the wrong shape: name it, one line
                raise PsrlError(str(e)) from None
            times["rollout"].append(t1 - t0)
            times["reward"].append(time.perf_counter() - t1)
            peaks["rollout"].append(_peak(device))
            phase = "train"
            group_ids = torch.tensor(assignment.group_ids)
            result = compute_advantages(rewards, trainer.reward_weights, group_ids, cfg.advantage, trained_steps,
                                        cfg.sampling.num_steps, mode=trainer.advantage_mode)
            if logprob.checked:
                _check_logprobs(trainer, rollouts, trained_steps, logprob)
            _reset_peak(device)
            t2 = time.perf_counter()
            real.append(_policy_gradient(trainer, b, rollouts, result.advantages, result.trained, trained_steps))
            times["train"].append(time.perf_counter() - t2)
            peaks["train"].append(_peak(device))
            # the control: the same samples, advantages shuffled within each group among the trained samples
            # (untrained samples keep their own id, so an advantage never moves onto a sample the loss skips)
            ids = torch.where(result.trained, group_ids, -1 - torch.arange(len(group_ids)))
            perm = shuffle_within_groups(ids, gen)
            control.append(_policy_gradient(trainer, b, rollouts, result.advantages[perm], result.trained,
                                            trained_steps))
        except torch.OutOfMemoryError as e:
            raise PsrlError(oom_advice(cfg, phase)) from e
        all_rewards.append(rewards)
        all_groups.append(group_ids + b * t.groups_per_step)
        zero_std.append(result.stats["zero_std_ratio"])
        trained_total += int(result.trained.sum())
        samples_total += len(group_ids)
        logger.info("batch %d/%d: reward %s, zero-std %.2f, %d of %d samples trained", b + 1, batches,
                    ", ".join(f"{n} {nan_mean(rewards[:, k]):.4f}" for k, n in enumerate(names)),
                    result.stats["zero_std_ratio"], int(result.trained.sum()), len(group_ids))
    rewards = torch.cat(all_rewards)
    groups = torch.cat(all_groups)
    test = swap_test(torch.stack(real), torch.stack(control), generator=gen)
    phases = {
        "rollout": Phase(median(times["rollout"]), _max_or_none(peaks["rollout"])),
        "reward": Phase(median(times["reward"]), None),
        "train": Phase(median(times["train"]), _max_or_none(peaks["train"])),
    }
    per_step = phases["rollout"].seconds + phases["reward"].seconds + phases["train"].seconds * t.num_inner_epochs
    images = t.groups_per_step * t.group_size
    diag = Diagnosis(
        batches=batches, images_per_batch=images, group_size=t.group_size, loss=t.loss,
        dtype=cfg.model.dtype, mixed_precision=t.mixed_precision, device=str(device),
        rewards={n: reward_spread(rewards[:, k], groups) for k, n in enumerate(names)},
        zero_std_ratio=sum(zero_std) / len(zero_std), trained_fraction=trained_total / max(samples_total, 1),
        signal=test, images_for_target=images_for_cosine(test.cosine, images) if test.signal else None,
        logprob=logprob, phases=phases, seconds_per_step=per_step, max_steps=t.max_steps,
        process_peak_rss_bytes=_peak_rss())
    diag.verdict, diag.notes = verdict(diag)
    return diag


# ---------------------------------------------------------------------------------------------------------- phases
def _policy_gradient(trainer, batch_index: int, rollouts, advantages, trained, trained_steps) -> torch.Tensor:
    """The flat float32 gradient (CPU) of the loss type's policy term over the batch's trained samples, in the
    trainer's micro-batches (mean over samples and trained steps); the weights and optimizer are untouched."""
    t, policy = trainer.cfg.train, trainer.policy
    ctx = LossContext(policy=policy, old_policy=trainer.old_policy, train=t, adv_clip=trainer.cfg.advantage.clip,
                      autocast=trainer.autocast)
    n = max(int(trained.sum()) * len(trained_steps), 1)
    trainer.optimizer.zero_grad(set_to_none=True)
    policy.train(True)
    try:
        for micro, (ri, offset, rows) in enumerate(micro_batches(rollouts, t.train_batch_size), 1):
            keep = [i for i in rows if bool(trained[offset + i])]
            if not keep:
                continue
            adv = advantages[[offset + i for i in keep]]
            batch = rollouts[ri].select(keep)
            # the same seeds for the real and the control pass (NFT's re-noising): they differ only in advantages
            seed = sample_seed(t.seed, batch_index, micro, salt="diagnose")
            for j, step in enumerate(trained_steps):
                out = trainer.loss_type.step(ctx, batch, adv[:, j].to(batch.log_probs.device), step,
                                             (seed + j) % (2**62))
                (out.policy_loss * (len(keep) / n)).backward()
    finally:
        policy.train(False)
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).detach().float().flatten().cpu()
                      for p in trainer.params])
    trainer.optimizer.zero_grad(set_to_none=True)
    return flat


def _logprob_check_setup(cfg) -> LogProbCheck:
    t, s = cfg.train, cfg.sampling
    if t.loss == "nft":
        return LogProbCheck(False, reason="train.loss=nft uses no log-probs")
    if s.noise_level == 0:
        return LogProbCheck(False, reason="sampling.noise_level=0: ODE rollouts have no log-probs")
    return LogProbCheck(True, tolerance=RATIO_TOLERANCE_OF_CLIP * t.clip_range)


@torch.no_grad()
def _check_logprobs(trainer, rollouts, trained_steps, check: LogProbCheck) -> None:
    """Recompute every trained step's log-prob in the trainer's micro-batches, train mode and autocast (as the first
    update does) and compare with the rollout's."""
    t, policy = trainer.cfg.train, trainer.policy
    policy.train(True)
    try:
        for ri, _, rows in micro_batches(rollouts, t.train_batch_size):
            batch = rollouts[ri].select(rows)
            for step in trained_steps:
                with trainer.autocast():
                    new = policy.log_prob(batch, step).log_prob
                delta = (new.float().cpu() - batch.log_probs[:, step].float().cpu()).abs()
                worst = float(delta.max()) if delta.numel() else 0.0
                if not math.isfinite(worst):
                    worst = math.inf
                check.max_abs_delta = max(check.max_abs_delta, worst)
                check.max_ratio_deviation = max(check.max_ratio_deviation, math.expm1(min(worst, 700.0)))
    finally:
        policy.train(False)


def _reset_peak(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device) -> int | None:
    return int(torch.cuda.max_memory_allocated(device)) if torch.device(device).type == "cuda" else None


def _max_or_none(values):
    values = [v for v in values if v is not None]
    return max(values) if values else None


def _peak_rss() -> int | None:
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


# ---------------------------------------------------------------------------------------------------------- report
#: Over this zero-std ratio a note says most groups teach nothing.
ZERO_STD_NOTE = 0.5


def verdict(d: Diagnosis) -> tuple[str, list[str]]:
    """``(verdict line, notes)`` from the measurements. The verdict line contains ``signal`` or ``noise``."""
    s = d.signal
    odds = (f"cosine {s.cosine:.3f} between the policy gradients of independent batches, {s.control_cosine:.3f} "
            f"with shuffled advantages; swap-test p = {s.p_value:.3g} over {s.batches} batches")
    notes = []
    if not d.measured:
        line = ("no signal: no group had two scorable samples, nothing would be learned; see the unscorable "
                "share per reward and the rewards' warnings")
    elif s.patterns == 0:
        line = ("no signal: every group's rewards were equal (zero-std), the policy gradient is zero and nothing "
                "would be learned: use a denser reward or raise train.group_size")
    elif s.signal:
        line = f"the policy gradient carries signal ({odds})"
        if d.images_for_target is not None and d.images_for_target > d.images_per_batch:
            notes.append(f"the signal is weak per step: about {d.images_for_target} images per step (now "
                         f"{d.images_per_batch}) would bring the cosine to 0.5")
    elif 2.0 ** -s.batches > SIGNAL_ALPHA:
        line = (f"too few batches to tell signal from noise: with {s.batches} the smallest possible p-value is "
                f"{2.0 ** -s.batches:.3g} > {SIGNAL_ALPHA:g}; use --batches 7 or more ({odds})")
    else:
        line = (f"the signal is at noise level ({odds}): raise train.group_size or train.groups_per_step, or use a "
                "denser reward; a weak signal may need more batches to show (--batches)")
    if d.zero_std_ratio > ZERO_STD_NOTE:
        notes.append(f"{d.zero_std_ratio:.0%} of groups have equal rewards and teach nothing")
    if not d.logprob.ok:
        notes.append(f"the recomputed log-probs differ from the rollout's before any update (ratio off by up to "
                     f"{d.logprob.max_ratio_deviation:.2e}, over {RATIO_TOLERANCE_OF_CLIP:g} x train.clip_range): PPO "
                     f"will clip rounding, not learning; check model.dtype ({d.dtype}) and train.mixed_precision "
                     f"({d.mixed_precision})")
    return line, notes


def format_report(d: Diagnosis) -> str:
    """The text ``psrl diagnose`` prints."""
    rows = [f"psrl diagnose: {d.batches} rollout batches of {d.images_per_batch} images (groups of {d.group_size}) "
            f"on {d.device}; loss {d.loss}, model.dtype {d.dtype}, mixed_precision {d.mixed_precision}",
            "", "rewards                      mean        std  group std  zero-std  unscorable"]
    for name, r in d.rewards.items():
        rows.append(f"  {name[:24]:<24} {r.mean:>8.4f} {r.std:>10.4g} {r.group_std:>10.4g} {r.zero_std_ratio:>9.2f} "
                    f"{r.unscorable:>11.2f}")
    rows.append(f"  {'weighted total':<24} {'':>8} {'':>10} {'':>10} {d.zero_std_ratio:>9.2f}   "
                f"({d.trained_fraction:.0%} of samples trained)")
    s = d.signal
    pairs = s.batches * (s.batches - 1) // 2
    rows += ["", f"gradient signal: mean cosine {s.cosine:.3f} over {pairs} pairs of batches "
                 f"(shuffled-advantage control {s.control_cosine:.3f}); exact swap test p = {s.p_value:.3g} "
                 f"({s.patterns} patterns)"]
    lp = d.logprob
    if not lp.checked:
        rows.append(f"log-prob recompute: not checked ({lp.reason})")
    elif lp.exact:
        rows.append(f"log-prob recompute: ratio exactly 1 before an update ({d.dtype}, mixed_precision "
                    f"{d.mixed_precision})")
    else:
        rows.append(f"log-prob recompute: ratio within {lp.max_ratio_deviation:.2e} of 1 before an update "
                    f"(max |delta log p| {lp.max_abs_delta:.2e}; tolerance {lp.tolerance:.2e}) "
                    f"{'ok' if lp.ok else 'TOO FAR'}")
    p = d.phases
    rows.append(f"time per step: rollout {p['rollout'].seconds:.2f} s, reward {p['reward'].seconds:.2f} s, train "
                f"{p['train'].seconds:.2f} s per inner epoch = {d.seconds_per_step:.2f} s; train.max_steps "
                f"{d.max_steps} ~ {format_duration(d.seconds_per_step * d.max_steps)} (one process, without "
                "evaluation)")
    if p["rollout"].peak_bytes is not None:
        rows.append(f"peak memory: rollout + reward {_gib(p['rollout'].peak_bytes)}, train "
                    f"{_gib(p['train'].peak_bytes)} (accelerator, allocated)")
    elif d.process_peak_rss_bytes is not None:
        rows.append(f"peak memory: {_gib(d.process_peak_rss_bytes)} process RSS (on the CPU phases are not separated)")
    rows += [f"note: {n}" for n in d.notes]
    rows.append(f"verdict: {d.verdict}")
    return "\n".join(rows)


def _gib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**30:.2f} GiB"


__all__ = ["DEFAULT_BATCHES", "Diagnosis", "LogProbCheck", "Phase", "RATIO_TOLERANCE_OF_CLIP", "ZERO_STD_NOTE",
           "diagnose", "format_report", "scratch_trainer", "verdict"]
