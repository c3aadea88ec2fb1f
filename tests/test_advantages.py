"""Group-relative advantages against hand-computed numbers, NaN handling, the mode registry, the group sampler."""
import logging
import math

import pytest
import torch

from psrl.config import ConfigError
from psrl.rl.advantages import (ADVANTAGE_MODES, check_advantage_config, compute_advantages, get_advantage_mode,
                                group_normalize, weighted_advantages)
from psrl.rl.grpo_config import AdvantageConfig
from psrl.rl.sampler import GroupSampler, sample_seed

pytestmark = pytest.mark.unit


def test_group_normalize_group_and_global_std():
    v = torch.tensor([1.0, 2.0, 3.0, 4.0])
    g = torch.tensor([0, 0, 1, 1])
    # each group: mean 1.5 / 3.5, population std 0.5 -> (-0.5, 0.5) / 0.5
    assert group_normalize(v, g, "group", eps=0.0).tolist() == pytest.approx([-1, 1, -1, 1])
    # global population std of 1..4 = sqrt(1.25)
    s = math.sqrt(1.25)
    assert group_normalize(v, g, "global", eps=0.0).tolist() == pytest.approx([-0.5 / s, 0.5 / s] * 2)
    # eps is added to the std
    assert group_normalize(v, g, "group", eps=0.5).tolist() == pytest.approx([-0.5, 0.5, -0.5, 0.5])


def test_weighted_mode_sums_rewards_then_normalises_and_broadcasts_to_steps():
    rewards = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    weights = torch.tensor([2.0, 1.0])  # totals 2, 1, 3, 0
    g = torch.tensor([0, 0, 1, 1])
    adv = weighted_advantages(rewards, weights, g, AdvantageConfig(eps=0.0), (0, 1, 2), 4)
    assert adv.shape == (4, 3)
    assert adv[:, 0].tolist() == pytest.approx([1, -1, 1, -1])
    assert torch.equal(adv[:, 0], adv[:, 2])


def test_clip_and_zero_std_groups():
    rewards = torch.tensor([[0.0], [10.0], [5.0], [5.0]])
    g = torch.tensor([0, 0, 1, 1])
    cfg = AdvantageConfig(std_mode="global", eps=0.0, clip=1.0)
    res = compute_advantages(rewards, torch.ones(1), g, cfg, (0,), 2)
    # global std = sqrt(12.5) = 3.536: group 0 -> -/+1.414, clipped to -/+1; group 1 has zero spread -> 0
    assert res.advantages[:, 0].tolist() == pytest.approx([-1.0, 1.0, 0.0, 0.0])
    assert res.stats["zero_std_groups"] == 1 and res.stats["zero_std_ratio"] == pytest.approx(0.5)
    assert res.stats["adv_clipped_frac"] == pytest.approx(0.5)
    assert res.trained.all()


def test_nan_sample_leaves_its_group_and_small_groups_are_skipped(caplog):
    nan = float("nan")
    rewards = torch.tensor([[nan], [1.0], [2.0], [nan], [nan], [7.0], [3.0], [5.0], [4.0]])
    g = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    with caplog.at_level(logging.WARNING, logger="psrl.rl.advantages"):
        res = compute_advantages(rewards, torch.ones(1), g, AdvantageConfig(eps=0.0), (0, 1), 3)
    adv = res.advantages
    # group 0 is normalised over its two valid samples only (1, 2), not the NaN
    assert adv[1:3, 0].tolist() == pytest.approx([-1.0, 1.0])
    assert res.trained.tolist() == [False, True, True, False, False, False, True, True, True]
    # group 1 keeps one valid sample: skipped, advantage 0 for all its members
    assert adv[3:6].abs().sum() == 0
    # group 2 is untouched by the others: (3, 5, 4) -> mean 4, std sqrt(2/3)
    s = math.sqrt(2 / 3)
    assert adv[6:, 1].tolist() == pytest.approx([-1 / s, 1 / s, 0.0])
    assert res.stats["nan_samples"] == 3 and res.stats["skipped_groups"] == 1
    assert res.stats["num_trained_samples"] == 5
    assert "NaN" in caplog.text and "skipped" in caplog.text


