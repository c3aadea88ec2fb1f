"""``REWARDS``: the reward registry, filled with psrl's built-in names (name -> ``"module:Class"``, imported on first
use, so importing this module loads no model code). It imports only :mod:`psrl.registry`; :mod:`psrl.rewards.base`
builds rewards from it, so the registry sits below every reward module and nothing imports back up."""
from psrl.registry import Registry

REWARDS = Registry("reward")

# alike on purpose: one registration per built-in name

REWARDS.register("mean_color", "psrl.rewards.simple:MeanColorReward")
REWARDS.register("null_control", "psrl.rewards.simple:NullControlReward")
REWARDS.register("subject_consistency", "psrl.rewards.subject_consistency:SubjectConsistencyReward")
REWARDS.register("position", "psrl.rewards.position:PositionReward")
REWARDS.register("vlm_consistency", "psrl.rewards.vlm_rewards:VlmConsistencyReward")
REWARDS.register("semantic_alignment", "psrl.rewards.vlm_rewards:SemanticAlignmentReward")
REWARDS.register("edit_consistency", "psrl.rewards.vlm_rewards:EditConsistencyReward")
REWARDS.register("t2is_consistency", "psrl.rewards.t2is:T2ISConsistencyReward")
REWARDS.register("t2is_clip_t", "psrl.rewards.t2is:T2ISClipTReward")
REWARDS.register("hpsv3", "psrl.rewards.hpsv3:HPSv3Reward")
REWARDS.register("pickscore", "psrl.rewards.preference:PickScoreReward")
REWARDS.register("clip_t", "psrl.rewards.preference:ClipTReward")
REWARDS.register("aesthetic", "psrl.rewards.preference:AestheticReward")
REWARDS.register("clip_i", "psrl.rewards.similarity:ClipIReward")
REWARDS.register("dino", "psrl.rewards.similarity:DinoReward")
REWARDS.register("remote", "psrl.serve.client:RemoteReward")
REWARDS.register("pocket_subjects", "psrl.world.reward:PocketSubjectsReward")
