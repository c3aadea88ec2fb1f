"""One image loader everywhere (issue #10 §5): the policy's reference loader, the rewards' reference loader, the SFT
target loader and the rewards' in-memory inputs decode a file the same way (EXIF orientation, 16-bit greyscale,
transparency onto a background) and refuse the same files (minimum side, aspect ratio), each with its own error type.
"""
import numpy as np
import pytest
import torch
from PIL import Image

from psrl.data.records import Record, RecordError, SubjectRef, resolve_records
from psrl.images import (MAX_ASPECT, MIN_SIDE, ImageLoadError, check_image, group_by_size, load_image,
                         size_problem)
from psrl.models.references import ReferenceLoader
from psrl.rewards.images import ReferenceImageError, ReferenceImages, to_pil_images
from psrl.rl.sft_trainer import load_target


def _rec(*images, rid="r", root=None, target=None):
    """A record; with ``root``, resolved there as a loader hands it over."""
    rec = Record(id=rid, prompt="p", subjects=tuple(SubjectRef(im, "cat") for im in images), target=target)
    return resolve_records([rec], root)[0] if root is not None else rec


def _policy_load(root, name):
    return ReferenceLoader(max_references=4).load(_rec(name, root=root))[0]


def _reward_load(root, name):
    return ReferenceImages().load(_rec(name, root=root).subjects[0].image)


LOADERS = {"psrl.images": lambda root, name: load_image(root / name), "policy": _policy_load,
           "reward": _reward_load}


