"""Reward shaping formulas checked against hand-computed numbers (Customized-GRPO, arXiv 2510.18263; PaCo-RL,
arXiv 2512.04784)."""
import math

import pytest
import torch

from psrl.rewards import aggregate as ag

pytestmark = pytest.mark.unit


def test_weighted_sum_numbers_and_nan():
    r = torch.tensor([[1.0, 2.0], [0.5, float("nan")]])
    out = ag.weighted_sum(r, torch.tensor([0.4, 0.6]))
    assert out[0].item() == pytest.approx(0.4 + 1.2)
    assert math.isnan(out[1].item())


def test_group_zscore_matches_formula():
    # group 0: r1 = [1, 2, 3] (mean 2, unbiased std 1); r2 = [10, 10, 13] (mean 11, std sqrt(3))
    r = torch.tensor([[1.0, 10.0], [2.0, 10.0], [3.0, 13.0], [5.0, 1.0], [7.0, 3.0]])
    g = torch.tensor([0, 0, 0, 1, 1])
    w = torch.tensor([0.5, 2.0])
    out = ag.group_zscore(r, w, g, eps=0.0)
    s3 = math.sqrt(3.0)
    expected0 = [0.5 * -1 + 2 * (-1 / s3), 0.5 * 0 + 2 * (-1 / s3), 0.5 * 1 + 2 * (2 / s3)]
    # group 1: each column [a, b] -> (-1/sqrt2, 1/sqrt2) with unbiased std |a-b|/sqrt2
    e = 1 / math.sqrt(2)
    expected1 = [0.5 * -e + 2 * -e, 0.5 * e + 2 * e]
    assert out.tolist() == pytest.approx(expected0 + expected1, abs=1e-6)


def test_group_zscore_nan_sample_gets_zero_and_is_ignored_in_stats():
    r = torch.tensor([[1.0], [3.0], [float("nan")]])
    out = ag.group_zscore(r, torch.tensor([1.0]), torch.tensor([0, 0, 0]), eps=0.0)
    s = math.sqrt(2.0)
    assert out.tolist() == pytest.approx([-1 / s, 1 / s, 0.0])


def test_coefficient_of_variation_and_log_tame_mask():
    # column 0: [1, 3] -> std 1 (population), mean 2, h = 0.5; column 1: [10, 10.2] -> h ~ 0.00990
    r = torch.tensor([[1.0, 10.0], [3.0, 10.2]])
    h = ag.coefficient_of_variation(r)
    assert h[0].item() == pytest.approx(1 / (2 + 1e-6))
    assert h[1].item() == pytest.approx(0.1 / (10.1 + 1e-6), rel=1e-5)
    tamed, mask = ag.log_tame(r, "mean")
    assert mask.tolist() == [True, False]
    assert tamed[:, 0].tolist() == pytest.approx([math.log(2.0), math.log(4.0)])
    assert tamed[:, 1].tolist() == pytest.approx([10.0, 10.2])
    _, mask_num = ag.log_tame(r, 0.001)
    assert mask_num.tolist() == [True, True]


def test_log_tamed_group_normalised_and_raw_compat():
    r = torch.tensor([[1.0, 10.0], [3.0, 10.2]])
    w = torch.tensor([1.0, 0.5])
    g = torch.tensor([0, 0])
    R = torch.tensor([math.log(2) + 5.0, math.log(4) + 5.1])
    raw = ag.log_tamed(r, w, g, normalize="raw")
    assert raw.tolist() == pytest.approx(R.tolist(), rel=1e-6)
    norm = ag.log_tamed(r, w, g)
    std = float(R.std(unbiased=False))
    assert norm.tolist() == pytest.approx(((R - R.mean()) / std).tolist(), rel=1e-5)
    assert norm.tolist() == pytest.approx([-1.0, 1.0], abs=1e-5)  # two samples: +-1 with the population std


def test_log_tamed_rejects_values_at_or_below_minus_one():
    r = torch.tensor([[-1.0, 1.0], [5.0, 1.0]])
    with pytest.raises(ValueError, match="column 0"):
        ag.log_tamed(r, torch.tensor([1.0, 1.0]), torch.tensor([0, 0]))


