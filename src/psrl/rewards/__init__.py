"""Rewards behind one protocol, a registry, and reward shaping (aggregation, TDW).

Registered names (``build_reward(name, args, device=...)``; every model-backed reward accepts ``path: tiny``):

=====================  ==========================================================================================
``subject_consistency``  PSR: detect, crop, embed, cosine per subject; Hungarian for same-phrase subjects
``position``             PSRBench / T2I-CompBench box geometry (``parse_relation``, ``position_score``)
``vlm_consistency``      VLM judge P(Yes) over (reference, generated) pairs (PaCo-Reward prompt)
``semantic_alignment``   VLM judge PSRBench 0-10 rubric per ``tags["subset"]``, scaled to [0, 1]
``edit_consistency``     sqrt(P(consistent) * P(follows instruction)) for (original, edited)
``t2is_consistency``     T2IS grid: mean VLM judge P(Yes) over all pairs of cells (PaCo template v1, the theme)
``t2is_clip_t``          T2IS grid: mean CLIP cosine of each cell with its sub-prompt (PaCo sub-figure CLIP-T)
``hpsv3``                HPSv3 mu (Qwen2-VL + reward head)
``pickscore`` / ``clip_t``  CLIP text-image scores;  ``aesthetic``: LAION MLP on CLIP features
``clip_i`` / ``dino``    image-image cosine to the references (DreamBench)
``remote``               any of the above through ``psrl serve rewards``
``mean_color``           model-free demo reward
``null_control``         no information (a hash of the pixels): GRPO on it measures reward-free drift
``pocket_subjects``      the pocket world's identity / semantics / fidelity, read from its known rendering
=====================  ==========================================================================================

Shaping: :mod:`psrl.rewards.aggregate` (``weighted_sum``, ``group_zscore``, ``log_tamed``, ``sars``,
``tdw_weights``).
"""
from psrl.rewards.base import REWARDS, CallableReward, Reward, RewardOutput, build_reward

__all__ = ["REWARDS", "CallableReward", "Reward", "RewardOutput", "build_reward"]
