"""Rewards scored on a worker thread while the next rollout batch is generated give the same run as sequential
scoring: same rewards, same advantages, same weights."""
import pytest
import torch

from psrl.rewards.base import RewardOutput
from psrl.rl.grpo_trainer import GRPOTrainer
from psrl.rl.run_config import load_run_config
from psrl.rl.signals import TrainingStopped

pytestmark = pytest.mark.component

BASE = ["train.groups_per_step=2", "train.group_size=4", "train.sample_batch_size=2", "train.train_batch_size=2",
        "sampling.num_steps=3", "eval.every=0", "train.max_steps=2"]


def _run(tmp_path, name, async_rewards):
    t = GRPOTrainer(load_run_config(None, [f"run.output_dir={tmp_path}", f"run.name={name}", *BASE,
                                           f"train.async_rewards={str(async_rewards).lower()}"]))
    history = t.train()
    return t, history


def test_async_rewards_equal_sequential_bit_for_bit(tmp_path):
    a, ha = _run(tmp_path, "async", True)
    s, hs = _run(tmp_path, "seq", False)
    for ma, ms in zip(ha, hs):
        assert ma["reward/total/mean"] == ms["reward/total/mean"]
        assert ma["reward/total/std"] == ms["reward/total/std"]
        assert ma["adv/adv_abs_mean"] == ms["adv/adv_abs_mean"]
    assert all(torch.equal(p, q) for p, q in zip(a.params, s.params))
    assert ha[0]["time/reward_busy"] > 0


def test_an_async_reward_error_still_ends_the_run_cleanly(tmp_path):
    t = GRPOTrainer(load_run_config(None, [f"run.output_dir={tmp_path}", "run.name=e", *BASE]))
    calls = []

    def flaky(images, records):
        calls.append(len(records))
        if len(calls) == 3:  # the third rollout batch, scored while the fourth is generated
            raise RuntimeError("judge server went away")
        return RewardOutput(scores=torch.rand(len(records)), failures=[None] * len(records))

    t.rewards[0] = type("R", (), {"name": "judge", "__call__": staticmethod(flaky)})()
    with pytest.raises(TrainingStopped, match="reward 'judge' raised RuntimeError: judge server went away"):
        t.train()