@pytest.mark.parametrize("a_id,a_p,gamma,expected", [
    (-0.5, -0.67, 1.0, 0.5 * (-1.17) - math.tanh(0.335)),     # joint failure: the paper's figure, -0.908
    (-0.4, 0.56, 1.0, 0.5 * 0.16 + math.tanh(-0.224)),        # identity failure: the paper's figure, -0.14
    (0.7, 0.95, 0.4, 0.5 * 1.65 + 0.4 * math.tanh(0.665)),    # both positive: amplified
    (0.0, -2.0, 0.4, -1.0 - 0.4 * math.tanh(0.0)),            # exactly zero product: no bonus
])
def test_sars_formula(a_id, a_p, gamma, expected):
    out = ag.sars(torch.tensor([a_id]), torch.tensor([a_p]), gamma=gamma, w_identity=0.5, w_prompt=0.5)
    assert out.item() == pytest.approx(expected, abs=1e-6)


def test_sars_figure_values_and_clip():
    assert ag.sars(-0.5, -0.67, 1.0).item() == pytest.approx(-0.908, abs=1e-3)
    assert ag.sars(-0.4, 0.56, 1.0).item() == pytest.approx(-0.14, abs=1e-3)
    assert ag.sars(10.0, 10.0, 0.4, 0.5, 0.5, clip=5.0).item() == 5.0
    assert ag.sars(10.0, 10.0, 0.4, 0.5, 0.5, clip=None).item() == pytest.approx(10.4)


def test_tdw_table_at_25_steps():
    table = {0: .700, 5: .700, 6: .684, 7: .667, 8: .633, 9: .576, 10: .500, 11: .424, 12: .367, 13: .333,
             14: .316, 15: .307, 16: .303, 17: .301, 19: .300, 21: .300, 22: .500, 24: .500}
    for t, w_p in table.items():
        w_id, wp = ag.tdw_weights(t, 25)
        assert wp == pytest.approx(w_p, abs=6e-4), t
        assert w_id + wp == pytest.approx(1.0)


def test_tdw_stretched_and_compat():
    # 50 steps: step 20 is 40% of the way, the same as step 10 of 25
    assert ag.tdw_weights(20, 50) == pytest.approx(ag.tdw_weights(10, 25))
    assert ag.tdw_weights(11, 50)[1] == pytest.approx(0.7)            # t = 5.5 < 6
    assert ag.tdw_weights(44, 50)[1] == pytest.approx(0.5)            # t = 22
    # compat: the loop counter is used as-is, whatever num_steps says
    assert ag.tdw_weights(10, 12, compat_loop_counter=True) == pytest.approx(ag.tdw_weights(10, 25))
    with pytest.raises(ValueError):
        ag.tdw_weights(25, 25)


class _Cfg:
    def __init__(self, **args):
        self.mode, self.std_mode, self.eps, self.clip, self.args = "sars", "group", 1e-8, 5.0, args


def test_shaped_advantage_modes_shapes_and_values():
    from psrl.rl import shaped_advantages as sa

    r = torch.tensor([[0.9, 7.0], [0.5, 8.0], [0.7, 6.0], [0.2, 5.0]])
    g = torch.tensor([0, 0, 0, 1])[:3]
    r3 = r[:3]
    w = torch.tensor([0.5, 0.5])
    steps = (0, 10, 23)
    z = ag.per_reward_zscore(r3, g, eps=1e-8)
    out = sa.sars(r3, w, g, _Cfg(gamma=0.4), steps, 25)
    assert out.shape == (3, 3)
    for j, t in enumerate(steps):
        w_id, w_p = ag.tdw_weights(t, 25)
        assert out[:, j].tolist() == pytest.approx(ag.sars(z[:, 0], z[:, 1], 0.4, w_id, w_p).tolist(), abs=1e-6)
    assert not torch.allclose(out[:, 0], out[:, 1])  # TDW gives each trained step its own mixture
    static = sa.sars(r3, torch.tensor([0.3, 0.7]), g, _Cfg(tdw=False), steps, 25)
    assert static[:, 0].tolist() == pytest.approx(ag.sars(z[:, 0], z[:, 1], 0.4, 0.3, 0.7).tolist(), abs=1e-6)
    swapped = sa.sars(r3[:, [1, 0]], w, g, _Cfg(identity=1, prompt=0), steps, 25)
    assert torch.allclose(swapped, out)
    compat = sa.sars(r3, w, g, _Cfg(tdw_compat_loop_counter=True), (20, 3), 25)
    assert compat[:, 0].tolist() == pytest.approx(sa.sars(r3, w, g, _Cfg(), (0,), 25)[:, 0].tolist())
    zs = sa.group_zscore(r3, w, g, _Cfg(), steps, 25)
    assert zs.shape == (3, 3) and torch.allclose(zs[:, 0], zs[:, 2])
    assert zs[:, 0].tolist() == pytest.approx((z @ w).tolist(), abs=1e-6)
    lt = sa.log_tamed(r3, w, g, _Cfg(normalize="raw"), steps, 25)
    assert lt[:, 1].tolist() == pytest.approx(ag.log_tamed(r3, w, g, normalize="raw").tolist())
    with pytest.raises(ValueError, match="unknown option"):
        sa.sars(r3, w, g, _Cfg(gama=0.4), steps, 25)
    with pytest.raises(ValueError, match="distinct"):
        sa.sars(r3, w, g, _Cfg(identity=1, prompt=1), steps, 25)


