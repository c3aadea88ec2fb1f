"""Registration of psrl's built-in rewards (names -> lazy import targets)."""
from psrl.rewards.base import REWARDS

REWARDS.register("mean_color", "psrl.rewards.simple:MeanColorReward")
