"""One GRPO trainer for every policy: rollout -> rewards -> advantages -> PPO-clip updates of the LoRA.

The trainer talks to the model only through :class:`psrl.models.base.Policy`; there are no model-specific
branches. A *step* is one GRPO iteration (see :class:`psrl.rl.grpo_config.TrainConfig`). Processes started by
``accelerate launch`` / ``torchrun`` each roll out their slice of the step's groups (identical on all ranks, see
:mod:`psrl.rl.sampler`), rewards are gathered before advantages are computed, and LoRA gradients are averaged
with one all-reduce per update (:mod:`psrl.rl.distributed` explains why not DDP).
"""
from __future__ import annotations

import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
import time
from contextlib import nullcontext

import torch

from psrl.errors import PsrlError
from psrl.models.checks import check_sampling_size, validate_records
from psrl.rl import distributed as dist
from psrl.rl.advantages import (apply_per_subject, check_advantage_config, compute_advantages, get_advantage_mode,
                                 join_per_subject, stack_per_subject)
from psrl.rl.balance import RewardBalancer
from psrl.rl.ema import ParameterEMA
from psrl.rl.eval_metrics import build_eval_embedder
from psrl.rl.evaluation import Evaluation, current_evaluation, eval_sampling
from psrl.rl.monitor import MonitorStop, TrainingMonitor, alarm_metrics
from psrl.rl.loss_types import LOSS_TYPES, LossContext
from psrl.rl.old_policy import OldPolicy
from psrl.rl.rank_dump import dump_rank_data, dump_weights
from psrl.rl.base_trainer import BaseTrainer, StepAbandoned
from psrl.rl.reward_calls import build_rewards, call_reward, log_failure_reasons, reward_summary
from psrl.rl.run_config import RunConfig, derive_sizes, run_records
from psrl.rl.sampler import GroupSampler, sample_seed, step_sampling
from psrl.rl.tracking import read_metrics

logger = logging.getLogger(__name__)


def oom_advice(cfg: RunConfig, phase: str) -> str:
    t, m, s = cfg.train, cfg.model, cfg.sampling
    return (
        f"out of memory during the {phase} phase. Settings that reduce memory: "
        f"train.sample_batch_size (now {t.sample_batch_size}) and train.train_batch_size (now {t.train_batch_size}) "
        f"smaller (raise train.gradient_accumulation to keep the update size); "
        f"model.gradient_checkpointing: true (now {m.gradient_checkpointing}); model.dtype: bfloat16 (now {m.dtype}); "
        f"fewer trained steps (sampling.train_steps: fast_window or first_k with a small sampling.train_k; now "
        f"{s.train_steps}); lower sampling.height/width (now {s.height}x{s.width}); "
        f"model.offload_frozen: true (now {m.offload_frozen}); model.lora.rank smaller (now {m.lora.rank})")


def micro_batches(rollouts, size: int) -> list[tuple[int, int, list[int]]]:
    """The training micro-batches of a step's local rollouts, in order: ``(rollout index, offset of that rollout
    in the flattened local batch, its rows)``, at most ``size`` rows each, never spanning two rollouts."""
    out, offset = [], 0
    for ri, r in enumerate(rollouts):
        out += [(ri, offset, list(range(s, min(s + size, len(r))))) for s in range(0, len(r), size)]
        offset += len(r)
    return out


