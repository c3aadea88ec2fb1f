"""Every policy is built one way (issue #11 item 6): ``Policy(components, cfg, device)`` and
``Policy.from_config(cfg, device)`` on the shared setup (dtype, LoRA, frozen modules), the same ``model.args``
checks and one size rule, ``latent_size(height, width)``. The diffusers oracles in each policy's own test file are the
proof that the outputs did not change."""
import pytest
import torch

from psrl.config import ConfigError
from psrl.models import POLICIES
from psrl.sampling import SamplingConfig
from psrl.models.checks import check_sampling_size
from psrl.models.config import LoraConfig, ModelConfig

pytestmark = pytest.mark.component

NAMES = ["flux", "flux_kontext", "sd3", "qwen_image_edit_plus"]
LORA = LoraConfig(rank=2, alpha=2)


def _cfg(name, **kw):
    kw.setdefault("lora", LORA)
    return ModelConfig(name=name, path="tiny", max_sequence_length=16, **kw)


def test_every_registered_policy_is_covered():
    assert sorted(POLICIES.names()) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_constructor_and_from_config_build_the_same_policy(name):
    cls = POLICIES.get(name)
    cfg = _cfg(name)
    torch.manual_seed(0)  # the LoRA's gaussian init draws from the global generator
    direct = cls(cls.tiny_components(cfg), cfg, "cpu")
    torch.manual_seed(0)
    loaded = cls.from_config(cfg, "cpu")
    assert type(direct) is type(loaded) is cls and direct.cfg is cfg
    a, b = dict(direct.transformer.named_parameters()), dict(loaded.transformer.named_parameters())
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    trained = [n for n, p in direct.transformer.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in n for n in trained)
    assert direct.module is direct.transformer and not direct.transformer.training
    frozen = direct.frozen_modules()
    assert frozen and not any(m.training or any(p.requires_grad for p in m.parameters()) for m in frozen)


@pytest.mark.parametrize("name", NAMES)
def test_one_size_rule_and_one_args_check(name):
    cls = POLICIES.get(name)
    policy = cls.from_config(_cfg(name, lora=None), "cpu")
    assert not list(policy.trainable_parameters())  # lora: null leaves the base model frozen
    multiple = policy.vae_scale_factor * policy.patch_size
    assert policy.latent_size(4 * multiple, 2 * multiple) == (4 * multiple // policy.vae_scale_factor,
                                                              2 * multiple // policy.vae_scale_factor)
    if multiple > 1:
        with pytest.raises(ValueError, match=f"multiples of {multiple} for this model"):
            policy.latent_size(4 * multiple + 1, 2 * multiple)
        with pytest.raises(ConfigError, match=f"sampling.height/width: height and width must be multiples of "
                                              f"{multiple}"):
            check_sampling_size(policy, SamplingConfig(height=4 * multiple + 1, width=2 * multiple),
                                "sampling.height/width")
    with pytest.raises(ConfigError, match=f"model.args.bogus: unknown option for {name}"):
        cls.from_config(_cfg(name, args={"bogus": 1}), "cpu")


def test_tiny_only_args_are_refused_for_loaded_weights_before_loading(tmp_path):
    cls = POLICIES.get("flux")
    with pytest.raises(ConfigError, match="model.args.guidance_embeds only applies to model.path: tiny"):
        cls.from_config(ModelConfig(path=str(tmp_path / "no_such_model"), args={"guidance_embeds": False}))


def test_frozen_modules_take_the_model_dtype_except_the_ones_kept_in_fp32():
    policy = POLICIES.get("sd3").from_config(_cfg("sd3", dtype="bfloat16"), "cpu")
    assert next(policy.transformer.parameters()).dtype == torch.bfloat16
    assert all(next(m.parameters()).dtype == torch.bfloat16 for m in policy.text_encoders)
    assert next(policy.vae.parameters()).dtype == torch.float32  # SD3's KEEP_FP32
    assert all(p.dtype == torch.float32 for p in policy.trainable_parameters())  # LoRA master weights


def test_from_config_loads_at_the_configured_variant(tmp_path):
    """model.variant (and model.revision, the same keyword path) reach from_pretrained through the one loader: a
    folder holding only fp16-variant weight files loads with variant: fp16 and is refused without it."""
    from psrl.errors import ModelLoadError
    from psrl.models.flux import FluxPolicy
    from psrl.models.tiny import tiny_flux_components

    comps = tiny_flux_components(seed=3)
    for name, c in comps.items():
        c.save_pretrained(tmp_path / name, **({"variant": "fp16"} if isinstance(c, torch.nn.Module) else {}))
    policy = FluxPolicy.from_config(ModelConfig(path=str(tmp_path), variant="fp16", lora=None))
    assert torch.equal(next(policy.transformer.parameters()), next(comps["transformer"].parameters()))
    with pytest.raises(ModelLoadError, match="could not load transformer"):
        FluxPolicy.from_config(ModelConfig(path=str(tmp_path), lora=None))
