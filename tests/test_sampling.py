"""Tier 1: the pure sampling math against closed forms and against diffusers' scheduler."""
import math
import random

import numpy as np
import pytest
import torch

from psrl.sampling import (
    flux_sigmas,
    gaussian_log_prob,
    kl_to_reference,
    plan_steps,
    resolution_shift_mu,
    sde_step_with_logprob,
)

pytestmark = pytest.mark.unit


def _inputs(b=3, shape=(16, 4), dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, *shape, generator=g).to(dtype), torch.randn(b, *shape, generator=g).to(dtype)


@pytest.mark.parametrize("reduce", ["mean", "sum"])
@pytest.mark.parametrize("kind", ["sde", "cps"])
def test_log_prob_is_the_gaussian_density(kind, reduce):
    x, v = _inputs()
    prev, lp, mean, std = sde_step_with_logprob(x, v, 0.8, 0.6, 0.7, kind=kind, reduce=reduce,
                                                generator=torch.Generator().manual_seed(1))
    dens = torch.distributions.Normal(mean, std).log_prob(prev)
    expected = dens.mean(dim=(1, 2)) if reduce == "mean" else dens.sum(dim=(1, 2))
    torch.testing.assert_close(lp, expected, rtol=1e-5, atol=1e-5)
    assert lp.shape == (3,) and lp.dtype == torch.float32


def test_sde_mean_and_std_follow_flow_grpo_formula():
    x, v = _inputs()
    s, sn, a = 0.8, 0.6, 0.7
    _, _, mean, std = sde_step_with_logprob(x, v, s, sn, a)
    dt = sn - s
    std_t = math.sqrt(s / (1 - s)) * a
    exp_mean = x * (1 + std_t**2 / (2 * s) * dt) + v * (1 + std_t**2 * (1 - s) / (2 * s)) * dt
    torch.testing.assert_close(mean, exp_mean)
    torch.testing.assert_close(std, torch.full_like(x, std_t * math.sqrt(-dt)))


def test_sigma_one_guard_uses_sigma_max():
    x, v = _inputs()
    _, lp, mean, std = sde_step_with_logprob(x, v, 1.0, 0.9, 0.7, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(lp).all() and torch.isfinite(mean).all()
    std_t = math.sqrt(1.0 / (1 - 0.9)) * 0.7  # sigma_max defaults to sigma_next at step 0
    torch.testing.assert_close(std[0, 0, 0], torch.tensor(std_t * math.sqrt(0.1)))
    _, _, _, std2 = sde_step_with_logprob(x, v, 1.0, 0.9, 0.7, sigma_max=0.95)
    torch.testing.assert_close(std2[0, 0, 0], torch.tensor(math.sqrt(1 / 0.05) * 0.7 * math.sqrt(0.1)))


def test_cps_formula_and_compat_logprob():
    x, v = _inputs()
    s, sn, a = 0.7, 0.5, 0.8
    prev, lp, mean, std = sde_step_with_logprob(x, v, s, sn, a, kind="cps", cps_compat=True,
                                                generator=torch.Generator().manual_seed(3))
    sd = sn * math.sin(a * math.pi / 2)
    exp_mean = (x - s * v) * (1 - sn) + (x + (1 - s) * v) * math.sqrt(sn**2 - sd**2)
    torch.testing.assert_close(mean, exp_mean)
    torch.testing.assert_close(lp, (-((prev - mean) ** 2)).mean(dim=(1, 2)))


def test_ode_step_equals_diffusers_euler_step():
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15)
    sched.set_timesteps(sigmas=np.linspace(1.0, 1 / 4, 4), mu=0.8)
    # fp32 inputs: diffusers multiplies a bf16 velocity by dt in bf16, we stay in fp32, so compare in fp32
    x, v = _inputs()
    for i in range(4):
        expected = sched.step(v, sched.timesteps[i], x, return_dict=False)[0]
        ours, lp, _, _ = sde_step_with_logprob(x, v, sched.sigmas[i], sched.sigmas[i + 1], 0.0)
        torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)
        assert torch.all(lp == 0)
        x = expected


def test_fp32_internally_for_bf16_inputs():
    x, v = _inputs(dtype=torch.bfloat16)
    prev, lp, mean, std = sde_step_with_logprob(x, v, 0.5, 0.4, 0.7, generator=torch.Generator().manual_seed(0))
    assert prev.dtype == lp.dtype == mean.dtype == std.dtype == torch.float32


def test_given_prev_sample_reproduces_log_prob():
    x, v = _inputs()
    prev, lp, _, _ = sde_step_with_logprob(x, v, 0.6, 0.4, 0.9, generator=torch.Generator().manual_seed(5))
    _, lp2, _, _ = sde_step_with_logprob(x, v, 0.6, 0.4, 0.9, prev_sample=prev)
    torch.testing.assert_close(lp, lp2, rtol=0, atol=0)


def test_per_sample_sigma_and_generators():
    x, v = _inputs(b=2)
    gens = [torch.Generator().manual_seed(i) for i in (7, 7)]
    prev, _, _, _ = sde_step_with_logprob(x[:1].expand(2, -1, -1), v[:1].expand(2, -1, -1),
                                          torch.tensor([0.5, 0.5]), torch.tensor([0.3, 0.3]), 0.7, generator=gens)
    torch.testing.assert_close(prev[0], prev[1])  # same seed, same input -> same sample
    with pytest.raises(ValueError, match="generators"):
        sde_step_with_logprob(x, v, 0.5, 0.3, 0.7, generator=gens[:1])


def test_kl_to_reference_matches_gaussian_kl():
    mean = torch.randn(2, 8)
    ref = mean + 0.1
    std = torch.full((2, 8), 0.5)
    kl = kl_to_reference(mean, ref, std)
    exact = torch.distributions.kl_divergence(torch.distributions.Normal(mean, std),
                                              torch.distributions.Normal(ref, std)).mean(dim=1)
    torch.testing.assert_close(kl, exact)
    torch.testing.assert_close(kl_to_reference(mean, ref, std, dt=-0.1), exact * 0.1)


def test_gaussian_log_prob_rejects_unknown_reduce():
    with pytest.raises(ValueError, match="reduce"):
        gaussian_log_prob(torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2), reduce="max")


def test_flux_sigmas_match_diffusers_flux_schedule():
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    for steps, seq in [(4, 64), (28, 1024), (10, 4096)]:
        sched = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                                max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
        mu = calculate_shift(seq, 256, 4096, 0.5, 1.15)
        assert resolution_shift_mu(seq) == pytest.approx(mu)
        sched.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
        torch.testing.assert_close(flux_sigmas(steps, seq), sched.sigmas, rtol=1e-6, atol=1e-6)


def test_plan_steps_modes():
    p = plan_steps(10)
    assert p.trained == tuple(range(9)) and all(p.noisy)
    assert plan_steps(10, "first_k", k=3).trained == (0, 1, 2)
    rng = random.Random(0)
    for _ in range(20):
        f = plan_steps(10, "fast_window", k=3, window_range=(0, 5), rng=rng)
        assert len(f.trained) == 3 and 0 <= f.trained[0] <= 2
        assert [i for i, n in enumerate(f.noisy) if n] == list(f.trained)
    lst = plan_steps(8, "list", steps=[1])
    assert lst.trained == (1,) and lst.noisy == (False, True) + (False,) * 6
    with pytest.raises(ValueError, match="fast_window"):
        plan_steps(4, "fast_window", k=3, window_range=(0, 2))
    with pytest.raises(ValueError, match="unknown"):
        plan_steps(4, "bogus")
