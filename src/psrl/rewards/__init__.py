"""Rewards behind one protocol, a registry, and reward shaping (aggregation, TDW)."""
from psrl.rewards.base import REWARDS, CallableReward, Reward, RewardOutput, build_reward

__all__ = ["REWARDS", "CallableReward", "Reward", "RewardOutput", "build_reward"]
