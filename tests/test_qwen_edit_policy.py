"""QwenImageEditPlusPolicy on tiny components: diffusers oracle (two references, true CFG with norm rescale),
rollout/log-prob consistency across records with different layouts, LoRA round trip through diffusers."""
import numpy as np
import pytest
import torch
from PIL import Image

from psrl.data.records import Record, RecordError, SubjectRef
from psrl.models.base import Policy
from psrl.sampling import SamplingConfig
from psrl.models.config import LoraConfig, ModelConfig

pytestmark = pytest.mark.component

pytest.importorskip("diffusers")

AREAS = {"condition_area": 32 * 32, "vae_area": 32 * 32}


def _png(root, name, size, seed):
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(root / name)
    return str(root / name)  # a resolved path, as records reach the policy


def _policy(root, **args):
    from psrl.models.qwen_edit_plus import QwenImageEditPlusPolicy

    cfg = ModelConfig(name="qwen_image_edit_plus", path="tiny", lora=LoraConfig(rank=4, alpha=4),
                      args={**AREAS, **args})
    return QwenImageEditPlusPolicy.from_config(cfg, "cpu")


def _rec(rid, *images, prompt="the dog from picture 1 next to the cat"):
    return Record(id=rid, prompt=prompt, subjects=tuple(SubjectRef(image=i, phrase="x") for i in images))


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _pipeline():
    from diffusers import QwenImageEditPlusPipeline

    from psrl.models.tiny_more import tiny_qwen_image_edit_plus_components

    pipe = QwenImageEditPlusPipeline(**tiny_qwen_image_edit_plus_components())
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("scale", [4.0, 1.0])
def test_ode_generation_matches_qwen_edit_plus_pipeline(tmp_path, scale):
    from psrl.models.tiny_more import qwen_edit_plus_image_areas

    a, b = _png(tmp_path, "a.png", (32, 32), 1), _png(tmp_path, "b.png", (48, 32), 2)
    images = [Image.open(tmp_path / n).convert("RGB") for n in (a, b)]
    with qwen_edit_plus_image_areas(**AREAS):
        ref = _pipeline()(image=images, prompt="the dog from picture 1 next to the cat", negative_prompt=" ",
                          true_cfg_scale=scale, num_inference_steps=3, height=32, width=32, output_type="pt",
                          generator=_gen()).images
    policy = _policy(tmp_path)
    assert isinstance(policy, Policy)
    out = policy.generate([_rec("r", a, b)], SamplingConfig(num_steps=3, height=32, width=32, guidance_scale=scale),
                          _gen())
    assert out.shape == ref.shape == (1, 3, 32, 32)
    assert (out - ref).abs().max().item() < 1e-4


def test_rollout_recompute_with_mixed_layouts(tmp_path):
    a, b = _png(tmp_path, "a.png", (32, 32), 1), _png(tmp_path, "b.png", (48, 32), 2)
    policy = _policy(tmp_path)
    recs = [_rec("two", a, b)] * 2 + [_rec("one", b, prompt="a cat")] * 2
    sampling = SamplingConfig(num_steps=2, height=32, width=32, guidance_scale=4.0, noise_level=1.0)
    ro = policy.rollout(recs, sampling, [_gen(i) for i in range(4)])
    assert ro.latents.shape == (4, 3, 16, 16)   # 32x32 -> 8x8 latents -> 16 tokens of 4 * z_dim channels
    assert ro.cond["ref_shapes"][0].tolist()[:2] == [[4, 4], [4, 4]]
    assert ro.cond["prompt_len"][0] != ro.cond["prompt_len"][2]
    for step in ro.trained_steps:
        lp = policy.log_prob(ro.select([3, 0]), step).log_prob
        assert torch.allclose(lp, ro.log_probs[[3, 0], step], atol=1e-5, rtol=0)


def test_lora_round_trip_and_bad_inputs(tmp_path):
    from psrl.models.tiny_more import qwen_edit_plus_image_areas

    a = _png(tmp_path, "a.png", (32, 32), 1)
    policy = _policy(tmp_path)
    with torch.no_grad():
        for i, p in enumerate(policy.trainable_parameters()):
            p.copy_(torch.randn(p.shape, generator=_gen(i)) * 0.2)
    policy.save_lora(tmp_path / "lora")
    s = SamplingConfig(num_steps=2, height=32, width=32, guidance_scale=1.0)
    ours = policy.generate([_rec("r", a)], s, _gen(5))
    pipe = _pipeline()
    pipe.load_lora_weights(tmp_path / "lora")
    with qwen_edit_plus_image_areas(**AREAS):
        theirs = pipe(image=[Image.open(tmp_path / a).convert("RGB")], prompt=_rec("r").prompt, true_cfg_scale=1.0,
                      num_inference_steps=2, height=32, width=32, output_type="pt", generator=_gen(5)).images
    assert (ours - theirs).abs().max().item() < 1e-4
    with pytest.raises(RecordError, match="'empty'.*no reference"):
        policy.generate([_rec("empty")], s)
    with pytest.raises(ValueError, match="multiples of 8"):
        policy.generate([_rec("r", a)], SamplingConfig(num_steps=1, height=36, width=32))