def test_shaped_modes_through_the_trainer_registry():
    advantages = pytest.importorskip("psrl.rl.advantages")
    from psrl.rl.grpo_config import AdvantageConfig

    r = torch.tensor([[0.9, 7.0], [0.5, 8.0], [0.7, 6.0], [0.1, 5.0]])
    g = torch.tensor([0, 0, 1, 1])
    for mode in ("group_zscore", "log_tamed", "sars"):
        cfg = AdvantageConfig(mode=mode)
        res = advantages.compute_advantages(r, torch.tensor([0.5, 0.5]), g, cfg, (0, 5), 10)
        assert res.advantages.shape == (4, 2)
        assert torch.isfinite(res.advantages).all()
        assert res.advantages.abs().sum() > 0


def _next_up(x: float, steps: int = 1) -> float:
    t = torch.tensor(x)
    for _ in range(steps):
        t = torch.nextafter(t, torch.tensor(math.inf))
    return float(t)


def test_spread_is_rounding_formula():
    x = float(torch.tensor(0.8))  # 0.8 as float32 holds it
    ulp = _next_up(x) - x
    assert ulp == pytest.approx(5.96e-8, rel=1e-3)  # the batched-vs-single HPSv3 difference
    assert ag.spread_is_rounding(torch.tensor([x, _next_up(x)]))
    assert ag.spread_is_rounding(torch.tensor([x, x, x]))
    # tolerance = 16 * 2**-23 * 0.8 = 1.53e-6 = 25.6 steps of 5.96e-8: 25 steps are rounding, 26 are signal
    steps = int(ag.ROUNDING_ULPS * ag.FLOAT32_EPS * x / ulp)
    assert steps == 25
    assert ag.spread_is_rounding(torch.tensor([x, _next_up(x, steps)]))
    assert not ag.spread_is_rounding(torch.tensor([x, _next_up(x, steps + 1)]))
    # relative to the values' magnitude: a tiny but real spread of tiny rewards is signal
    assert not ag.spread_is_rounding(torch.tensor([1e-3, 1.0001e-3]))
    assert not ag.spread_is_rounding(torch.tensor([0.0, 6e-8]))
    # a weighted sum's rounding scales with its terms, not with the (cancelled) sum
    assert ag.spread_is_rounding(torch.tensor([0.0, 6e-8]), torch.tensor([0.8, 0.8]))
    assert ag.spread_is_rounding(torch.tensor([0.0, 6e-8]), 0.8)
    # NaN ignored; fewer than two finite values is no spread
    assert ag.spread_is_rounding(torch.tensor([0.8, float("nan"), _next_up(0.8)]))
    assert ag.spread_is_rounding(torch.tensor([0.3, float("nan")]))
    assert not ag.spread_is_rounding(torch.tensor([0.3, float("nan"), 0.4]))
    terms = ag.terms_magnitude(torch.tensor([[0.8, -0.8], [1.0, 2.0]]), torch.tensor([1.0, -0.5]))
    assert terms.tolist() == pytest.approx([1.2, 2.0])