@pytest.fixture
def files(tmp_path):
    # a phone photo: stored 60x30 (left half red, right half blue) with EXIF Orientation=6 (display rotated 90 deg
    # clockwise, so it shows 30x60 with red on top)
    arr = np.zeros((30, 60, 3), np.uint8)
    arr[:, :30] = (255, 0, 0)
    arr[:, 30:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(arr).save(tmp_path / "phone.jpg", exif=exif.tobytes(), quality=95)
    Image.fromarray(np.full((20, 24), 32768, np.uint16)).save(tmp_path / "grey16.png")
    Image.new("RGBA", (20, 20), (255, 0, 0, 0)).save(tmp_path / "clear.png")     # fully transparent red
    Image.new("LA", (20, 20), (0, 128)).save(tmp_path / "la.png")                # half-transparent black
    Image.new("RGB", (1, 1), (9, 9, 9)).save(tmp_path / "dot.png")
    Image.new("RGB", (1800, 8), (9, 9, 9)).save(tmp_path / "strip.png")
    return tmp_path


# ------------------------------------------------------------------ the rule itself (pure)
@pytest.mark.unit
def test_size_problem_is_the_one_rule():
    assert size_problem(8, 8) is None and size_problem(1600, 8) is None      # exactly 200:1 is allowed (Qwen's rule)
    kind, why = size_problem(1, 1)
    assert kind == "too_small" and "1x1" in why and f"minimum side {MIN_SIDE}" in why
    kind, why = size_problem(1800, 8)
    assert kind == "too_elongated" and "1800x8" in why and "225" in why and f"{MAX_ASPECT:g}" in why
    assert size_problem(1800, 8, max_aspect=None) is None and size_problem(1, 1, min_side=0) is None


# ------------------------------------------------------------------ the same pixels through every loader
@pytest.mark.unit
@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_exif_orientation_is_applied_like_diffusers(files, loader):
    from diffusers.utils import load_image as diffusers_load_image

    img = LOADERS[loader](files, "phone.jpg")
    ref = diffusers_load_image(str(files / "phone.jpg"))
    assert img.size == ref.size == (30, 60)                                  # upright, not sideways
    assert np.array_equal(np.asarray(img), np.asarray(ref))
    top, bottom = np.asarray(img)[5, 15], np.asarray(img)[55, 15]
    assert top[0] > 200 and top[2] < 50 and bottom[2] > 200 and bottom[0] < 50  # red on top, blue below


@pytest.mark.unit
@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_16bit_grey_is_scaled_not_clipped(files, loader):
    img = LOADERS[loader](files, "grey16.png")
    assert img.mode == "RGB" and img.size == (24, 20)
    assert np.unique(np.asarray(img)).tolist() == [128]                      # 32768 / 65535 of full scale, not 255


@pytest.mark.unit
@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_transparency_is_composited_onto_white(files, loader):
    assert np.unique(np.asarray(LOADERS[loader](files, "clear.png"))).tolist() == [255]   # not red, not black
    la = np.asarray(LOADERS[loader](files, "la.png"))
    assert np.unique(la).tolist() == [127]                                   # half black over white


@pytest.mark.unit
def test_background_is_configurable_in_both_reference_loaders(files):
    black = (0, 0, 0)
    policy = ReferenceLoader(max_references=1, background=black).load(_rec("clear.png", root=files))[0]
    reward = ReferenceImages(background=black).load(str(files / "clear.png"))
    assert np.asarray(policy).max() == 0 and np.asarray(reward).max() == 0


@pytest.mark.unit
def test_sft_target_goes_through_the_same_loader(files):
    x = load_target(_rec(rid="t", target="phone.jpg", root=files), 32, 16)   # H=32, W=16: portrait
    assert x.shape == (3, 32, 16) and x.dtype == torch.float32
    assert x[0, 2, 8] > 0.8 and x[2, 2, 8] < 0.2 and x[2, 29, 8] > 0.8     # upright: red on top, blue below
    assert torch.allclose(load_target(_rec(rid="g", target="grey16.png", root=files), 8, 8),
                          torch.full((3, 8, 8), 128 / 255))
    with pytest.raises(RecordError, match="'d'.*dot.png.*1x1.*too small"):
        load_target(_rec(rid="d", target="dot.png", root=files), 8, 8)


# ------------------------------------------------------------------ the same files refused, each with its error type
@pytest.mark.unit
@pytest.mark.parametrize("name,why", [("dot.png", "1x1.*too small"), ("strip.png", "1800x8.*too elongated")])
def test_policy_and_rewards_refuse_the_same_files(files, name, why):
    with pytest.raises(RecordError, match=f"record 'r': reference image '{name}'.*{why}"):
        _policy_load(files, name)
    with pytest.raises(ReferenceImageError, match=f"{name}.*{why}"):
        _reward_load(files, name)
    with pytest.raises(ImageLoadError) as e:
        load_image(files / name)
    assert e.value.kind in ("too_small", "too_elongated")
    assert check_image(files / name) is not None


@pytest.mark.component
def test_a_refused_reference_is_nan_for_its_sample_only(files):
    from psrl.rewards import build_reward

    Image.new("RGB", (32, 32), (200, 30, 30)).save(files / "ok.png")
    reward = build_reward("dino", {"path": "tiny"})
    out = reward(torch.rand(4, 3, 32, 32), [_rec(name, root=files) for name in ("ok.png", "dot.png", "ok.png",
                                                                                 "strip.png")])
    assert torch.isfinite(out.scores[[0, 2]]).all() and out.scores[[1, 3]].isnan().all()
    assert "1x1" in out.failures[1] and "too small" in out.failures[1]
    assert "too elongated" in out.failures[3] and out.failures[0] is None and out.failures[2] is None


@pytest.mark.unit
def test_in_memory_inputs_follow_the_loader_rules():
    rgba = Image.new("RGBA", (16, 16), (0, 0, 255, 0))
    pils, failures = to_pil_images([rgba, Image.new("RGB", (1800, 8)), torch.rand(3, 4, 4)])
    assert np.unique(np.asarray(pils[0])).tolist() == [255] and failures[0] is None   # onto white, not black
    assert pils[1] is None and "too elongated" in failures[1]
    assert pils[2] is None and "too small" in failures[2]


@pytest.mark.component
@pytest.mark.parametrize("name", ["subject_consistency", "vlm_consistency", "edit_consistency", "dino", "clip_i"])
def test_every_reward_that_reads_references_takes_the_background(files, name):
    from psrl.rewards import build_reward

    reward = build_reward(name, {"path": "tiny", "background": (0, 0, 0)})
    assert np.asarray(reward.refs.load(str(files / "clear.png"))).max() == 0


@pytest.mark.unit
def test_group_by_size_keeps_first_seen_group_order_and_item_order():
    shapes = [(3, 8, 8), (3, 16, 8), (3, 8, 8), (3, 8, 16), (3, 16, 8), (3, 8, 8)]
    groups = group_by_size(range(len(shapes)), lambda i: shapes[i])
    assert groups == [[0, 2, 5], [1, 4], [3]]
    assert group_by_size([], lambda i: i) == []
