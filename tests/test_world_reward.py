"""The pocket world's detector and its reward ``pocket_subjects`` (psrl.world.detect / psrl.world.reward)."""
import dataclasses
import math

import numpy as np
import pytest
import torch
from PIL import Image

from psrl.data.records import Record, SubjectRef
from psrl.images import pil_to_tensor
from psrl.rewards import build_reward
from psrl.world.detect import Detection, background_colour, detect_subjects
from psrl.world.render import render_scene
from psrl.world.reward import CONTROL_DRAWS, constraint_score, control_subjects, match_subjects, palette_fidelity
from psrl.world.scenes import SUBSETS, Constraint, Scene, sample_scene
from psrl.world.subjects import all_subjects, make_subject, split_subjects


def _record(scene: Scene, i: int = 0) -> Record:
    return Record(id=f"{scene.subset}/{i}", prompt=scene.instruction,
                  subjects=tuple(SubjectRef(None, s.phrase) for s in scene.subjects), tags={"subset": scene.subset})


def _scenes(seed: int, subset: str, n: int, subjects=None):
    rng = np.random.default_rng(seed)
    return [sample_scene(rng, subjects or split_subjects()[1], subset) for _ in range(n)]


def _images(scenes) -> torch.Tensor:
    return torch.stack([pil_to_tensor(render_scene(s)[0]) for s in scenes])


def _det(box, shape="circle", colour="red", texture="solid", shadow=False, area=None):
    x0, y0, x1, y1 = box
    return Detection(box=box, area=area or (x1 - x0) * (y1 - y0), colour=colour, shape=shape, texture=texture,
                     shadow=shadow, shape_iou={s: 0.5 for s in ("circle", "square", "triangle", "diamond", "star",
                                                                 "cross")})


@pytest.mark.component
def test_the_detector_reads_every_attribute_of_rendered_subjects():
    rng = np.random.default_rng(1)
    wrong, total = [], 0
    for i in range(140):
        scene = sample_scene(rng, all_subjects(), list(SUBSETS)[i % 7])
        image, boxes = render_scene(scene)
        arr = np.asarray(image)
        dets = detect_subjects(arr)
        assert len(dets) == len(scene.subjects)
        assert background_colour(arr)[0] == scene.background
        for s, box, action in zip(scene.subjects, boxes, scene.actions or ("",) * len(boxes)):
            total += 1
            d = next(d for d in dets if d.box[0] <= (box[0] + box[2]) / 2 < d.box[2]
                     and d.box[1] <= (box[1] + box[3]) / 2 < d.box[3])
            assert np.abs(np.subtract(d.box, box)).max() <= 2  # the renderer's box, within 2 pixels (thin star tips)
            # the graded evidence agrees with the decision it grades
            for attr, graded in (("shape", d.shape_iou), ("colour", d.colour_share), ("texture", d.texture_evidence)):
                assert max(graded, key=graded.get) == getattr(d, attr) and all(0 <= v <= 1 for v in graded.values())
            if (d.shape, d.colour, d.texture) != (s.shape, s.colour, s.texture):
                wrong.append((s.id, d.shape, d.colour, d.texture))
            if action:
                assert d.shadow == (action == "jumping"), (scene.instruction, s.id)
    assert len(wrong) <= total // 100, wrong  # >= 99% of subjects read exactly (0 of 1,700 in a longer run)


@pytest.mark.unit
def test_no_subject_in_a_blank_or_noise_image_and_a_bad_array_is_refused():
    assert detect_subjects(np.full((64, 64, 3), 230, np.uint8)) == []
    rng = np.random.default_rng(0)
    assert detect_subjects(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) == []  # blobs, but none subject-like
    grey_noise = np.clip(rng.normal(128, 40, (64, 64, 3)), 0, 255).astype(np.uint8)  # a random generator's look
    assert detect_subjects(grey_noise) == []
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        detect_subjects(np.zeros((64, 64), np.uint8))


@pytest.mark.unit
def test_only_the_largest_blobs_are_read():
    from psrl.world.detect import MAX_BLOBS

    arr = np.full((64, 64, 3), (205, 240, 215), np.uint8)
    for i, y in enumerate(range(1, 60, 7)):
        for x in range(1, 60, 7):
            arr[y:y + 5, x:x + 5 + (i == 3)] = (225, 35, 35)  # 81 squares; row 3's are one pixel wider
    dets = detect_subjects(arr)
    assert len(dets) == MAX_BLOBS and all(d.colour == "red" for d in dets)
    assert [d.area for d in dets[:9]] == [30] * 9 and dets[9].area == 25


