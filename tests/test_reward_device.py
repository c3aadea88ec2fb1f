"""``rewards[].device``: a reward on a device of its own (PaCo's judge GPU): validated, built there, images moved to
it and scores back on the CPU, with the same step as a reward on the policy's device."""
import pytest
import torch

from psrl.config import ConfigError
from psrl.rl.reward_calls import RewardOnDevice, reward_device
from psrl.rl.run_config import load_run_config

SMALL = ["train.groups_per_step=2", "train.group_size=2", "train.sample_batch_size=4", "train.train_batch_size=4",
         "sampling.num_steps=2", "eval.every=0", "train.save_every=0", "train.max_steps=1", "train.device=cpu"]
SEEN: list[torch.device] = []


def blue_on_its_device(images, records):
    """A plain-callable reward (``module:attr``) that notes where its images arrived."""
    SEEN.append(images.device)
    return images[:, 2].float().mean(dim=(1, 2))


def _cfg(tmp_path, name, *overrides):
    return load_run_config(None, [f"run.output_dir={tmp_path}", f"run.name={name}", *SMALL, *overrides])


@pytest.mark.unit
def test_device_names_are_checked_against_the_machine():
    assert reward_device("cpu", cuda_count=0) == torch.device("cpu")
    assert reward_device("cuda:1", cuda_count=2) == torch.device("cuda", 1)
    for value, count, why in [("cuda:1", 1, r"'cuda:1', but torch sees 1 CUDA device"),
                              ("cuda", 0, "torch sees 0 CUDA device"), ("mps", 1, "only cpu and cuda"),
                              ("gpu0", 1, "not a device")]:
        with pytest.raises(ValueError, match=why):
            reward_device(value, cuda_count=count)


@pytest.mark.unit
def test_a_bad_device_is_a_config_error_naming_the_reward(tmp_path):
    with pytest.raises(ConfigError, match=r"rewards.0.*device 'tpu:0'") as e:
        _cfg(tmp_path, "x", "rewards=[{name: mean_color, device: 'tpu:0'}]")
    assert "\n" not in str(e.value)
    assert _cfg(tmp_path, "x", "rewards=[{name: mean_color, device: cpu}]").rewards[0].device == "cpu"


@pytest.mark.component
def test_a_missing_gpu_is_refused_before_the_run_directory(tmp_path):
    from psrl.rl.grpo_trainer import GRPOTrainer

    count = torch.cuda.device_count()
    with pytest.raises(ConfigError, match=rf"rewards\[0\].device: 'cuda:{count}', but torch sees {count}"):
        GRPOTrainer(_cfg(tmp_path, "missing", f"rewards=[{{name: mean_color, device: 'cuda:{count}'}}]"))
    assert not (tmp_path / "missing").exists()


@pytest.mark.component
def test_a_reward_on_its_own_device_gives_the_same_step(tmp_path):
    from psrl.rl.grpo_trainer import GRPOTrainer
    from psrl.rl.tracking import read_metrics

    reward = "test_reward_device:blue_on_its_device"
    SEEN.clear()
    placed = GRPOTrainer(_cfg(tmp_path, "placed", f"rewards=[{{name: '{reward}', device: cpu}}]"))
    assert isinstance(placed.rewards[0], RewardOnDevice) and placed.rewards[0].name == reward
    placed.train()
    assert SEEN and all(d == torch.device("cpu") for d in SEEN)
    GRPOTrainer(_cfg(tmp_path, "default", f"rewards=[{{name: '{reward}'}}]")).train()
    (a,), (b,) = (read_metrics(tmp_path / n / "metrics.jsonl") for n in ("placed", "default"))
    for key in (f"reward/{reward}/mean", "approx_kl", "ratio_mean", "grad_norm"):
        assert a[key] == b[key], key


@pytest.mark.gpu
@pytest.mark.component
def test_a_reward_on_the_gpu_scores_a_cpu_policy(tmp_path):
    """The policy on the CPU, its reward on cuda:0: images travel to the GPU, scores come back to the CPU."""
    from psrl.rl.grpo_trainer import GRPOTrainer
    from psrl.rl.tracking import read_metrics

    SEEN.clear()
    reward = "test_reward_device:blue_on_its_device"
    GRPOTrainer(_cfg(tmp_path, "gpu", f"rewards=[{{name: '{reward}', device: 'cuda:0'}}]")).train()
    assert SEEN and all(d == torch.device("cuda", 0) for d in SEEN)
    (m,) = read_metrics(tmp_path / "gpu" / "metrics.jsonl")
    assert torch.isfinite(torch.tensor(m[f"reward/{reward}/mean"]))
