"""The GRPO part of a run config: optimisation, batch sizes, clipping, EMA and advantages.

Every field's default follows Flow-GRPO's released configs (arXiv 2505.05470; yifan123/flow_grpo@ac4c86e
``config/base.py`` and ``config/grpo.py``) unless the docstring says otherwise. Values are validated in
``__post_init__``; :func:`psrl.config.from_dict` turns the ``ValueError`` into a :class:`~psrl.config.ConfigError`
that names the section.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from psrl.config import check_range
from psrl.rl.training_config import TrainingConfig


@dataclass
class EmaConfig:
    """Exponential moving average of the trainable (LoRA) weights, used for evaluation and saved LoRA only.

    Attributes:
        enabled: keep an EMA at all.
        decay: the largest decay; the effective decay warms up as ``min(decay, (1 + n) / (10 + n))`` with ``n``
            the number of EMA updates so far (Flow-GRPO: 0.9).
        every: update the EMA every this many optimizer updates (Flow-GRPO: 8).
    """

    enabled: bool = False
    decay: float = 0.9
    every: int = 8

    def __post_init__(self):
        check_range(self, "decay", 0, 1, hi_open=True, section="ema")
        check_range(self, "every", 1, section="ema")


@dataclass
class OldPolicyConfig:
    """PaCo-GRPO's old policy (:mod:`psrl.rl.old_policy`): roll out with a separate copy of the weights and
    recompute the old log-probs with it at update time.

    Attributes:
        enabled: keep an old policy (``train.loss: guard | nft`` always keep one).
        decay_type: after each step ``old <- d old + (1 - d) current`` with ``d`` from schedule 0 (copy),
            1 (min(0.001 n, 0.5)) or 2 (min(max(n - 75, 0) 0.0075, 0.999)), n = optimizer updates so far;
            null: PaCo's default for the loss (1 for nft, else 0).
    """

    enabled: bool = False
    decay_type: Literal[0, 1, 2] | None = None


@dataclass
class TrainConfig(TrainingConfig):
    """Optimisation and the shape of one GRPO step (and the optimizer, checkpoint and logging keys of
    :class:`~psrl.rl.training_config.TrainingConfig`).

    One *step* of a run is one GRPO iteration: roll out ``groups_per_step * group_size`` images (over all
    processes), score them, compute advantages, then run ``num_inner_epochs`` passes of updates over them.

    Attributes:
        max_steps: GRPO steps to run.
        groups_per_step: prompts drawn per step (each repeated ``group_size`` times), summed over processes.
        group_size: ``G``, images per prompt.
        sample_batch_size: images per rollout call on one process.
        train_batch_size: images per training micro-batch on one process; must divide ``sample_batch_size``
            (micro-batches are slices of one rollout batch, so they share its trained steps).
        gradient_accumulation: micro-batches (each over all trained steps) per optimizer update.
        num_inner_epochs: passes over the step's samples.
        lr, betas, weight_decay, adam_eps: AdamW (Flow-GRPO: 3e-4, (0.9, 0.999), 1e-4, 1e-8).
        clip_range: PPO ratio clip ``epsilon`` (1e-4 for the mean-reduced log-prob; Fast: 1e-5).
        beta: KL-to-reference weight (0 = no reference forward pass).
        kl_compat_dt: multiply the KL by ``|dt|`` as Flow-GRPO's code does, so its published ``beta`` transfers.
        seed: seeds prompt draws (``seed + step``), rollout noise and everything else.
        max_invalid_steps: stop the run (checkpoint saved, exit 1) after this many consecutive steps in which no
            sample could be scored (every reward NaN); 0 never stops.
        ema: EMA of the LoRA weights.
        loss: ppo (Flow-GRPO's PPO-clip), guard (GRPO-Guard, arXiv 2510.22319) or nft (DiffusionNFT, arXiv
            2509.16117; no log-probs, any sampler); see psrl.rl.loss_types.
        nft_beta: DiffusionNFT's beta, the step of the implicit positive/negative policies (PaCo default 1).
        old_policy: PaCo-GRPO's decoupled old policy.
        async_rewards: score each rollout batch on a worker thread while the next batch is generated (the same
            scores as sequential order; the step's reward phase then costs only what does not overlap).
        param_noise_std: Gaussian noise added to the trained weights before each step's updates (PaCo; 0 = off;
            its authors found < 0.01 harmless, larger collapses).
        cfg_grad: the update's gradient through true CFG ``v_u + w (v_c - v_u)`` (SD3, Qwen-Image-Edit-Plus; no
            effect on FLUX and Kontext, whose guidance is distilled): ``both`` (the true gradient of the sampling
            policy, psrl's default) or ``cond_only`` (the unconditional branch detached, as Flow-GRPO's
            train_sd3.py).
    """

    # alike on purpose: a typed field list (every config section has one; a scanner sees their shape alike)
    max_steps: int = 100
    groups_per_step: int = 48
    group_size: int = 24
    sample_batch_size: int = 3
    train_batch_size: int = 3
    gradient_accumulation: int = 1
    num_inner_epochs: int = 1
    clip_range: float = 1e-4
    beta: float = 0.0
    kl_compat_dt: bool = False
    max_invalid_steps: int = 3
    ema: EmaConfig = field(default_factory=EmaConfig)
    loss: Literal["ppo", "guard", "nft"] = "ppo"
    nft_beta: float = 1.0
    old_policy: OldPolicyConfig = field(default_factory=OldPolicyConfig)
    param_noise_std: float = 0.0
    async_rewards: bool = True
    cfg_grad: Literal["both", "cond_only"] = "both"

    def __post_init__(self):
        super().__post_init__()
        check_range(self, ("max_steps", "groups_per_step", "sample_batch_size", "train_batch_size",
                           "gradient_accumulation", "num_inner_epochs"), 1, section="train")
        check_range(self, ("max_invalid_steps", "param_noise_std", "beta"), 0, section="train")
        check_range(self, ("clip_range", "nft_beta"), 0, lo_open=True, section="train")
        if self.group_size < 2:
            raise ValueError(f"train.group_size must be >= 2 (GRPO compares the images of a group; a group of "
                             f"{self.group_size} has no spread and never trains), got {self.group_size}")
        if self.sample_batch_size % self.train_batch_size:
            raise ValueError(f"train.train_batch_size ({self.train_batch_size}) must divide "
                             f"train.sample_batch_size ({self.sample_batch_size})")


@dataclass
class AdvantageConfig:
    """How per-sample rewards become advantages (see :mod:`psrl.rl.advantages`).

    Attributes:
        mode: a name in ``psrl.rl.advantages.ADVANTAGE_MODES`` (``weighted`` = weighted reward sum, then group
            normalisation; ``group_zscore``, ``log_tamed``, ``sars``, ``rank``, ``per_reward_normalized``,
            ``geometric_mean``, ``harmonic_mean`` live in ``psrl.rl.shaped_advantages``) or a dotted
            ``module:function`` with the same signature.
        std_mode: ``group`` (divide by each prompt group's std) or ``global`` (by the std of all gathered rewards,
            Flow-GRPO's ``global_std``). ``group_zscore`` and ``sars`` always z-score each reward within its group
            (as Customized-GRPO), so they require ``group``; ``log_tamed`` takes it as its default ``normalize``.
        eps: added to the std before dividing (Flow-GRPO: 1e-4).
        clip: advantages are clipped to ``[-clip, clip]`` after the mode (Flow-GRPO ``adv_clip_max``: 5).
        args: mode-specific options (e.g. SARS ``gamma``), read by the mode function.
        balance: ``fixed`` (the configured reward weights every step) or ``adaptive`` (psrl's extension,
            psrl.rl.balance: shift weight toward rewards whose step mean stalls, by how often the rewards disagree
            within a group; the weights used are logged as ``adv/weight/<reward>``).
        balance_window: steps of history the adaptive balance reads (configured weights until it is full).
        balance_bounds: ``[lo, hi]``: each adaptive weight stays within ``[lo, hi]`` times its configured weight
            (``0 < lo <= 1 <= hi``).
        balance_disagreement: the within-group disagreement rate (one reward's best sample is another's worst) at
            which the adaptive shift is applied in full; below it, proportionally less.
        per_subject: per-subject credit for rewards that report per-subject scores (subject_consistency's
            ``details["per_subject"]``; psrl's extension): ``off``, or each subject's score z-scored in its group and
            combined by ``mean``, ``min`` (the worst subject) or ``weakest`` (the sample's lowest subject weighted
            ``per_subject_weakest_weight``); see psrl.rl.advantages.per_subject_scores.
        per_subject_weakest_weight: the weight of the weakest subject under ``per_subject: weakest`` (>= 1).
    """

    mode: str = "weighted"
    std_mode: Literal["group", "global"] = "group"
    eps: float = 1e-4
    clip: float = 5.0
    args: dict[str, Any] = field(default_factory=dict)
    balance: Literal["fixed", "adaptive"] = "fixed"
    balance_window: int = 5
    balance_bounds: tuple[float, float] = (0.25, 4.0)
    balance_disagreement: float = 0.25
    # `| bool`: YAML 1.1 reads a bare `off` as false; __post_init__ turns it back into "off"
    per_subject: Literal["off", "mean", "min", "weakest"] | bool = "off"
    per_subject_weakest_weight: float = 2.0

    def __post_init__(self):
        lo, hi = self.balance_bounds
        if not 0 < lo <= 1 <= hi or self.balance_window < 2 or self.balance_disagreement <= 0:
            raise ValueError(f"advantage.balance_bounds must satisfy 0 < lo <= 1 <= hi, balance_window >= 2 and "
                             f"balance_disagreement > 0, got {list(self.balance_bounds)}, {self.balance_window}, "
                             f"{self.balance_disagreement}")
        if isinstance(self.per_subject, bool):
            if self.per_subject:
                raise ValueError("advantage.per_subject: true names no combination; use mean, min or weakest")
            self.per_subject = "off"
        check_range(self, "per_subject_weakest_weight", 1, section="advantage")
        if self.std_mode == "global" and self.mode in ("group_zscore", "sars"):
            raise ValueError(f"advantage.std_mode: global has no effect with mode {self.mode!r}, which z-scores each "
                             f"reward within its group (Customized-GRPO); set std_mode: group")
        check_range(self, "eps", 0, section="advantage")
        check_range(self, "clip", 0, lo_open=True, section="advantage")
