"""PPO-clip loss, KL term and diagnostics against hand-computed numbers."""
import math

import pytest
import torch

from psrl.rl.losses import grpo_loss, ppo_clip_loss, ratio_stats

pytestmark = pytest.mark.unit


def _batch():
    # ratios 1.2 (A=+1, clipped), 0.5 (A=-1, clipped), 1.05 (A=+1, inside), 1.2 (A=-1, unclipped side)
    logp = torch.tensor([math.log(1.2), math.log(0.5), math.log(1.05), math.log(1.2)], requires_grad=True)
    old = torch.zeros(4)
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    return logp, old, adv


def test_ppo_clip_value_and_gradient():
    logp, old, adv = _batch()
    loss, ratio = ppo_clip_loss(logp, old, adv, clip_range=0.1)
    # per sample max(-A r, -A clip(r)): -1.1, 0.9, -1.05, 1.2 -> mean -0.0125
    assert loss.item() == pytest.approx(-0.0125)
    assert ratio.tolist() == pytest.approx([1.2, 0.5, 1.05, 1.2])
    loss.backward()
    # d/dlogp of -A r / 4 = -A r / 4 where the unclipped branch is active, 0 where clipped
    assert logp.grad.tolist() == pytest.approx([0.0, 0.0, -1.05 / 4, 1.2 / 4])


def test_ratio_one_gives_minus_mean_advantage():
    logp = torch.tensor([0.3, -0.2, 0.1])
    loss, _ = ppo_clip_loss(logp, logp.clone(), torch.tensor([1.0, 2.0, -0.5]), 1e-4)
    assert float(loss) == pytest.approx(-(1.0 + 2.0 - 0.5) / 3)


def test_ratio_stats():
    logp, old, _ = _batch()
    s = ratio_stats(logp, old, 0.1)
    d = [math.log(1.2), math.log(0.5), math.log(1.05), math.log(1.2)]
    assert s["approx_kl"] == pytest.approx(0.5 * sum(x * x for x in d) / 4)
    assert s["clipfrac"] == pytest.approx(0.75)
    assert s["clipfrac_gt_one"] == pytest.approx(0.5) and s["clipfrac_lt_one"] == pytest.approx(0.25)
    assert (s["ratio_min"], s["ratio_max"]) == pytest.approx((0.5, 1.2))
    assert s["ratio_mean"] == pytest.approx((1.2 + 0.5 + 1.05 + 1.2) / 4)


def test_kl_term_and_beta():
    logp = torch.zeros(2)
    adv = torch.tensor([1.0, -1.0])
    mean = torch.zeros(2, 3, requires_grad=True)
    ref = torch.ones(2, 3)
    std = torch.full((2, 3), 0.5)
    out = grpo_loss(logp, logp.clone(), adv, 1e-4, beta=0.1, mean=mean, ref_mean=ref, std=std)
    # KL = mean((mu - mu_ref)^2) / (2 std^2) = 1 / 0.5 = 2 per sample; policy loss = -mean(A) = 0
    assert out.kl.item() == pytest.approx(2.0)
    assert out.loss.item() == pytest.approx(0.2)
    assert out.stats["kl"] == pytest.approx(2.0) and out.stats["policy_loss"] == pytest.approx(0.0)
    out.loss.backward()
    # d/dmu of beta * mean_b mean_d (mu - 1)^2 / (2 * 0.25) = beta * 2 (mu - 1) / (0.5 * 6)
    assert mean.grad[0, 0].item() == pytest.approx(0.1 * 2 * (-1) / (0.5 * 6))
    # Flow-GRPO compat: KL times |dt|
    out_dt = grpo_loss(logp, logp, adv, 1e-4, beta=0.1, mean=mean, ref_mean=ref, std=std, dt=torch.tensor([-0.25] * 2))
    assert out_dt.kl.item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="beta > 0"):
        grpo_loss(logp, logp, adv, 1e-4, beta=0.1)
    assert float(grpo_loss(logp, logp, adv, 1e-4, beta=0.0).kl) == 0.0
