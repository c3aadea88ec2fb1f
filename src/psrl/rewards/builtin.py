"""Registration of psrl's built-in rewards (names -> lazy import targets)."""
from psrl.rewards.base import REWARDS

REWARDS.register("mean_color", "psrl.rewards.simple:MeanColorReward")
REWARDS.register("subject_consistency", "psrl.rewards.subject_consistency:SubjectConsistencyReward")
REWARDS.register("position", "psrl.rewards.position:PositionReward")