@pytest.mark.unit
def test_assignment_is_one_to_one_and_prefers_full_matches():
    red_star, blue_star = make_subject("star", "red", "solid"), make_subject("star", "blue", "solid")
    dets = [_det((0, 0, 8, 8), "star", "blue"), _det((20, 0, 28, 8), "star", "red")]
    assert match_subjects([red_star, blue_star], dets) == [1, 0]
    assert match_subjects([red_star, blue_star], dets[:1]) in ([None, 0], [0, None])
    # two subjects, one detection: one of them must go without
    assert sorted(j for j in match_subjects([red_star, red_star], dets[1:]) if j is not None) == [0]
    assert match_subjects([red_star], []) == [None]


@pytest.mark.unit
def test_constraints_score_on_the_matched_detections():
    arr = np.full((64, 64, 3), (205, 240, 215), np.uint8)  # mint
    left, right = _det((2, 20, 20, 38), area=200), _det((40, 20, 58, 38), shadow=True, area=100)
    assert constraint_score(Constraint("relation", (0, 1), "to the left of"), [left, right], arr) == 1.0
    assert constraint_score(Constraint("relation", (1, 0), "to the left of"), [left, right], arr) == 0.0
    assert constraint_score(Constraint("relation", (0, 1), "to the left of"), [left, None], arr) == 0.0
    assert constraint_score(Constraint("bigger", (0, 1)), [left, right], arr) == 1.0
    assert constraint_score(Constraint("action", (1,), "jumping"), [left, right], arr) == 1.0
    assert constraint_score(Constraint("action", (0,), "jumping"), [left, right], arr) == 0.0
    assert constraint_score(Constraint("background", (), "mint"), [], arr) == 1.0
    assert constraint_score(Constraint("background", (), "pink"), [], arr) == 0.0
    assert constraint_score(Constraint("order", (1, 0)), [left, right], arr) == 0.0
    assert constraint_score(Constraint("order", (0, 1)), [left, right], arr) == 1.0


@pytest.mark.unit
def test_fidelity_is_high_on_renders_and_low_on_noise():
    scene = _scenes(0, "Complex", 1)[0]
    assert palette_fidelity(np.asarray(render_scene(scene)[0])) > 0.97
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert palette_fidelity(noise) < 0.5


@pytest.mark.component
@pytest.mark.parametrize("subset", list(SUBSETS))
def test_ground_truth_scores_one_and_other_subjects_score_low(subset):
    reward = build_reward("pocket_subjects", {"score": "mean"})
    scenes = _scenes(2, subset, 12)
    records = [_record(s, i) for i, s in enumerate(scenes)]
    truth = reward(_images(scenes), records)
    assert all(f is None for f in truth.failures)
    assert truth.details["identity"].min() == 1.0 and truth.details["semantic"].min() == 1.0
    assert truth.details["fidelity"].min() > 0.97 and truth.details["identity_dense"].min() > 0.9
    assert all(m == [] for m in truth.details["missing_subjects"])
    # the same layouts drawn with other held-out subjects: identity falls, fidelity does not
    others = _scenes(3, subset, 12)
    swapped = [dataclasses.replace(s, subjects=o.subjects) for s, o in zip(scenes, others)]
    out = reward(_images(swapped), records)
    assert out.details["identity"].mean() < 0.5
    assert out.details["identity_dense"].mean() < truth.details["identity_dense"].mean() - 0.3
    assert out.details["fidelity"].min() > 0.97


@pytest.mark.unit
def test_control_subjects_are_other_subjects_of_the_same_split_and_deterministic():
    train, held = split_subjects()
    own = held[:3]
    draws = control_subjects(own)
    assert len(draws) == CONTROL_DRAWS and draws == control_subjects(own)  # same record -> same control
    for d in draws:
        assert len(set(d)) == 3 and not set(d) & set(own) and set(d) <= set(held)
    assert all(set(d) <= set(train) for d in control_subjects(train[:2]))
    assert control_subjects(held[:2]) != control_subjects(held[1:3])  # seeded by the phrases
    with pytest.raises(ValueError, match="only 0 others"):
        control_subjects(held, draws=1)  # every held-out subject in one record leaves none to draw


