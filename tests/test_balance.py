"""Adaptive multi-reward balance: the pure pieces against closed forms (least-squares slope vs numpy.polyfit,
spread, disagreement, the weight rule and its bounds), the config checks, and on tiny FLUX a stalled reward raised
faster than with fixed weights."""
import math

import numpy as np
import pytest
import torch

from psrl.config import ConfigError
from psrl.rl.balance import RewardBalancer, adaptive_weights, disagreement_rate, group_spread, reward_slopes
from psrl.rl.run_config import load_run_config


@pytest.mark.unit
def test_slopes_match_numpy_polyfit_and_skip_nan():
    rng = np.random.default_rng(0)
    means = rng.normal(size=(6, 3))
    means[:, 1] += 0.3 * np.arange(6)
    got = reward_slopes(torch.tensor(means))
    for k in range(3):
        assert float(got[k]) == pytest.approx(np.polyfit(np.arange(6), means[:, k], 1)[0], rel=1e-6)
    means[2, 0] = np.nan
    ok = np.isfinite(means[:, 0])
    assert float(reward_slopes(torch.tensor(means))[0]) == pytest.approx(
        np.polyfit(np.arange(6)[ok], means[ok, 0], 1)[0], rel=1e-6)
    assert math.isnan(float(reward_slopes(torch.tensor([[1.0], [math.nan]]))[0]))


@pytest.mark.unit
def test_group_spread_and_disagreement():
    rewards = torch.tensor([[0.0, 1.0], [1.0, 0.0], [2.0, 5.0], [4.0, 6.0]])
    gid = torch.tensor([0, 0, 1, 1])
    spread = group_spread(rewards, gid)
    assert float(spread[0]) == pytest.approx((0.5 + 1.0) / 2) and float(spread[1]) == pytest.approx((0.5 + 0.5) / 2)
    # group 0: reward 0's best (sample 1) is reward 1's worst; group 1: they agree
    assert disagreement_rate(rewards, gid) == pytest.approx(0.5)
    assert disagreement_rate(rewards[:, :1], gid) == 0.0  # one reward: nothing to disagree with
    flat = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    assert disagreement_rate(flat, torch.tensor([0, 0])) == 0.0  # a flat reward has no best or worst


@pytest.mark.unit
def test_weight_rule_moves_weight_to_the_stalled_reward_within_bounds():
    base = torch.tensor([1.0, 0.5])
    slopes, spreads = torch.tensor([0.2, 0.0]), torch.tensor([0.1, 0.1])
    w = adaptive_weights(base, slopes, spreads, 1.0, bounds=(0.5, 3.0))
    # progress (2, 0): target_0 = 1 / 2 = 0.5, target_1 = huge -> clipped to 3
    assert w.tolist() == pytest.approx([0.5, 1.5])
    half = adaptive_weights(base, slopes, spreads, 0.125, bounds=(0.5, 3.0), disagreement_ref=0.25)
    assert half.tolist() == pytest.approx([0.75, 1.0])  # half the gate: half the shift
    assert adaptive_weights(base, slopes, spreads, 0.0).tolist() == pytest.approx(base.tolist())
    # nobody progresses (or all equally): the configured weights
    assert adaptive_weights(base, torch.tensor([-0.1, 0.0]), spreads, 1.0).tolist() == pytest.approx([1.0, 0.5])
    assert adaptive_weights(base, torch.tensor([0.3, 0.3]), spreads, 1.0).tolist() == pytest.approx([1.0, 0.5])
    # scale-free: the same progress in each reward's own spread gives equal multipliers
    assert adaptive_weights(base, torch.tensor([1.0, 0.01]), torch.tensor([10.0, 0.1]), 1.0).tolist() == \
        pytest.approx([1.0, 0.5])
    with pytest.raises(ValueError, match="bounds"):
        adaptive_weights(base, slopes, spreads, 1.0, bounds=(1.5, 3.0))


@pytest.mark.unit
def test_balancer_warms_up_then_adapts_and_fixed_never_moves():
    base = torch.tensor([1.0, 1.0])
    gid = torch.tensor([0, 0, 1, 1])
    adaptive, fixed = RewardBalancer(base, "adaptive", window=3), RewardBalancer(base, "fixed", window=3)
    for step in range(3):
        assert adaptive.weights().tolist() == [1.0, 1.0]
        # reward 0 climbs, reward 1 is flat on average; within each group they rank the samples oppositely
        r = torch.tensor([[step + 0.0, 1.0], [step + 1.0, 0.0], [step + 0.0, 1.0], [step + 1.0, 0.0]])
        adaptive.observe(r, gid)
        fixed.observe(r, gid)
    w = adaptive.weights()
    # progress (1 / spread, 0): target_0 = mean / progress_0 = 0.5, target_1 clipped to the upper bound 4
    assert w[0] == pytest.approx(0.5) and w[1] == pytest.approx(4.0)
    assert fixed.weights().tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="fixed' or 'adaptive"):
        RewardBalancer(base, "auto")