def test_all_nan_gives_no_training_and_no_crash():
    res = compute_advantages(torch.full((4, 1), float("nan")), torch.ones(1), torch.tensor([0, 0, 1, 1]),
                             AdvantageConfig(), (0,), 2)
    assert not res.trained.any() and res.advantages.abs().sum() == 0 and res.stats["skipped_groups"] == 2


def test_mode_registry_errors_and_dotted_paths():
    assert get_advantage_mode("weighted") is weighted_advantages
    assert get_advantage_mode("psrl.rl.advantages:weighted_advantages") is weighted_advantages
    with pytest.raises(ConfigError, match="advantage.mode.*'nope'.*weighted"):
        get_advantage_mode("nope")
    ADVANTAGE_MODES.register("_broken_for_test", "psrl.rl.no_such_module:fn")
    try:
        with pytest.raises(ConfigError, match="_broken_for_test.*cannot be imported"):
            get_advantage_mode("_broken_for_test")
    finally:
        ADVANTAGE_MODES._entries.pop("_broken_for_test")
    for name in ("group_zscore", "log_tamed", "sars"):
        assert name in ADVANTAGE_MODES


def test_per_step_modes_and_bad_mode_output():
    rewards = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    g = torch.tensor([0, 0, 1, 1])

    def per_step(rewards, weights, group_ids, cfg, trained_steps, num_steps):
        base = weighted_advantages(rewards, weights, group_ids, cfg, trained_steps, num_steps)
        return base * torch.tensor([float(t) for t in trained_steps])  # step t gets t times the advantage

    res = compute_advantages(rewards, torch.ones(1), g, AdvantageConfig(eps=0.0, clip=2.5), (1, 3), 4, mode=per_step)
    assert res.advantages[0].tolist() == pytest.approx([-1.0, -2.5])  # -3 clipped to -2.5
    with pytest.raises(ValueError, match="shape"):
        compute_advantages(rewards, torch.ones(1), g, AdvantageConfig(), (1, 3), 4,
                           mode=lambda *a: torch.zeros(4, 5))


def test_group_sampler_is_identical_across_ranks_and_splits_contiguously():
    full = GroupSampler(num_records=5, groups_per_step=3, group_size=4, seed=7).assign(2)
    r0 = GroupSampler(5, 3, 4, seed=7, num_processes=2, process_index=0).assign(2)
    r1 = GroupSampler(5, 3, 4, seed=7, num_processes=2, process_index=1).assign(2)
    assert r0.record_indices == r1.record_indices == full.record_indices
    assert r0.sample_seeds == full.sample_seeds
    assert r0.local_record_indices + r1.local_record_indices == full.record_indices
    assert r0.local_group_ids == (0, 0, 0, 0, 1, 1) and r1.local_group_ids == (1, 1, 2, 2, 2, 2)  # group 1 spans
    prompts = GroupSampler(5, 3, 4, seed=7).prompts_for_step(2)
    assert len(set(prompts)) == 3  # drawn without replacement while the pool lasts
    assert full.record_indices == tuple(p for p in prompts for _ in range(4))
    assert len(set(full.sample_seeds)) == 12  # every sample its own noise seed
    assert sample_seed(7, 2, 0) == full.sample_seeds[0]
    many = GroupSampler(2, 5, 1, seed=0).prompts_for_step(0)
    assert len(many) == 5 and set(many) == {0, 1}  # more groups than prompts: passes over the pool


def test_group_only_modes_reject_global_std():
    from psrl.config import ConfigError
    from psrl.rl.run_config import load_run_config

    for mode in ("group_zscore", "sars"):
        with pytest.raises(ConfigError, match=f"std_mode: global has no effect with mode '{mode}'"):
            load_run_config(None, [f"advantage.mode={mode}", "advantage.std_mode=global"])
    assert load_run_config(None, ["advantage.mode=log_tamed", "advantage.std_mode=global"]).advantage.std_mode == \
        "global"


