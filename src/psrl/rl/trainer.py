"""Moved to :mod:`psrl.rl.grpo_trainer` (TRL naming); this alias goes away once every caller is updated."""
from psrl.rl.grpo_trainer import *  # noqa: F401,F403
from psrl.rl.grpo_trainer import GRPOTrainer  # noqa: F401
