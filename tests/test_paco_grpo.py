"""PaCo-GRPO's algorithms: GRPO-Guard and DiffusionNFT losses against hand computations, the old policy's decay
schedules and exact ratio, sparse random noise steps, parameter noise, and learning with each loss type."""
import math
from pathlib import Path

import pytest
import torch

from psrl.rl import checkpoint as ckpt
from psrl.rl.grpo_trainer import GRPOTrainer
from psrl.rl.losses import guard_loss, nft_loss
from psrl.rl.old_policy import OldPolicy, old_policy_decay
from psrl.rl.run_config import load_run_config

BASE = ["train.groups_per_step=2", "train.group_size=4", "train.sample_batch_size=4", "train.train_batch_size=4",
        "sampling.num_steps=3", "eval.every=0", "train.keep_last=0"]


def _cfg(tmp_path, name, *extra):
    return load_run_config(None, [f"run.output_dir={tmp_path}", f"run.name={name}", *BASE, *extra])


# ----------------------------------------------------------------------------- pure formulas
@pytest.mark.unit
def test_old_policy_decay_schedules():
    assert [old_policy_decay(n, 0) for n in (0, 10, 10**6)] == [0.0, 0.0, 0.0]
    assert old_policy_decay(0, 1) == 0.0 and old_policy_decay(100, 1) == pytest.approx(0.1)
    assert old_policy_decay(10**4, 1) == 0.5
    assert old_policy_decay(75, 2) == 0.0 and old_policy_decay(175, 2) == pytest.approx(0.75)
    assert old_policy_decay(10**4, 2) == 0.999
    with pytest.raises(ValueError, match="decay_type"):
        old_policy_decay(0, 3)


@pytest.mark.unit
def test_old_policy_update_is_the_ema_of_the_weights():
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    old = OldPolicy([p], decay_type=1)
    with torch.no_grad():
        p.copy_(torch.tensor([3.0, 6.0]))
    d = old.update(100)  # decay 0.1
    assert d == pytest.approx(0.1)
    assert torch.allclose(old.shadow[0], 0.1 * torch.tensor([1.0, 2.0]) + 0.9 * torch.tensor([3.0, 6.0]))
    with old.swapped_in():
        assert torch.allclose(p, old.shadow[0])
    assert torch.equal(p.detach(), torch.tensor([3.0, 6.0]))


@pytest.mark.unit
@pytest.mark.parametrize("reduce", ["mean", "sum"])
def test_guard_loss_equals_a_hand_computation(reduce):
    g = torch.Generator().manual_seed(0)
    b, d = 3, 4
    mean = torch.randn(b, d, generator=g, requires_grad=True)
    old_mean = mean.detach() + 0.01 * torch.randn(b, d, generator=g)
    lp = torch.tensor([0.010, -0.020, 0.003], requires_grad=True)
    old_lp = torch.tensor([0.000, 0.000, 0.001])
    std = torch.full((b, 1), 0.3)
    dt = torch.full((b,), -0.25)
    adv = torch.tensor([1.0, -2.0, 0.5])
    eps = 1e-3
    out = guard_loss(lp, old_lp, mean, old_mean, std, dt, adv, eps, reduce=reduce)
    # by hand
    s = 0.3
    sq = ((mean.detach() - old_mean) ** 2)
    bias = (sq.mean(1) if reduce == "mean" else sq.sum(1)) / (2 * s * s)
    ratio = torch.exp((lp.detach() - old_lp + bias) * s)
    per = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - eps, 1 + eps))
    expected = per.mean() / 0.25
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert out.stats["ratio_mean"] == pytest.approx(ratio.mean().item(), rel=1e-6)
    out.loss.backward()
    assert lp.grad is not None and mean.grad is not None  # the bias term carries gradient to the mean


