"""Moved to :mod:`psrl.rl.sft_trainer` (TRL naming); this alias goes away once every caller is updated."""
from psrl.rl.sft_trainer import *  # noqa: F401,F403
from psrl.rl.sft_trainer import SFTTrainer, load_target, sample_sigmas  # noqa: F401
