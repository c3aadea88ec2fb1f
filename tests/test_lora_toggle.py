"""disable_lora flips peft's switch directly: same outputs as diffusers' disable_adapters, flags untouched."""
import pytest
import torch

from psrl.models.config import LoraConfig, ModelConfig
from psrl.models.factory import build_policy

pytestmark = pytest.mark.component


def test_disable_lora_matches_diffusers_and_keeps_flags():
    policy = build_policy(ModelConfig(name="flux", path="tiny", lora=LoraConfig(rank=4, alpha=4, init=True)), "cpu")
    with torch.no_grad():  # make the LoRA matter
        for name, p in policy.transformer.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    tr = policy.transformer
    x = torch.randn(1, 16, tr.config.in_channels)
    kwargs = dict(hidden_states=x, encoder_hidden_states=torch.randn(1, 4, tr.config.joint_attention_dim),
                  pooled_projections=torch.randn(1, tr.config.pooled_projection_dim), timestep=torch.tensor([0.5]),
                  img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(4, 3), return_dict=False)
    if tr.config.guidance_embeds:
        kwargs["guidance"] = torch.tensor([3.5])
    flags = [p.requires_grad for p in tr.parameters()]
    with torch.no_grad():
        with_lora = tr(**kwargs)[0]
        with policy.disable_lora():
            ours = tr(**kwargs)[0]
            assert [p.requires_grad for p in tr.parameters()] == flags
        tr.disable_adapters()
        theirs = tr(**kwargs)[0]
        tr.enable_adapters()
        again = tr(**kwargs)[0]
    assert torch.equal(ours, theirs) and not torch.allclose(ours, with_lora)
    assert torch.equal(again, with_lora)
    with pytest.raises(ValueError), policy.disable_lora():
        raise ValueError("inside")
    with torch.no_grad():
        assert torch.equal(tr(**kwargs)[0], with_lora)  # restored after an exception