@pytest.mark.unit
@pytest.mark.parametrize("nft_beta, beta", [(1.0, 0.0), (0.5, 0.1)])
def test_nft_loss_equals_a_hand_computation(nft_beta, beta):
    g = torch.Generator().manual_seed(1)
    b, d = 4, 6
    x0 = torch.randn(b, d, generator=g)
    noise = torch.randn(b, d, generator=g)
    t = 0.6
    x_t = (1 - t) * x0 + t * noise
    v_new = torch.randn(b, d, generator=g, requires_grad=True)
    v_old = v_new.detach() + 0.1 * torch.randn(b, d, generator=g)
    v_ref = v_new.detach() + 0.2 * torch.randn(b, d, generator=g)
    adv = torch.tensor([5.0, -5.0, 0.0, 2.5])
    out = nft_loss(v_new, v_old, x_t, x0, torch.tensor(t), adv, adv_clip=5.0, nft_beta=nft_beta, beta=beta,
                   v_ref=v_ref)
    # by hand, sample by sample
    total = 0.0
    for i in range(b):
        r = min(max(adv[i].item() / 5.0 / 2 + 0.5, 0.0), 1.0)
        vp = nft_beta * v_new[i].detach() + (1 - nft_beta) * v_old[i]
        vn = (1 + nft_beta) * v_old[i] - nft_beta * v_new[i].detach()
        xp, xn = x_t[i] - t * vp, x_t[i] - t * vn
        lp = ((xp - x0[i]) ** 2).mean() / (xp - x0[i]).abs().mean().clamp(min=1e-5)
        ln = ((xn - x0[i]) ** 2).mean() / (xn - x0[i]).abs().mean().clamp(min=1e-5)
        total += (r * lp + (1 - r) * ln).item() / nft_beta * 5.0
    expected = total / b + beta * ((v_new.detach() - v_ref) ** 2).mean().item()
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    out.loss.backward()
    assert v_new.grad is not None and torch.isfinite(v_new.grad).all()


@pytest.mark.unit
def test_nft_positive_advantage_pulls_toward_the_sample():
    """A = +clip (r = 1): the gradient moves v_new so that x_t - t v predicts the rollout's x0 better."""
    x0, noise, t = torch.zeros(1, 3), torch.ones(1, 3), 0.5
    x_t = (1 - t) * x0 + t * noise
    v_new = torch.full((1, 3), 0.5, requires_grad=True)  # x0_hat = 0.5 - 0.25 = 0.25, off by 0.25
    out = nft_loss(v_new, v_new.detach(), x_t, x0, torch.tensor(t), torch.tensor([5.0]), adv_clip=5.0)
    out.loss.backward()
    assert (v_new.grad < 0).all()  # raising v lowers x0_hat toward 0


# ----------------------------------------------------------------------------- in the trainer
TINY_DATA = Path(__file__).resolve().parent.parent / "configs" / "tiny" / "data"


def _tiny_policy(model):
    """Overrides that put a tiny ``model`` with a rank-4 LoRA on the tiny records (references for the
    reference-conditioned policies)."""
    out = [f"model.name={model}", "model.lora.rank=4", "model.lora.alpha=4", "model.max_sequence_length=32"]
    if model in ("flux_kontext", "qwen_image_edit_plus"):
        out += [f"data.records={TINY_DATA / 'records.jsonl'}", "train.groups_per_step=2"]
    if model == "qwen_image_edit_plus":
        out += ["sampling.height=32", "sampling.width=32", "model.args={condition_area: 1024, vae_area: 1024}"]
    if model == "flux_kontext":
        out += ["model.args={reference_long_side_single: 32, reference_long_side_multi: 32}"]
    return out



@pytest.mark.component
def test_old_policy_copy_gives_ratio_exactly_one_before_the_update(tmp_path):
    t = GRPOTrainer(_cfg(tmp_path, "old", "train.max_steps=3", "train.old_policy.enabled=true",
                         "train.old_policy.decay_type=0", "train.train_batch_size=4", "train.gradient_accumulation=2"))
    history = t.train()
    for m in history:  # one optimizer update per step: every pass runs before it
        assert m["ratio_min"] == 1.0 and m["ratio_max"] == 1.0 and m["approx_kl"] == 0.0
        assert m["old_policy_decay"] == 0.0
    assert (tmp_path / "old" / "checkpoints" / "step-3" / "old_policy.pt").is_file()