def _next_up(x: float) -> float:
    return float(torch.nextafter(torch.tensor(x), torch.tensor(math.inf)))


@pytest.mark.parametrize("mode,args,std_mode", [
    ("weighted", {}, "group"), ("weighted", {}, "global"), ("group_zscore", {}, "group"),
    ("sars", {"identity": 0, "prompt": 1, "tdw": True}, "group"),
    ("sars", {"identity": 0, "prompt": 1, "tdw": False}, "group"),
    ("log_tamed", {}, "group"), ("log_tamed", {}, "global"), ("log_tamed", {"normalize": "global_std"}, "group"),
    ("rank", {}, "group"), ("rank", {}, "global"), ("per_reward_normalized", {}, "group"),
    ("per_reward_normalized", {}, "global"), ("geometric_mean", {}, "group"), ("geometric_mean", {}, "global"),
    ("harmonic_mean", {}, "group"), ("harmonic_mean", {}, "global")])
@pytest.mark.parametrize("equal_totals", [True, False])
def test_rounding_level_group_gets_zero_and_is_counted_zero_std_in_every_mode(mode, args, std_mode, equal_totals):
    # group 0: the Customized-GRPO example, rewards 1 ulp (5.96e-8) apart. With advantage.eps 1e-8 it got
    # advantages up to 0.66 (sars) while the stats counted it zero-std when the weighted sums came out equal, and up
    # to 1.14 (weighted) when they did not.
    hi = _next_up(float(torch.tensor(0.8)))
    lo = float(torch.nextafter(torch.tensor(0.3), torch.tensor(0.0))) if equal_totals else float(torch.tensor(0.3))
    r = torch.tensor([[0.8, 0.3], [hi, lo], [0.8, 0.3], [hi, lo],
                      [0.1, 0.2], [0.5, 0.9], [0.3, 0.4], [0.7, 0.1]])
    assert bool(((r[:4] @ torch.tensor([0.5, 0.5])) == 0.55).all()) == equal_totals
    w = torch.tensor([0.5, 0.5])
    g = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    cfg = AdvantageConfig(mode=mode, std_mode=std_mode, eps=1e-8, clip=5.0, args=args)
    res = compute_advantages(r, w, g, cfg, (0, 12), 25)
    assert torch.equal(res.advantages[:4], torch.zeros(4, 2))
    assert res.advantages[4:].abs().max() > 0.1  # the real group still trains
    assert res.stats["zero_std_groups"] == 1 and res.stats["zero_std_ratio"] == pytest.approx(0.5)


def test_weighted_mode_formula_beside_a_rounding_level_group():
    hi = _next_up(10.0)
    # group 0: HPS-like totals 1 ulp apart at 10.0; group 1: totals 1, 2, 4 (mean 7/3, population std)
    r = torch.tensor([[10.0], [hi], [10.0], [1.0], [2.0], [4.0]])
    g = torch.tensor([0, 0, 0, 1, 1, 1])
    adv = group_normalize(r[:, 0], g, "group", eps=1e-8, magnitude=r[:, 0].abs())
    assert adv[:3].tolist() == [0.0, 0.0, 0.0]
    v = torch.tensor([1.0, 2.0, 4.0])
    assert adv[3:].tolist() == pytest.approx(((v - v.mean()) / (v.std(unbiased=False) + 1e-8)).tolist(), abs=1e-6)
    # the same group through compute_advantages (weighted mode) and exactly equal rewards: 0 even with eps 0
    res = compute_advantages(r, torch.ones(1), g, AdvantageConfig(eps=0.0), (0,), 1)
    assert res.advantages[:3].abs().sum() == 0 and res.stats["zero_std_groups"] == 1
    flat = torch.tensor([[3.0], [3.0], [1.0], [2.0]])
    res = compute_advantages(flat, torch.ones(1), torch.tensor([0, 0, 1, 1]), AdvantageConfig(eps=0.0), (0,), 1)
    assert res.advantages[:, 0].tolist() == [0.0, 0.0, -1.0, 1.0]  # was 0/0 = NaN with eps 0
    with pytest.raises(ValueError, match="std_mode"):
        group_normalize(r[:, 0], g, "per_group")