def test_rounding_level_groups_get_zero_in_every_normalisation():
    hi = _next_up(0.8)
    # group 0 differs by 1 ulp in the first reward only; group 1 has real spread
    r = torch.tensor([[0.8, 0.3], [hi, 0.3], [0.8, 0.3], [hi, 0.3], [0.1, 0.2], [0.5, 0.9], [0.3, 0.4], [0.7, 0.1]])
    g = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    w = torch.tensor([0.5, 0.5])
    z = ag.per_reward_zscore(r, g, eps=1e-8)
    assert torch.equal(z[:4], torch.zeros(4, 2))  # was +-0.87 per column with eps 1e-8
    c0 = torch.tensor([0.1, 0.5, 0.3, 0.7])
    assert z[4:, 0].tolist() == pytest.approx(((c0 - c0.mean()) / (c0.std() + 1e-8)).tolist(), abs=1e-6)
    assert torch.equal(ag.group_zscore(r, w, g, eps=1e-8)[:4], torch.zeros(4))
    sars = ag.sars(z[:, 0], z[:, 1], 0.4, 0.5, 0.5)
    assert torch.equal(sars[:4], torch.zeros(4))  # sars(0, 0) = 0 + 0.4 * -1 * tanh(0)
    for normalize in ("group", "global_std"):
        adv = ag.log_tamed(r, w, g, normalize=normalize, eps=1e-6)
        assert torch.equal(adv[:4], torch.zeros(4)), normalize
        assert adv[4:].abs().max() > 0.5
    # the raw compat normalisation is not group-relative: R itself, flat group or not
    assert ag.log_tamed(r, w, g, normalize="raw")[:4].abs().min() > 0


# ----------------------------------------------------------------------------- PaCo-GRPO's aggregations
def test_group_rank_matches_scipy_rankdata_with_average_ties():
    from scipy.stats import rankdata

    g = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    r = torch.tensor([[0.3, 5.0], [0.1, 5.0], [0.3, 2.0], [0.9, 7.0], [4.0, 1.0], [-2.0, 1.0], [1.0, 1.0]])
    out = ag.group_rank(r, g)
    for gid in (0, 1):
        rows = (g == gid).numpy()
        n = int(rows.sum())
        for k in range(2):
            expected = (rankdata(r[rows, k].numpy(), method="average") - 1) / (n - 1)
            assert out[rows, k].tolist() == pytest.approx(expected.tolist())
    assert out[:4, 0].tolist() == pytest.approx([2 / 3 * 0.75, 0.0, 0.5, 1.0])  # ranks 1.5, 0, 1.5, 3 over 3
    assert out[4:, 1].tolist() == [0.5, 0.5, 0.5]  # all tied: the middle


def test_group_rank_rounding_differences_are_ties_and_nan_stays_nan():
    hi = _next_up(0.8)
    r = torch.tensor([[0.8], [hi], [0.3], [0.8], [_next_up(0.8, 3)], [float("nan")], [0.2]])
    g = torch.tensor([0, 0, 0, 1, 1, 1, 2])
    out = ag.group_rank(r, g)[:, 0]
    # group 0: 0.8 and 0.8+1ulp tie (ranks 1, 2 -> 1.5) above 0.3 (rank 0), over n - 1 = 2
    assert out[:3].tolist() == pytest.approx([0.75, 0.75, 0.0])
    # group 1: a rounding-level spread is one tie (0.5 each); the NaN stays NaN; a lone value ranks 0.5
    assert out[3:5].tolist() == [0.5, 0.5] and math.isnan(out[5].item()) and out[6].item() == 0.5
    # a spread of real signal is not a tie, however small the values
    assert ag.group_rank(torch.tensor([[1e-3], [1.0001e-3]]), torch.tensor([0, 0]))[:, 0].tolist() == [0.0, 1.0]


