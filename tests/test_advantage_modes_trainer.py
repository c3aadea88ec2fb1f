"""PaCo-GRPO's advantage modes inside the one trainer: each trains the tiny FLUX on two rewards, and a geometric mean
over a reward that goes negative takes those samples out of their groups (logged, counted), not the run."""
import math

import pytest
import torch

from psrl.rl.grpo_trainer import GRPOTrainer
from psrl.rl.run_config import load_run_config

pytest.importorskip("diffusers")
pytestmark = pytest.mark.component

TWO_REWARDS = ("rewards=[{name: mean_color, weight: 1.0, args: {target: [0, 0, 1]}}, "
               f"{{name: '{__name__}:redness', weight: 0.5}}]")


def redness(images: torch.Tensor, records) -> torch.Tensor:
    """The mean red channel per image, in [0, 1]."""
    return images[:, 0].mean(dim=(1, 2))


def signed_blue(images: torch.Tensor, records) -> torch.Tensor:
    """Blue minus red per image, in [-1, 1]: negative for some images of the tiny model."""
    return images[:, 2].mean(dim=(1, 2)) - images[:, 0].mean(dim=(1, 2))


def _train(tmp_path, name, *extra):
    cfg = load_run_config(None, [
        f"run.output_dir={tmp_path}", f"run.name={name}", "train.groups_per_step=2", "train.group_size=4",
        "train.sample_batch_size=4", "train.train_batch_size=4", "sampling.num_steps=2", "eval.every=0",
        "train.max_steps=1", *extra])
    trainer = GRPOTrainer(cfg)
    before = [p.detach().clone() for p in trainer.params]
    (m,) = trainer.train()
    moved = any(not torch.equal(p.detach(), b) for p, b in zip(trainer.params, before))
    return m, moved


@pytest.mark.parametrize("mode", ["rank", "per_reward_normalized", "geometric_mean", "harmonic_mean"])
def test_paco_mode_trains_the_tiny_flux(tmp_path, mode):
    m, moved = _train(tmp_path, mode, f"advantage.mode={mode}", TWO_REWARDS)
    assert m["adv/num_trained_samples"] == 8 and m["adv/nan_samples"] == 0
    assert math.isfinite(m["loss"]) and m["adv/adv_abs_mean"] > 0 and moved


def test_geometric_mean_over_a_negative_reward_drops_those_samples(tmp_path, caplog):
    rewards = ("rewards=[{name: mean_color, weight: 1.0, args: {target: [0, 0, 1]}}, "
               f"{{name: '{__name__}:signed_blue', weight: 1.0}}]")
    m, _ = _train(tmp_path, "neg", "advantage.mode=geometric_mean", rewards)
    negative = m["reward/" + f"{__name__}:signed_blue" + "/mean"]
    assert math.isfinite(negative)
    assert m["adv/mode_nan_samples"] > 0, "the tiny model should give some images more red than blue"
    assert m["adv/nan_samples"] == m["adv/mode_nan_samples"]
    assert m["adv/num_trained_samples"] <= 8 - m["adv/mode_nan_samples"]
    assert "cannot be scored by advantage mode 'geometric_mean'" in caplog.text
    assert "the geometric mean is defined for rewards >= 0 only" in caplog.text