# ----------------------------------------------------------------------------- PaCo-GRPO's modes
PACO_MODES = ("rank", "per_reward_normalized", "geometric_mean", "harmonic_mean")
R = torch.tensor([[0.2, 3.0], [0.9, 1.0], [0.5, 2.0], [0.4, 8.0], [0.1, 4.0], [0.7, 6.0], [0.3, 5.0]])
G = torch.tensor([0, 0, 0, 1, 1, 1, 1])
W = torch.tensor([1.0, 0.25])


def _norm(v: torch.Tensor, g: torch.Tensor, std_mode: str, eps: float) -> list[float]:
    """``(v - mean_group) / (std + eps)`` with the population std of the group or of all values."""
    out = torch.empty_like(v, dtype=torch.float64)
    v = v.double()
    for gid in torch.unique(g):
        m = g == gid
        std = v.std(unbiased=False) if std_mode == "global" else v[m].std(unbiased=False)
        out[m] = (v[m] - v[m].mean()) / (std + eps)
    return out.tolist()


def test_paco_modes_are_registered():
    for name in PACO_MODES:
        assert callable(get_advantage_mode(name))
    assert get_advantage_mode("geometric_mean").unscorable is not None


@pytest.mark.parametrize("std_mode", ["group", "global"])
def test_rank_mode_is_weighted_on_within_group_ranks(std_mode):
    # group 0: col 0 [0.2, 0.9, 0.5] -> ranks [0, 1, 0.5]; col 1 [3, 1, 2] -> [1, 0, 0.5]
    # group 1: col 0 [0.4, 0.1, 0.7, 0.3] -> [2, 0, 3, 1] / 3; col 1 [8, 4, 6, 5] -> [3, 0, 2, 1] / 3
    ranks = torch.tensor([[0, 1], [1, 0], [0.5, 0.5], [2 / 3, 1], [0, 0], [1, 2 / 3], [1 / 3, 1 / 3]])
    cfg = AdvantageConfig(mode="rank", std_mode=std_mode, eps=1e-4)
    adv = compute_advantages(R, W, G, cfg, (0, 2), 4).advantages
    assert adv[:, 0].tolist() == pytest.approx(_norm(ranks @ W, G, std_mode, 1e-4), abs=1e-6)
    assert torch.equal(adv[:, 0], adv[:, 1])


@pytest.mark.parametrize("std_mode", ["group", "global"])
def test_per_reward_normalized_mode_formula_and_std_mode(std_mode):
    cfg = AdvantageConfig(mode="per_reward_normalized", std_mode=std_mode)
    adv = compute_advantages(R, W, G, cfg, (0,), 4).advantages[:, 0]
    cols = [torch.tensor(_norm(R[:, k], G, std_mode, 0.0)) for k in range(2)]  # stds are >> the 1e-6 floor
    assert adv.tolist() == pytest.approx((torch.stack(cols, 1).float() @ W).tolist(), abs=1e-5)
    floored = AdvantageConfig(mode="per_reward_normalized", std_mode=std_mode, args={"eps": 10.0})
    adv10 = compute_advantages(R, W, G, floored, (0,), 4).advantages[:, 0]
    means = torch.stack([R[G == g].mean(0) for g in G.tolist()])
    assert adv10.tolist() == pytest.approx((((R - means) / 10.0) @ W).tolist(), abs=1e-6)  # max(std, 10) = 10
    with pytest.raises(ValueError, match="unknown option.*'nope'"):
        compute_advantages(R, W, G, AdvantageConfig(mode="per_reward_normalized", args={"nope": 1}), (0,), 4)