def test_per_reward_normalized_formula_group_and_global_std():
    r = torch.tensor([[1.0, 10.0], [2.0, 10.0], [3.0, 13.0], [5.0, 1.0], [7.0, 3.0]])
    g = torch.tensor([0, 0, 0, 1, 1])
    w = torch.tensor([0.5, 2.0])
    out = ag.per_reward_normalized(r, w, g)
    # population std: group 0 col 0 [1,2,3] -> sqrt(2/3); col 1 [10,10,13] -> sqrt(2); group 1: |a-b|/2
    s0, s1 = math.sqrt(2 / 3), math.sqrt(2.0)
    expected = [0.5 * -1 / s0 + 2 * -1 / s1, 0.0 + 2 * -1 / s1, 0.5 * 1 / s0 + 2 * 2 / s1, -0.5 - 2, 0.5 + 2]
    assert out.tolist() == pytest.approx(expected, abs=1e-6)
    # global std: each column's population std over all 5 samples, means still per group
    glob = ag.per_reward_normalized(r, w, g, global_std=True)
    sd = r.std(dim=0, unbiased=False)
    mean = torch.stack([r[:3].mean(0), r[:3].mean(0), r[:3].mean(0), r[3:].mean(0), r[3:].mean(0)])
    assert glob.tolist() == pytest.approx((((r - mean) / sd) @ w).tolist(), abs=1e-6)
    # the std floor (PaCo's max(std, 1e-6)): a spread of 1e-7 at magnitude 1e-3 is signal, divided by the floor
    v = torch.tensor([1e-3, 1e-3 + 1e-7])
    tiny = ag.per_reward_normalized(v[:, None], torch.ones(1), torch.tensor([0, 0]))
    assert tiny.tolist() == pytest.approx(((v - v.mean()) / 1e-6).tolist(), rel=1e-5)  # ~ -+0.05
    assert not ag.spread_is_rounding(v)


@pytest.mark.parametrize("kind", ["geometric", "harmonic"])
def test_geometric_and_harmonic_means_match_scipy(kind):
    from scipy.stats import gmean, hmean

    oracle = gmean if kind == "geometric" else hmean
    fn = ag.geometric_mean if kind == "geometric" else ag.harmonic_mean
    gen = torch.Generator().manual_seed(0)
    r = torch.rand(6, 3, generator=gen, dtype=torch.float64).float() * 4 + 0.01
    w = torch.tensor([0.2, 1.0, 0.5])
    out = fn(r, w)
    assert out.dtype == torch.float32
    assert out.tolist() == pytest.approx(oracle(r.double().numpy(), axis=1, weights=w.double().numpy()).tolist(),
                                         rel=1e-6)
    # equal weights are PaCo's unweighted mean; a zero reward zeroes the sample, as scipy
    assert fn(r, torch.ones(3)).tolist() == pytest.approx(oracle(r.double().numpy(), axis=1).tolist(), rel=1e-6)
    z = r.clone()
    z[2, 1] = 0.0
    assert fn(z, w)[2].item() == 0.0
    # a zero weight leaves its reward out (even a negative one)
    z[4, 0] = -1.0
    expected = oracle(z[:, 1:].double().numpy(), axis=1, weights=[1.0, 0.5])
    assert fn(z, torch.tensor([0.0, 1.0, 0.5]))[4].item() == pytest.approx(float(expected[4]), rel=1e-6)


@pytest.mark.parametrize("kind", ["geometric", "harmonic"])
def test_means_of_negative_rewards_are_nan_with_a_reason(kind):
    fn = ag.geometric_mean if kind == "geometric" else ag.harmonic_mean
    r = torch.tensor([[0.5, 0.8], [-0.2, 0.8], [0.5, float("nan")], [0.0, 0.3]])
    out = fn(r, torch.ones(2))
    assert math.isnan(out[1].item()) and math.isnan(out[2].item())
    assert out[0].item() > 0 and out[3].item() == 0.0
    reasons = ag.mean_failures(r, torch.ones(2), kind)
    assert reasons[0] is None and reasons[3] is None
    assert reasons[1] == f"reward column 0 is -0.2: the {kind} mean is defined for rewards >= 0 only"
    assert reasons[2] == "reward column 1 is NaN"
    for bad in ([1.0, -0.5], [0.0, 0.0]):
        with pytest.raises(ValueError, match=f"the {kind} mean of the rewards needs reward weights >= 0"):
            fn(r, torch.tensor(bad))