@pytest.mark.unit
def test_balancer_state_round_trips_through_json_and_continues_identically():
    import json

    base = torch.tensor([1.0, 2.0])
    gid = torch.tensor([0, 0, 1, 1])
    gen = torch.Generator().manual_seed(0)
    steps = [torch.rand(4, 2, generator=gen) * (1 + s) for s in range(6)]
    steps[1][0, 1] = float("nan")  # an unscorable sample: its NaN mean must survive the JSON (written as null)
    steps[2][:, 1] = float("nan")  # a reward that scored nothing this step: its mean and spread are NaN
    a = RewardBalancer(base, "adaptive", window=3)
    for r in steps[:4]:
        a.observe(r, gid)
    text = json.dumps(a.state_dict(), allow_nan=False)  # strict JSON
    b = RewardBalancer(base, "adaptive", window=3)
    b.load_state_dict(json.loads(text))
    assert len(b.means) == 3 and all(torch.equal(x, y) or torch.allclose(x, y, equal_nan=True)
                                     for x, y in zip(a.means + a.spreads, b.means + b.spreads))
    for r in steps[4:]:
        assert torch.equal(a.weights(), b.weights())
        a.observe(r, gid)
        b.observe(r, gid)
    assert torch.equal(a.weights(), b.weights()) and not torch.equal(a.weights(), base)
    # a window saved with another number of rewards is refused; an empty (fresh) state is the default
    with pytest.raises(ValueError, match="rows of \\[2\\] rewards, the run has 3"):
        RewardBalancer(torch.ones(3), "adaptive").load_state_dict(a.state_dict())
    fresh = RewardBalancer(base, "adaptive", window=3)
    fresh.load_state_dict({})
    assert fresh.means == [] and torch.equal(fresh.weights(), base)


@pytest.mark.unit
def test_config_checks():
    cfg = load_run_config(None, ["advantage.balance=adaptive", "advantage.balance_bounds=[0.5, 2.0]"])
    assert cfg.advantage.balance == "adaptive" and cfg.advantage.balance_bounds == (0.5, 2.0)
    with pytest.raises(ConfigError, match="advantage.balance"):
        load_run_config(None, ["advantage.balance=auto"])
    with pytest.raises(ConfigError, match="balance_bounds must satisfy"):
        load_run_config(None, ["advantage.balance_bounds=[1.5, 2.0]"])


def big_darkness(images, records):
    """Four times the darkness 1 - mean pixel: its within-group spread dominates a fixed-weight sum."""
    return 4.0 * (1.0 - images.float().mean(dim=(1, 2, 3)))


def brightness(images, records):
    """The mean pixel: the reward that stalls (falls) under fixed weights, since big_darkness opposes it."""
    return images.float().mean(dim=(1, 2, 3))


@pytest.mark.component
def test_adaptive_raises_the_stalled_reward_faster_than_fixed(tmp_path):
    """Two opposed rewards, one four times the scale of the other. With fixed weights the big one owns the advantage
    and brightness falls; the adaptive balance sees brightness stall, shifts weight to it (within [0.25, 4]) and
    brightness rises instead. Measured (seeded, one thread): mean brightness of steps 5..8 minus step 4 is +0.009 with
adaptive, -0.006 with fixed (the within-group spread is ~0.002); the test asserts only the signs."""
    from psrl.rl.grpo_trainer import GRPOTrainer

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        curves, weights = {}, {}
        for mode in ("fixed", "adaptive"):
            cfg = load_run_config(None, [
                f"run.output_dir={tmp_path}", f"run.name={mode}", "train.groups_per_step=2", "train.group_size=4",
                "train.sample_batch_size=8", "train.train_batch_size=8", "sampling.num_steps=3", "eval.every=0",
                "train.max_steps=8", "train.lr=0.1", f"advantage.balance={mode}", "advantage.balance_window=3",
                "rewards=[{name: 'test_balance:big_darkness', weight: 1.0}, "
                "{name: 'test_balance:brightness', weight: 1.0}]"])
            history = GRPOTrainer(cfg).train()
            curves[mode] = [m["reward/test_balance:brightness/mean"] for m in history]
            weights[mode] = [m.get("adv/weight/test_balance:brightness") for m in history]
    finally:
        torch.set_num_threads(n)
    gain = {mode: sum(c[4:]) / 4 - c[3] for mode, c in curves.items()}
    assert gain["adaptive"] > 0 > gain["fixed"], (curves, weights)
    assert weights["fixed"] == [None] * 8  # fixed logs no weights
    assert weights["adaptive"][:3] == [1.0] * 3 and max(weights["adaptive"][3:]) > 1.0