@pytest.mark.parametrize("kind", ["geometric_mean", "harmonic_mean"])
@pytest.mark.parametrize("std_mode", ["group", "global"])
def test_mean_modes_group_normalise_the_scipy_mean(kind, std_mode):
    from scipy.stats import gmean, hmean

    oracle = gmean if kind == "geometric_mean" else hmean
    m = torch.tensor(oracle(R.double().numpy(), axis=1, weights=W.double().numpy()))
    cfg = AdvantageConfig(mode=kind, std_mode=std_mode, eps=1e-4)
    adv = compute_advantages(R, W, G, cfg, (1, 3), 4).advantages
    assert adv[:, 0].tolist() == pytest.approx(_norm(m, G, std_mode, 1e-4), abs=1e-5)
    assert torch.equal(adv[:, 0], adv[:, 1])
    # PaCo's released behaviour: the mean itself is the advantage
    raw = AdvantageConfig(mode=kind, clip=100.0, args={"normalize": "raw"})
    assert compute_advantages(R, W, G, raw, (1,), 4).advantages[:, 0].tolist() == pytest.approx(m.tolist(), rel=1e-6)
    with pytest.raises(ConfigError, match="std_mode: global has no effect .* normalize: raw"):
        check_advantage_config(AdvantageConfig(mode=kind, std_mode="global", args={"normalize": "raw"}), [1.0])
    with pytest.raises(ValueError, match="normalize.*'group' or 'raw'"):
        compute_advantages(R, W, G, AdvantageConfig(mode=kind, args={"normalize": "global"}), (1,), 4)


@pytest.mark.parametrize("kind", ["geometric_mean", "harmonic_mean"])
def test_negative_reward_under_a_mean_leaves_its_group_with_a_reason(kind, caplog):
    r = R.clone()
    r[1, 1] = -1.0  # group 0 keeps samples 0 and 2
    r[3:5, 0] = -0.5  # group 1 keeps samples 5 and 6
    cfg = AdvantageConfig(mode=kind, eps=1e-4)
    with caplog.at_level(logging.WARNING, logger="psrl.rl.advantages"):
        res = compute_advantages(r, W, G, cfg, (0,), 4)
    assert res.trained.tolist() == [True, False, True, False, False, True, True]
    assert res.stats["nan_samples"] == 3 and res.stats["mode_nan_samples"] == 3
    assert f"3 of 7 samples cannot be scored by advantage mode '{kind}'" in caplog.text
    assert "sample 1: reward column 1 is -1" in caplog.text
    # the remaining members are normalised among themselves, exactly as if the others were never there
    keep = res.trained
    alone = compute_advantages(r[keep], W, G[keep], cfg, (0,), 4)
    assert torch.equal(res.advantages[keep], alone.advantages)
    assert res.advantages[~keep].abs().sum() == 0
    # a negative reward is fine where no mean is taken
    assert compute_advantages(r, W, G, AdvantageConfig(), (0,), 4).trained.all()


def test_every_sample_unscorable_counts_as_an_unscored_step():
    r = -R
    res = compute_advantages(r, W, G, AdvantageConfig(mode="geometric_mean"), (0,), 4)
    assert not res.trained.any() and res.stats["nan_samples"] == 7  # what check_health's max_invalid_steps counts


def test_check_advantage_config_fails_before_a_run_on_what_a_mode_rejects():
    for name in ("weighted", "group_zscore", "log_tamed", *PACO_MODES):
        check_advantage_config(AdvantageConfig(mode=name), [1.0, 0.5], num_steps=4)
    check_advantage_config(AdvantageConfig(mode="sars"), [1.0, 0.5], num_steps=4)
    with pytest.raises(ConfigError, match="advantage \\(mode 'geometric_mean'\\): the geometric mean of the rewards "
                                          "needs reward weights >= 0"):
        check_advantage_config(AdvantageConfig(mode="geometric_mean"), [1.0, -0.5])
    with pytest.raises(ConfigError, match="advantage \\(mode 'rank'\\): advantage.args: unknown option"):
        check_advantage_config(AdvantageConfig(mode="rank", args={"eps": 1e-6}), [1.0])
    with pytest.raises(ConfigError, match="sars needs distinct 'identity' and 'prompt' reward columns"):
        check_advantage_config(AdvantageConfig(mode="sars"), [1.0])
    with pytest.raises(ConfigError, match="registered modes"):
        check_advantage_config(AdvantageConfig(mode="nope"), [1.0])