@pytest.mark.component
def test_old_policy_lags_with_decay_and_resumes_exactly(tmp_path):
    extra = ["train.loss=guard", "train.old_policy.decay_type=1", "train.num_inner_epochs=2"]
    GRPOTrainer(_cfg(tmp_path, "full", "train.max_steps=3", *extra)).train()
    GRPOTrainer(_cfg(tmp_path, "split", "train.max_steps=2", *extra)).train()
    GRPOTrainer(_cfg(tmp_path, "split", "train.max_steps=3", *extra), resume=True).train()
    from safetensors.torch import load_file

    a = load_file(tmp_path / "full" / "checkpoints" / "step-3" / "trainable.safetensors")
    b = load_file(tmp_path / "split" / "checkpoints" / "step-3" / "trainable.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    oa = torch.load(tmp_path / "full" / "checkpoints" / "step-3" / "old_policy.pt", weights_only=True)
    ob = torch.load(tmp_path / "split" / "checkpoints" / "step-3" / "old_policy.pt", weights_only=True)
    assert all(torch.allclose(x, y, atol=1e-6) for x, y in zip(oa["shadow"], ob["shadow"]))


@pytest.mark.component
def test_random_sparse_noise_steps_are_drawn_per_step_and_reproducible(tmp_path):
    extra = ["sampling.num_steps=6", "sampling.train_steps=list", "sampling.noise_steps=[1,2,3,4]",
             "sampling.num_noise_steps=1"]
    t = GRPOTrainer(_cfg(tmp_path, "s", "train.max_steps=1", *extra))
    draws = [t._step_sampling(step)[1] for step in range(12)]
    assert all(len(d) == 1 and d[0] in (1, 2, 3, 4) for d in draws)
    assert len({d[0] for d in draws}) > 1  # it varies with the step
    again = GRPOTrainer(_cfg(tmp_path, "s2", "train.max_steps=1", *extra))
    assert [again._step_sampling(step)[1] for step in range(12)] == draws


@pytest.mark.component
def test_param_noise_moves_the_weights_reproducibly(tmp_path):
    t = GRPOTrainer(_cfg(tmp_path, "n", "train.max_steps=1", "train.param_noise_std=0.01"))
    before = [p.detach().clone() for p in t.params]
    t._add_param_noise(0)
    delta = torch.cat([(p.detach() - b).flatten() for p, b in zip(t.params, before)])
    assert 0.005 < float(delta.std()) < 0.02
    u = GRPOTrainer(_cfg(tmp_path, "n2", "train.max_steps=1", "train.param_noise_std=0.01"))
    u._add_param_noise(0)
    assert all(torch.equal(a, b) for a, b in zip(t.params, u.params))


@pytest.mark.component
@pytest.mark.parametrize("model", ["flux", "flux_kontext", "sd3", "qwen_image_edit_plus"])
@pytest.mark.parametrize("loss", ["guard", "nft"])
def test_guard_and_nft_train_every_policy(tmp_path, model, loss):
    t = GRPOTrainer(_cfg(tmp_path, f"{model}-{loss}", "train.max_steps=1", f"train.loss={loss}",
                         *_tiny_policy(model)))
    before = [p.detach().clone() for p in t.params]
    (m,) = t.train()
    assert math.isfinite(m["loss"]) and m["train_passes"] > 0
    assert any(not torch.equal(p.detach(), b) for p, b in zip(t.params, before))
    assert ckpt.verify_checkpoint(tmp_path / f"{model}-{loss}" / "checkpoints" / "step-1") is None


@pytest.mark.component
def test_nft_learns_the_colour_reward_on_the_tiny_model(tmp_path):
    """DiffusionNFT raises the built-in colour reward of the embedded default. On this tiny model nft_beta=1 (PaCo's
    default) barely moves in 40 steps; 0.1 learns with 1.5-1.8x PPO's images (benchmarks/README.md)."""
    t = GRPOTrainer(load_run_config(None, [f"run.output_dir={tmp_path}", "run.name=nft", "train.loss=nft",
                                           "train.nft_beta=0.1", "train.old_policy.decay_type=0",
                                           "train.max_steps=16", "eval.every=0"]))
    history = t.train()
    curve = [m["reward/total/mean"] for m in history]
    spread = max(m["reward/total/std"] for m in history)
    assert sum(curve[-3:]) / 3 - sum(curve[:3]) / 3 > 0.5 * spread, curve
