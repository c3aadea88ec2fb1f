"""Published reward-model results to compare a ``psrl reward-model eval`` report with: the ConsistencyRank and
EditReward-Bench tables of PaCo-RL (arXiv 2512.04784), as the project page ships them in
X-GenGroup/HomePage_PaCo-RL@8746feb ``static/data/model_scores.json`` (copied value for value; other benchmarks of
that file are left out).

ConsistencyRank: accuracy, Kendall tau, Spearman rho and T1-B1, computed by X-GenGroup/PaCo-RL@08caac6
``PaCo-Reward/evaluation/Consistency_Rank/eval.py`` (tau and rho over candidate orderings: psrl's
``convention="paco"``). EditReward-Bench: pairwise accuracy per dimension.
"""
from __future__ import annotations

SOURCE = "X-GenGroup/HomePage_PaCo-RL@8746feb static/data/model_scores.json"

CONSISTENCY_RANK: dict[str, dict[str, float]] = {
    "Clip-I": {"accuracy": 0.394, "kendall_tau": 0.178, "spearman_rho": 0.206, "t1b1": 0.475},
    "DreamSim": {"accuracy": 0.403, "kendall_tau": 0.184, "spearman_rho": 0.214, "t1b1": 0.493},
    "InternVL3.5-8B": {"accuracy": 0.359, "kendall_tau": 0.149, "spearman_rho": 0.176, "t1b1": 0.420},
    "Qwen2.5-VL-7B": {"accuracy": 0.344, "kendall_tau": 0.118, "spearman_rho": 0.138, "t1b1": 0.401},
    "Qwen2.5-VL-32B": {"accuracy": 0.340, "kendall_tau": 0.106, "spearman_rho": 0.127, "t1b1": 0.395},
    "Qwen2.5-VL-72B": {"accuracy": 0.342, "kendall_tau": 0.117, "spearman_rho": 0.137, "t1b1": 0.398},
    "PaCo-Reward-7B-Fast": {"accuracy": 0.441, "kendall_tau": 0.240, "spearman_rho": 0.278, "t1b1": 0.544},
    "PaCo-Reward-7B": {"accuracy": 0.449, "kendall_tau": 0.250, "spearman_rho": 0.288, "t1b1": 0.557},
}

EDIT_REWARD_BENCH: dict[str, dict[str, float]] = {
    "GPT-4.1": {"prompt_following": 0.673, "consistency": 0.602, "overall": 0.705},
    "GPT-5": {"prompt_following": 0.777, "consistency": 0.669, "overall": 0.755},
    "Gemini2.5-Pro": {"prompt_following": 0.703, "consistency": 0.560, "overall": 0.722},
    "Qwen2.5-VL-7B": {"prompt_following": 0.458, "consistency": 0.325, "overall": 0.432},
    "Qwen2.5-VL-32B": {"prompt_following": 0.498, "consistency": 0.376, "overall": 0.563},
    "Qwen2.5-VL-72B": {"prompt_following": 0.540, "consistency": 0.435, "overall": 0.621},
    "EditScore-7B": {"prompt_following": 0.592, "consistency": 0.591, "overall": 0.659},
    "EditScore-32B": {"prompt_following": 0.638, "consistency": 0.556, "overall": 0.680},
    "EditScore-72B": {"prompt_following": 0.635, "consistency": 0.586, "overall": 0.703},
    "PaCo-Reward-7B-Fast": {"prompt_following": 0.748, "consistency": 0.697, "overall": 0.728},
    "PaCo-Reward-7B": {"prompt_following": 0.777, "consistency": 0.709, "overall": 0.751},
}

__all__ = ["CONSISTENCY_RANK", "EDIT_REWARD_BENCH", "SOURCE"]
