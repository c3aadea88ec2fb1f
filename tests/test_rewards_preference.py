"""Preference / text-alignment / image-similarity rewards on tiny random components, formulas checked against
direct computations, checkpoint loading paths and bad model paths."""
import math

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from psrl.data.records import Record, SubjectRef, resolve_records
from psrl.errors import ModelLoadError
from psrl.rewards import build_reward
from psrl.images import pil_to_tensor


@pytest.fixture
def ref_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # _recs resolves reference paths under the working directory
    g = torch.Generator().manual_seed(0)
    Image.fromarray((torch.rand(40, 40, 3, generator=g) * 255).byte().numpy()).save(tmp_path / "a.png")
    return tmp_path


def _recs(n=2, prompt="a red cat"):
    """Records as a loader hands them over: reference paths resolved (here under the working directory)."""
    return resolve_records([Record(id=f"r{i}", prompt=prompt, subjects=(SubjectRef("a.png", "cat"),))
                            for i in range(n)], ".")


@pytest.mark.component
@pytest.mark.parametrize("name", ["hpsv3", "pickscore", "clip_t", "aesthetic", "clip_i", "dino"])
def test_each_reward_runs_on_tiny_models(name, ref_dir):
    reward = build_reward(name, {"path": "tiny"})
    images = torch.stack([torch.zeros(3, 32, 32), torch.rand(3, 32, 32), torch.ones(3, 32, 32)])
    out = reward(images, _recs(3))
    assert out.scores.shape == (3,) and torch.isfinite(out.scores).all()
    assert out.scores.unique().numel() > 1  # depends on the image
    bad = images.clone()
    bad[1, 0, 0, 0] = float("nan")
    out = reward(bad, _recs(3))
    assert math.isnan(out.scores[1].item()) and "NaN" in out.failures[1] and out.failures[0] is None


@pytest.mark.component
def test_clip_t_and_pickscore_match_direct_computation():
    from psrl.rewards.tiny import tiny_clip

    model, proc = tiny_clip()
    img = torch.rand(1, 3, 32, 32)
    pil = Image.fromarray((img[0].permute(1, 2, 0) * 255).round().byte().numpy())
    with torch.no_grad():
        i = model.get_image_features(**proc(images=[pil], return_tensors="pt")).pooler_output
        t = model.get_text_features(**proc.tokenizer(["a red cat"], return_tensors="pt", padding=True)).pooler_output
    cos = float(F.normalize(i, dim=-1) @ F.normalize(t, dim=-1).T)
    clip_t = build_reward("clip_t", {"path": "tiny", "scale": 100.0})(img, _recs(1))
    assert clip_t.scores.item() == pytest.approx(100 * cos, rel=1e-4)
    assert clip_t.details["cosine"].item() == pytest.approx(cos, rel=1e-4)
    pick = build_reward("pickscore", {"path": "tiny"})(img, _recs(1))
    assert pick.scores.item() == pytest.approx(float(model.logit_scale.detach().exp()) * cos, rel=1e-4)
    clamped = build_reward("clip_t", {"path": "tiny", "clamp_min": 0.0})(img, _recs(1))
    assert clamped.scores.item() == pytest.approx(max(cos, 0.0), rel=1e-4, abs=1e-7)


@pytest.mark.component
def test_image_similarity_is_one_for_the_reference_itself(ref_dir):
    ref = pil_to_tensor(Image.open(ref_dir / "a.png"))[None]
    for name in ("dino", "clip_i"):
        reward = build_reward(name, {"path": "tiny"})
        out = reward(ref, _recs(1))
        assert out.scores.item() == pytest.approx(1.0, abs=1e-5)
        again = reward(ref, _recs(1))  # the reference embedding now comes from the bounded cache
        assert again.scores.item() == pytest.approx(1.0, abs=1e-5) and len(reward._cache) == 1
        missing = reward(ref, resolve_records([Record(id="m", prompt="p", subjects=(SubjectRef("nope.png", "cat"),))],
                                              ref_dir))
        assert math.isnan(missing.scores.item()) and "not found" in missing.failures[0]
    dinov2 = build_reward("dino", {"embedder": {"kind": "dinov2", "path": "tiny"}, "scale": 100.0})
    assert dinov2(ref, _recs(1)).scores.item() == pytest.approx(100.0, abs=1e-3)


