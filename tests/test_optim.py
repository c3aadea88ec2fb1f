"""The optimizer switch shared by `psrl train` and `psrl sft`."""
import importlib.util

import pytest
import torch

from psrl.config import ConfigError
from psrl.errors import PsrlError
from psrl.rl.optim import make_optimizer
from psrl.rl.run_config import load_run_config

pytestmark = pytest.mark.unit


def test_adamw_is_built_with_the_given_hyperparameters():
    p = torch.nn.Parameter(torch.zeros(3))
    opt = make_optimizer([p], "adamw", lr=1e-3, betas=(0.8, 0.9), weight_decay=0.1, eps=1e-6)
    group = opt.param_groups[0]
    assert isinstance(opt, torch.optim.AdamW)
    assert (group["lr"], group["betas"], group["weight_decay"], group["eps"]) == (1e-3, (0.8, 0.9), 0.1, 1e-6)


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes is installed")
def test_adamw8bit_without_bitsandbytes_says_what_to_install():
    with pytest.raises(PsrlError, match=r"psrl\[bnb\]"):
        make_optimizer([torch.nn.Parameter(torch.zeros(1))], "adamw8bit", lr=1e-3, betas=(0.9, 0.99),
                       weight_decay=0.0, eps=1e-8)


def test_unknown_optimizer_in_the_run_config_names_key_and_value():
    with pytest.raises(ConfigError, match=r"train.optimizer.*'sgd'"):
        load_run_config(None, ["train.optimizer=sgd"])


def test_clip_gradients_norm_clips_and_handles_no_gradients():
    from psrl.rl.optim import clip_gradients

    a, b = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(4))
    assert clip_gradients([a, b], 0.0) == 0.0 and clip_gradients([a, b], 1.0) == 0.0  # a no-signal step
    a.grad = torch.tensor([3.0, 0.0, 0.0])
    assert clip_gradients([a, b], 0.0) == pytest.approx(3.0) and torch.equal(a.grad, torch.tensor([3.0, 0, 0]))
    assert clip_gradients([a, b], 1.5) == pytest.approx(3.0)
    assert float(a.grad.norm()) == pytest.approx(1.5, rel=1e-4)
