"""Registration of psrl's built-in rewards (names -> lazy import targets)."""
from psrl.rewards.base import REWARDS

REWARDS.register("mean_color", "psrl.rewards.simple:MeanColorReward")
REWARDS.register("subject_consistency", "psrl.rewards.subject_consistency:SubjectConsistencyReward")
REWARDS.register("position", "psrl.rewards.position:PositionReward")
REWARDS.register("vlm_consistency", "psrl.rewards.vlm_rewards:VlmConsistencyReward")
REWARDS.register("semantic_alignment", "psrl.rewards.vlm_rewards:SemanticAlignmentReward")
REWARDS.register("edit_consistency", "psrl.rewards.vlm_rewards:EditConsistencyReward")
REWARDS.register("hpsv3", "psrl.rewards.hpsv3:HPSv3Reward")
REWARDS.register("pickscore", "psrl.rewards.preference:PickScoreReward")
REWARDS.register("clip_t", "psrl.rewards.preference:ClipTReward")
REWARDS.register("aesthetic", "psrl.rewards.preference:AestheticReward")
REWARDS.register("clip_i", "psrl.rewards.similarity:ClipIReward")
REWARDS.register("dino", "psrl.rewards.similarity:DinoReward")
REWARDS.register("remote", "psrl.serve.client:RemoteReward")