@pytest.mark.component
def test_aesthetic_head_loads_from_file(tmp_path):
    from safetensors.torch import save_file

    from psrl.rewards.tiny import tiny_aesthetic_head

    head = tiny_aesthetic_head(16)
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(tmp_path / "head.safetensors"))
    tiny = build_reward("aesthetic", {"path": "tiny"})
    loaded = build_reward("aesthetic", {"clip_path": "tiny", "head_path": str(tmp_path / "head.safetensors")})
    img = torch.rand(2, 3, 32, 32)
    assert torch.allclose(tiny(img, _recs()).scores, loaded(img, _recs()).scores)
    torch.save({"layers.0.weight": torch.zeros(4, 7)}, tmp_path / "bad.pth")
    with pytest.raises(ModelLoadError, match="not a LAION MLP"):
        build_reward("aesthetic", {"clip_path": "tiny", "head_path": str(tmp_path / "bad.pth")})


@pytest.mark.component
def test_hpsv3_batched_equals_single_and_checkpoint_remap(tmp_path):
    from safetensors.torch import save_file

    from psrl.rewards.hpsv3 import HPS_PIXELS, remap_hpsv3_key
    from psrl.rewards.tiny import tiny_qwen2_vl_hps

    reward = build_reward("hpsv3", {"path": "tiny", "batch_size": 3})
    imgs = torch.rand(3, 3, 32, 32)
    recs = [Record(id=str(i), prompt=p) for i, p in enumerate(["a cat", "a much longer prompt here", "x"])]
    batched = reward(imgs, recs)
    single = build_reward("hpsv3", {"path": "tiny", "batch_size": 1})(imgs, recs)
    assert torch.allclose(batched.scores, single.scores, atol=1e-5)  # right padding, last <|Reward|> read
    assert batched.details["sigma"].shape == (3,)
    # write the tiny model as a transformers-4.x HPSv3 checkpoint and load it back through the real path
    model, processor, head = tiny_qwen2_vl_hps()
    old = {}
    for k, v in model.state_dict().items():
        k4 = "visual." + k[len("model.visual."):] if k.startswith("model.visual.") else \
            "model." + k[len("model.language_model."):] if k.startswith("model.language_model.") else k
        assert remap_hpsv3_key(k4) == k
        old[k4] = v.contiguous()
    old.update({k: v.contiguous() for k, v in head.state_dict().items()})
    save_file(old, str(tmp_path / "HPSv3.safetensors"))
    base = tmp_path / "base"
    model.config.save_pretrained(base)
    processor.tokenizer.save_pretrained(base)
    processor.image_processor.save_pretrained(base)
    loaded = build_reward("hpsv3", {"path": str(tmp_path / "HPSv3.safetensors"), "base_path": str(base)})
    ref = build_reward("hpsv3", {"path": "tiny"})
    ip = ref.processor.image_processor
    ip.size = {"shortest_edge": HPS_PIXELS, "longest_edge": HPS_PIXELS}
    assert torch.allclose(loaded(imgs[:1], recs[:1]).scores, ref(imgs[:1], recs[:1]).scores, atol=1e-4)
    del old["rm_head.0.weight"]
    save_file(old, str(tmp_path / "broken.safetensors"))
    with pytest.raises((ModelLoadError, KeyError, RuntimeError)):
        build_reward("hpsv3", {"path": str(tmp_path / "broken.safetensors"), "base_path": str(base)})


@pytest.mark.component
@pytest.mark.parametrize("name,args", [
    ("hpsv3", {"path": "/nonexistent/HPSv3.safetensors", "base_path": "/nonexistent/base"}),
    ("pickscore", {"path": "/nonexistent/pick", "processor_path": "/nonexistent/proc"}),
    ("clip_t", {"path": "/nonexistent/clip"}),
    ("aesthetic", {"clip_path": "/nonexistent/clip", "head_path": "/nonexistent/head.pth"}),
    ("dino", {"path": "/nonexistent/dino"}),
    ("clip_i", {"path": "/nonexistent/clip"}),
])
def test_nonexistent_model_paths(name, args):
    with pytest.raises(ModelLoadError, match="does not exist"):
        build_reward(name, args)


@pytest.mark.unit
def test_hpsv3_prompt_is_the_training_collators_text_exactly():
    """INSTRUCTION and the reward-token suffix of the hpsv3 package's Qwen2-VL collator, compared character for
    character, then pinned by SHA-256 (a reward model reads its own training format)."""
    import hashlib

    from psrl.rewards.hpsv3 import HPS_INSTRUCTION, REWARD_SUFFIX

    assert hashlib.sha256(HPS_INSTRUCTION.encode()).hexdigest() == \
        "0393599dad45a971903d1d62a3acf9bad3ccccdafa7f40f680523419e1f68b7a"
    assert hashlib.sha256(REWARD_SUFFIX.encode()).hexdigest() == \
        "2471faca094ae5bd6fe17b71dce20c3d7583625545e235889f7e74e7eeb69d0a"