@pytest.mark.component
def test_reference_gain_is_zero_for_an_image_that_ignores_its_references():
    """The reference-swap control: one fixed scene scored against 40 records of other subjects matches some of
    their attributes by chance (identity > 0), but no more than it matches the controls' (gain ~0); ground truth
    keeps a large gain."""
    reward = build_reward("pocket_subjects", {"score": "identity_gain"})
    scenes = _scenes(6, "Background", 40)
    fixed = _images(scenes[:1]).expand(40, -1, -1, -1)
    records = [_record(s, i) for i, s in enumerate(scenes)]
    ignore = reward(fixed, records)
    assert ignore.details["identity"].mean() > 0.15  # chance matches exist ...
    assert abs(float(ignore.scores.mean())) < 0.05  # ... and the control cancels them
    truth = reward(_images(scenes), records)
    assert torch.allclose(truth.scores, truth.details["identity"] - truth.details["identity_control"])
    assert float(truth.scores.mean()) > 0.5 and float(truth.details["identity_control"].max()) < 0.7
    # by attribute: ground truth agrees on all three, its control on each far less; the row means are identity
    attrs = truth.details["attributes"]
    assert all(a["shape"] == a["colour"] == a["texture"] == 1.0 for a in attrs)
    assert max(np.mean([a[f"{k}_control"] for a in attrs]) for k in ("shape", "colour", "texture")) < 0.6
    first = ignore.details["attributes"][0]
    assert np.mean([first[k] for k in ("shape", "colour", "texture")]) == pytest.approx(
        float(ignore.details["identity"][0]))


@pytest.mark.component
def test_swapped_positions_fail_the_relation_but_keep_identity():
    reward = build_reward("pocket_subjects", {"score": "semantic"})
    scenes = _scenes(4, "Position", 10)
    mirrored = [dataclasses.replace(s, positions=tuple((1 - x, 1 - y) for x, y in s.positions)) for s in scenes]
    out = reward(_images(mirrored), [_record(s, i) for i, s in enumerate(scenes)])
    assert out.scores.max() == 0.0
    assert out.details["identity"].min() == 1.0


@pytest.mark.component
def test_an_unscorable_sample_fails_alone_with_its_reason():
    reward = build_reward("pocket_subjects", {"score": "identity"})
    scenes = _scenes(5, "Background", 4)
    records = [_record(s, i) for i, s in enumerate(scenes)]
    records[1] = dataclasses.replace(records[1], subjects=(SubjectRef(None, "cat"), SubjectRef(None, "dog")))
    images = [render_scene(s)[0] for s in scenes]
    images[2] = Image.new("RGB", (1800, 8), (10, 200, 10))
    out = reward(images, records)
    assert math.isnan(out.scores[1]) and "'cat' is not a pocket-world subject" in out.failures[1]
    assert math.isnan(out.scores[2]) and "too elongated" in out.failures[2]
    assert out.scores[[0, 3]].tolist() == [1.0, 1.0] and out.failures[0] is None and out.failures[3] is None
    semantic = build_reward("pocket_subjects", {"score": "semantic"})
    plain = dataclasses.replace(records[0], prompt="two shapes")
    out = semantic([images[0]], [plain])
    assert math.isnan(out.scores[0]) and "states nothing the pocket world can check" in out.failures[0]
    assert out.details["identity"][0] == 1.0  # the other parts are still reported


@pytest.mark.component
def test_dense_identity_falls_gradually_with_blur():
    from PIL import ImageFilter

    reward = build_reward("pocket_subjects", {"score": "identity_dense"})
    scenes = _scenes(6, "Three", 10)
    records = [_record(s, i) for i, s in enumerate(scenes)]
    means = []
    for radius in (0, 1.0, 2.0):
        images = [render_scene(s)[0].filter(ImageFilter.GaussianBlur(radius)) for s in scenes]
        means.append(float(reward(images, records).scores.mean()))
    assert means[0] > 0.95 and means[0] > means[1] > means[2], means


@pytest.mark.unit
def test_score_must_be_known():
    with pytest.raises(ValueError, match="score must be one of"):
        build_reward("pocket_subjects", {"score": "beauty"})