class GRPOTrainer(BaseTrainer):
    """Flow-GRPO training of ``policy`` (built from ``cfg.model`` when not given) under the
    :class:`~psrl.rl.run_config.RunConfig` ``cfg``; ``policy``, ``resume`` and ``progress`` as
    :class:`~psrl.rl.base_trainer.BaseTrainer`.

    Raises:
        ConfigError, RecordError, PsrlError: before the run directory exists, with every bad record listed.
    """

    name = "grpo"

    def __init__(self, cfg: RunConfig, *, policy=None, resume: bool = False, progress: bool = False):
        super().__init__(cfg, cfg.train, policy=policy, resume=resume, progress=progress)

    # ------------------------------------------------------------------ set-up
    def setup_data(self) -> None:
        cfg = self.cfg
        self.sizes = derive_sizes(cfg.train, self.accelerator.num_processes)
        self.advantage_mode = get_advantage_mode(cfg.advantage.mode)
        check_advantage_config(cfg.advantage, [r.weight for r in cfg.rewards], cfg.sampling.num_steps)
        self.records = run_records(cfg, "data")
        self.eval_records = run_records(cfg, "eval") if cfg.eval.every else []

    def setup_policy(self) -> None:
        cfg, policy = self.cfg, self.policy
        policy.cfg_grad = cfg.train.cfg_grad  # read by the true-CFG policies (SD3, Qwen-Image-Edit-Plus) only
        check_sampling_size(policy, cfg.sampling, "sampling.height/width")
        if self.eval_records:
            check_sampling_size(policy, eval_sampling(cfg), "eval.height/width/resolution")
        self.records = validate_records(self.records, policy, cfg.data.records, skip_invalid=cfg.data.skip_invalid)
        if self.eval_records:
            self.eval_records = validate_records(self.eval_records, policy, cfg.eval.records,
                                                 skip_invalid=cfg.data.skip_invalid)

    def setup_training(self) -> None:
        cfg, t = self.cfg, self.cfg.train
        self.rewards = build_rewards(cfg.rewards, self.accelerator.device)
        self.heldout_rewards = build_rewards(cfg.eval.rewards, self.accelerator.device, "eval.rewards") \
            if cfg.eval.every else []
        e = cfg.eval
        self.eval_embed = build_eval_embedder(e.embedder, self.accelerator.device) \
            if e.every and e.statistics and e.group_size >= 2 else None
        self.monitor = TrainingMonitor(cfg.monitor, self.params,  # evaluations score the EMA weights when kept
                                       evaluated=lambda: self.ema.shadow if self.ema is not None else self.params)
        self._local_count, self._local_per_subject = 0, {}  # this process's per-subject scores of the step
        self._alarms = []
        self.reward_weights = torch.tensor([r.weight for r in cfg.rewards], dtype=torch.float32)
        a = cfg.advantage
        self.balancer = RewardBalancer(self.reward_weights, a.balance, window=a.balance_window,
                                       bounds=a.balance_bounds, disagreement_ref=a.balance_disagreement)
        self.ema = ParameterEMA(self.params, t.ema.decay, t.ema.every) if t.ema.enabled else None
        self.loss_type = LOSS_TYPES[t.loss]
        self.old_policy = None
        if t.old_policy.enabled or self.loss_type.needs_old_policy:
            decay_type = t.old_policy.decay_type if t.old_policy.decay_type is not None else \
                (1 if t.loss == "nft" else 0)  # PaCo's defaults
            self.old_policy = OldPolicy(self.params, decay_type)
        self.sampler = GroupSampler(len(self.records), t.groups_per_step, t.group_size, t.seed,
                                    self.accelerator.num_processes, self.accelerator.process_index)
        self._invalid_steps = 0
        self.last_eval: Evaluation | None = None  # the newest evaluation (main process), reused while current
        self._monitor_restored = False

    # ------------------------------------------------------------------ loop hooks
    def describe(self) -> str:
        return f"{self.sizes.describe()}; trained steps mode {self.cfg.sampling.train_steps}"

    def step_summary(self, m: dict) -> str:
        text = (f"reward {m['reward/total/mean']:.4f} +- {m['reward/total/std']:.4f}  zero-std "
                f"{m['zero_std_ratio']:.2f}  approx_kl {m.get('approx_kl', 0.0):.2e}  clipfrac "
                f"{m.get('clipfrac', 0.0):.3f}  "
                f"(rollout {m['time/rollout']:.1f}s, reward {m['time/reward']:.1f}s, train {m['time/train']:.1f}s)")
        if not m.get("adv/num_trained_samples"):
            text += "  NO TRAINABLE GROUP: nothing learned this step"
        return text

    def postfix(self, m: dict) -> dict:
        return {"reward": f"{m['reward/total/mean']:.4f}"}

    def extra_state(self) -> dict:
        """The run's changing state beside the weights: the unscored-step count, ``train.beta`` (the monitor's
        ``raise_beta`` changes it), the monitor's history and the adaptive balancer's window."""
        return {"invalid_steps": self._invalid_steps, "beta": self.cfg.train.beta,
                "monitor": self.monitor.state_dict(), "balancer": self.balancer.state_dict()}

    def load_extra_state(self, state: dict) -> None:
        self._invalid_steps = int(state.get("invalid_steps", 0))
        if "beta" in state and float(state["beta"]) != self.cfg.train.beta:
            logger.info("train.beta %g from the checkpoint (the monitor raised it; the config says %g)",
                        float(state["beta"]), self.cfg.train.beta)
            self.cfg.train.beta = float(state["beta"])
        if "monitor" in state:
            self.monitor.load_state_dict(state["monitor"])
            self._monitor_restored = True
        if "balancer" in state:
            try:
                self.balancer.load_state_dict(state["balancer"])
            except ValueError as e:
                raise PsrlError(f"--resume: advantage.balance: {e}") from None
        elif self.cfg.advantage.balance == "adaptive":
            logger.info("the checkpoint has no balancer window (older psrl): advantage.balance starts a new one")

    def checkpoint_modules(self) -> dict:
        modules = {"old_policy": self.old_policy} if self.old_policy is not None else {}
        if self.cfg.monitor.uses("rollback"):
            modules["monitor_best"] = self.monitor.best_weights()
        return modules

    def optional_checkpoint_modules(self) -> set[str]:
        return {"monitor_best"}

    def before_loop(self) -> None:
        """Point the monitor at ``alarms.jsonl`` (main process), replay its history on ``--resume``, and with
        ``eval.at_start`` evaluate the untrained policy first (step 0: the monitor's baseline, the report's first
        grid)."""
        self.monitor.log_path = self.run_dir / "alarms.jsonl" if self.is_main else None  # one writer
        if self.resume and self._monitor_restored:
            self.monitor.forget_after(self.start_step)
        elif self.resume:  # a checkpoint without the monitor's state: replay the logged history
            path = self.run_dir / "metrics.jsonl"
            rows = read_metrics(path) if self.is_main and path.is_file() else None
            self.monitor.resume(dist.broadcast_object(rows) or [], self.start_step)
        if self.cfg.eval.every and self.cfg.eval.at_start and self.start_step == 0:
            metrics = self.evaluate(0)
            self.monitor.observe(0, metrics)
            if self.tracker is not None:
                self.tracker.log(metrics, 0)

    def after_step(self, done: int, metrics: dict) -> None:
        if self.cfg.eval.every and done % self.cfg.eval.every == 0:
            metrics.update(self.evaluate(done))
        self._alarms = self.monitor.observe(done, metrics)
        metrics.update(alarm_metrics(self._alarms))

    def check_health(self, done: int, metrics: dict) -> None:
        """Stop (non-zero) after ``train.max_invalid_steps`` consecutive steps in which no sample could be scored:
        a reward that returns NaN for everything must not "train" for hours and exit 0."""
        unscored = metrics.get("adv/nan_samples", 0.0) >= self.sizes.images_per_step
        self._invalid_steps = self._invalid_steps + 1 if unscored else 0  # counted first: a stop saves it
        try:
            self.monitor.act(self, self._alarms)  # psrl.rl.monitor: warn, raise_beta, rollback or stop
        except MonitorStop as e:
            raise StepAbandoned(str(e), 1) from None
        limit = self.cfg.train.max_invalid_steps
        if limit and self._invalid_steps >= limit:
            rates = ", ".join(f"{spec.key} {metrics.get(f'reward/{spec.key}/failure_rate', 0.0):.0%}"
                              for spec in self.cfg.rewards)
            raise StepAbandoned(f"{self._invalid_steps} consecutive step(s) in which no sample could be scored "
                                f"(failure rates: {rates}); stopping (train.max_invalid_steps="
                                f"{limit})", 1)

    def run_step(self, step: int) -> dict:
        """One GRPO iteration; returns its metrics (identical on every process)."""
        phase = "rollout"
        try:
            t0 = time.perf_counter()
            assignment = self.sampler.assign(step)
            sampling, trained_steps = self._step_sampling(step)
            rollouts, local_rewards, failures, reward_busy, t1 = self._rollout_and_score(
                step, assignment, sampling, trained_steps)
            t2 = time.perf_counter()
            phase = "reward"
            self.stop_point()
            phase = "train"
            all_rewards = dist.gather_rows(local_rewards.to(self.accelerator.device)).cpu()
            all_failures = dist.gather_rows(failures[None].to(self.accelerator.device)).sum(dim=0).cpu()
            group_ids = torch.tensor(assignment.group_ids)
            weights = self.balancer.weights()  # the configured weights unless advantage.balance: adaptive
            result = compute_advantages(self._per_subject_credit(all_rewards, group_ids), weights, group_ids,
                                        self.cfg.advantage, trained_steps, self.cfg.sampling.num_steps,
                                        mode=self.advantage_mode)
            self.balancer.observe(all_rewards, group_ids)
            local = assignment.local
            if self.cfg.run.dump_rank_data:
                dump_rank_data(self.run_dir, step, self.accelerator.process_index, assignment, self.records,
                               all_rewards, result)
            train_stats = self._update(step, rollouts, result.advantages[local], result.trained[local],
                                       trained_steps)
            t3 = time.perf_counter()
        except torch.OutOfMemoryError as e:
            raise PsrlError(oom_advice(self.cfg, phase)) from e
        metrics = {"updates": self.updates, "lr": self.scheduler.get_last_lr()[0]}
        metrics.update(reward_summary(all_rewards, all_failures, self.cfg.rewards, self.reward_weights))
        metrics.update({f"adv/{k}": v for k, v in result.stats.items()})
        metrics["zero_std_ratio"] = result.stats["zero_std_ratio"]
        if self.cfg.advantage.balance == "adaptive":
            metrics.update({f"adv/weight/{spec.key}": float(w) for spec, w in zip(self.cfg.rewards, weights)})
        metrics.update(train_stats)
        metrics.update({"time/rollout": t1 - t0, "time/reward": t2 - t1, "time/train": t3 - t2,
                        "time/step": t3 - t0, "time/reward_busy": reward_busy})
        if self.cfg.run.dump_rank_data:
            dump_weights(self.run_dir, step, self.accelerator.process_index, self.named_params)
        return metrics

    # ------------------------------------------------------------------ phases
    def _step_sampling(self, step: int):
        """The step's sampling config and trained steps (:func:`psrl.rl.sampler.step_sampling`)."""
        return step_sampling(self.cfg.sampling, self.cfg.train.seed, step)

    def _rollout_and_score(self, step: int, assignment, sampling, trained_steps):
        """Roll out the step's batches and score them. With ``train.async_rewards`` each batch is scored on a worker
        thread while the next one is generated (the rewards' and the policy's kernels release the GIL); the scores
        are the same as in sequential order, since each batch's images and records are fixed before it is handed
        over. Returns ``(rollouts, rewards [n_local, K], failures [K], reward_busy_s, t_rollouts_done)``."""
        pool = ThreadPoolExecutor(1, thread_name_prefix="psrl-rewards") if self.cfg.train.async_rewards else None
        pending: list = []
        try:
            rollouts = self._rollout(step, assignment, sampling, trained_steps,
                                     on_batch=(lambda r: pending.append(pool.submit(self._score_batch, r)))
                                     if pool is not None else None)
            t_rollouts = time.perf_counter()
            self.stop_point()  # nothing has changed the weights yet: a stop here abandons the step
            results = [f.result() for f in pending] if pool is not None else \
                [self._score_batch(r) for r in rollouts]
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        rewards, failures = self._combine_scores(results)
        return rollouts, rewards, failures, sum(r["seconds"] for r in results), t_rollouts

    @torch.no_grad()
    def _rollout(self, step: int, assignment, sampling, trained_steps, on_batch=None):
        self.policy.train(False)
        bs = self.cfg.train.sample_batch_size
        indices, seeds = assignment.local_record_indices, assignment.local_sample_seeds
        # same_noise_per_group: a group's members start from one noise keyed on its id, even when the group spans
        # rollout batches or processes, and two groups of one record do not share it
        noise_seeds = None
        if self.cfg.sampling.same_noise_per_group:
            noise_seeds = [sample_seed(self.cfg.train.seed, step, g, salt="group-noise")
                           for g in assignment.local_group_ids]
        rollouts = []
        for start in range(0, len(indices), bs):
            records = [self.records[i] for i in indices[start:start + bs]]
            gens = [torch.Generator().manual_seed(s) for s in seeds[start:start + bs]]
            kwargs = {} if noise_seeds is None else {"noise_seeds": noise_seeds[start:start + bs]}
            with self.autocast(), (self.old_policy.swapped_in() if self.old_policy is not None else nullcontext()):
                rollout = self.policy.rollout(records, sampling, generator=gens, **kwargs)
            if tuple(rollout.trained_steps) != tuple(trained_steps):
                raise PsrlError(f"the policy trained steps {rollout.trained_steps}, the trainer planned "
                                f"{trained_steps}; the policy must follow sampling.train_steps")
            rollouts.append(rollout)
            if on_batch is not None:
                on_batch(rollout)
        return rollouts

    @torch.no_grad()
    def _score_batch(self, rollout) -> dict:
        """Every reward on one rollout batch: ``{scores: [K tensors [b]], failed: [K], reasons, error, seconds}``;
        stops at the first reward that raises or returns the wrong shape (``error`` names it)."""
        t0 = time.perf_counter()
        out = {"scores": [], "failed": [], "reasons": {}, "error": None, "per_subject": []}
        for reward in self.rewards:
            result, error = call_reward(reward, rollout)
            if error is not None:
                out["error"] = error
                break
            why = [f for f in result.failures if f is not None]
            out["per_subject"].append(result.details.get("per_subject"))
            out["scores"].append(result.scores.float().cpu().reshape(-1))
            out["failed"].append(len(why))
            out["reasons"][reward.name] = Counter(str(f) for f in why)
        out["seconds"] = time.perf_counter() - t0
        return out

    def _combine_scores(self, results: list[dict]):
        """``[n_local, K]`` rewards (NaN = unscorable) and per-reward failure counts from the batches' results. A
        reward that raised or returned the wrong number of scores on any process ends the run cleanly (the step is
        abandoned before any update, the checkpoint saved), naming the reward and what it did."""
        error = next((r["error"] for r in results if r["error"] is not None), None)
        gathered = dist.gather_objects((error, [r["reasons"] for r in results]))
        errors = [e for e, _ in gathered if e is not None]
        if errors:
            raise StepAbandoned(errors[0], 1)
        if self.is_main:
            log_failure_reasons([r for _, batches in gathered for r in batches])
        columns = [torch.cat([r["scores"][k] for r in results]) for k in range(len(self.rewards))]
        failures = [sum(r["failed"][k] for r in results) for k in range(len(self.rewards))]
        if self.cfg.advantage.per_subject != "off":
            sizes = [len(r["scores"][0]) for r in results]
            self._local_count, self._local_per_subject = sum(sizes), stack_per_subject(
                [r["per_subject"] for r in results], sizes)
        return torch.stack(columns, dim=1), torch.tensor(failures, dtype=torch.float32)

    def _per_subject_credit(self, all_rewards, group_ids):
        """``advantage.per_subject``: the gathered rewards with each per-subject reward's column replaced by its
        per-subject credit (:func:`psrl.rl.advantages.apply_per_subject`); the rewards as they are when off."""
        if self.cfg.advantage.per_subject == "off":
            return all_rewards
        gathered = join_per_subject(dist.gather_objects((self._local_count, self._local_per_subject)))
        return apply_per_subject(all_rewards, gathered, group_ids, self.cfg.advantage)

    def _update(self, step, rollouts, advantages, trained, trained_steps) -> dict:
        """``num_inner_epochs`` passes of micro-batches; an optimizer update every ``gradient_accumulation``."""
        t = self.cfg.train
        self.policy.train(True)
        num_trained = len(trained_steps)
        scale = 1.0 / (t.gradient_accumulation * num_trained * t.train_batch_size)
        micro = micro_batches(rollouts, t.train_batch_size)
        sums: dict[str, float] = {}
        count, grad_norms = 0, []
        if t.param_noise_std > 0:
            self._add_param_noise(step)
        self.optimizer.zero_grad(set_to_none=True)
        for inner in range(t.num_inner_epochs):
            order = torch.randperm(len(micro), generator=torch.Generator().manual_seed(
                sample_seed(t.seed, step, inner, salt="shuffle") % (2**62))).tolist()
            for n_done, mi in enumerate(order, 1):
                ri, base, rows = micro[mi]
                keep = [i for i in rows if bool(trained[base + i])]
                adv = advantages[[base + i for i in keep]] if keep else None
                # a PPO/Guard micro-batch without signal contributes a zero gradient: skip its passes (NFT's loss at
                # A = 0 is r = 1/2, which still pulls toward the old policy, so it is kept)
                needed = keep and (t.beta > 0 or t.loss == "nft" or bool((adv != 0).any()))
                if needed:
                    seed = sample_seed(t.seed, step, mi, salt=f"nft:{self.accelerator.process_index}:{inner}")
                    for stat in self._micro_batch(rollouts[ri].select(keep), adv, trained_steps, scale, seed):
                        for k, v in stat.items():
                            sums[k] = sums.get(k, 0.0) + v
                        count += 1
                if n_done % t.gradient_accumulation == 0:
                    grad_norms.append(self.apply_update())
        local = {k: v / count for k, v in sums.items()} if count else {}
        stats = dist.reduce_pass_stats(local, count, list(self.loss_type.stats))
        if self.old_policy is not None:
            stats["old_policy_decay"] = self.old_policy.update(self.updates)
        stats["grad_norm"] = sum(grad_norms) / len(grad_norms) if grad_norms else 0.0
        stats["grad_norm_max"] = max(grad_norms) if grad_norms else 0.0
        return stats

    def _micro_batch(self, batch, adv, trained_steps, scale, seed_base: int):
        """The loss type's passes over one micro-batch (one per trained step), each back-propagated at once."""
        adv = adv.to(batch.log_probs.device)
        ctx = LossContext(policy=self.policy, old_policy=self.old_policy, train=self.cfg.train,
                          adv_clip=self.cfg.advantage.clip, autocast=self.autocast)
        for j, step_index in enumerate(trained_steps):
            out = self.loss_type.step(ctx, batch, adv[:, j], step_index, (seed_base + j) % (2**62))
            (out.loss * (len(batch) * scale)).backward()
            yield out.stats

    @torch.no_grad()
    def _add_param_noise(self, step: int) -> None:
        """PaCo's exploration noise: ``p += N(0, param_noise_std^2)`` on the trained weights before the step's updates
        (drawn on the CPU from the run seed and the step: identical on every process and after a resume)."""
        gen = torch.Generator().manual_seed(sample_seed(self.cfg.train.seed, step, 0, salt="param-noise") % (2**62))
        for p in self.params:
            p.add_(torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.device, p.dtype)
                   * self.cfg.train.param_noise_std)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, step: int) -> dict:
        """Evaluate at ``step`` (:func:`psrl.rl.evaluation.run_evaluation`: ODE samples of the eval prompts with the
        EMA weights if kept, ``eval.group_size`` per prompt with seeds fixed for the run, the PNG grid, the trained
        and held-out rewards, the image statistics) and return its ``eval/*`` metrics. Runs on the main process,
        which keeps it as :attr:`last_eval`; the others wait and receive its metrics."""
        out = {}
        if self.is_main:
            result = current_evaluation(self, step)
            self.log_images("eval/samples", result.grid, step)
            out = dict(result.metrics)
        # every process gets the main one's numbers: the monitor's alarms and actions must agree on all ranks
        return dist.broadcast_object(out)
