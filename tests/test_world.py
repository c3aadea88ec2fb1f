"""The pocket world's subjects, renderer and scenes (psrl.world.subjects / render / scenes)."""
import itertools

import numpy as np
import pytest

from psrl.world.render import POLYGONS, inside_shape, render_reference, render_scene
from psrl.world.scenes import SUBSETS, Constraint, Scene, parse_instruction, sample_scene
from psrl.world.subjects import (BACKGROUNDS, COLOURS, SHAPES, TEXTURES, all_subjects, make_subject,
                                 split_subjects, subjects_by_phrase)

pytestmark = pytest.mark.unit


def test_subjects_are_every_combination_with_unique_ids_and_phrases():
    subjects = all_subjects()
    assert len(subjects) == len(SHAPES) * len(COLOURS) * len(TEXTURES) == 144
    assert len({s.id for s in subjects}) == len({s.phrase for s in subjects}) == 144
    assert subjects_by_phrase()["red striped star"] == make_subject("star", "red", "striped")
    assert make_subject("star", "red", "solid").phrase == "red star"
    with pytest.raises(ValueError, match="unknown shape 'blob'"):
        make_subject("blob", "red", "solid")


def test_split_is_deterministic_disjoint_and_covers_every_attribute_in_training():
    train, held = split_subjects()
    assert (len(train), len(held)) == (108, 36)
    assert split_subjects() == (train, held)
    assert not {s.id for s in train} & {s.id for s in held}
    for attr, values in (("shape", SHAPES), ("colour", COLOURS), ("texture", TEXTURES)):
        assert {getattr(s, attr) for s in train} == set(values)
        assert {getattr(s, attr) for s in held} == set(values)


def test_colours_are_far_apart_and_backgrounds_are_pale():
    rgb = np.array(list(COLOURS.values()), dtype=float)
    dists = [np.linalg.norm(a - b) for a, b in itertools.combinations(rgb, 2)]
    assert min(dists) >= 70
    for name, c in BACKGROUNDS.items():
        assert (max(c) - min(c)) / max(c) <= 0.25, name
    for name, c in COLOURS.items():
        assert (max(c) - min(c)) / max(c) >= 0.7, name


def test_polygons_agree_with_matplotlib_path():
    path_mod = pytest.importorskip("matplotlib.path")
    rng = np.random.default_rng(0)
    pts = rng.uniform(-1.1, 1.1, size=(4000, 2))
    for shape, poly in POLYGONS.items():
        ours = inside_shape(shape, pts[:, 0], pts[:, 1])
        theirs = path_mod.Path(poly).contains_points(pts)
        assert (ours != theirs).mean() < 0.002, shape  # points exactly on an edge may differ
    circle = inside_shape("circle", pts[:, 0], pts[:, 1])
    assert np.array_equal(circle, np.hypot(pts[:, 0], pts[:, 1]) <= 0.92)


def test_reference_is_the_subject_on_white_and_deterministic():
    s = make_subject("cross", "blue", "dotted")
    a, b = render_reference(s), render_reference(s, size=32)
    assert a.size == (32, 32) and a.mode == "RGB"
    assert a.tobytes() == b.tobytes()
    arr = np.asarray(a)
    assert (arr[0, 0] == 255).all() and (arr[16, 0] == 255).all()
    centre_colours = {tuple(int(v) for v in arr[y, x]) for y in range(12, 20) for x in range(12, 20)}
    assert COLOURS["blue"] in centre_colours and (25, 25, 25) in centre_colours
    assert render_reference(s, size=64).size == (64, 64)


@pytest.mark.parametrize("subset", list(SUBSETS))
def test_scenes_of_every_subset_render_with_tight_boxes(subset):
    train, _ = split_subjects()
    rng = np.random.default_rng(7)
    for _ in range(20):
        scene = sample_scene(rng, train, subset)
        assert len(scene.subjects) == SUBSETS[subset] == len(set(scene.subjects))
        image, boxes = render_scene(scene)
        arr = np.asarray(image).astype(int)
        assert image.size == (64, 64)
        assert all(b is not None for b in boxes)
        for s, (x0, y0, x1, y1) in zip(scene.subjects, boxes):
            assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
            crop = arr[y0:y1, x0:x1].reshape(-1, 3)
            assert (np.abs(crop - np.array(s.rgb)).sum(axis=1) < 30).any()  # the body colour is in its box
            # outside the box (one pixel out) nothing of the subject: the box is tight
            ring = np.ones((64, 64), bool)
            for ox0, oy0, ox1, oy1 in boxes:  # its own box (and one pixel around) and the other subjects'
                ring[max(oy0 - 1, 0):oy1 + 1, max(ox0 - 1, 0):ox1 + 1] = False
            assert not (np.abs(arr[ring] - np.array(s.rgb)).sum(axis=1) < 6).any()
        for a, b in itertools.combinations(boxes, 2):  # subjects never overlap
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def test_render_is_deterministic_and_resolution_independent():
    rng = np.random.default_rng(3)
    scene = sample_scene(rng, all_subjects(), "Complex")
    a, boxes_a = render_scene(scene)
    b, boxes_b = render_scene(scene)
    assert a.tobytes() == b.tobytes() and boxes_a == boxes_b
    big, boxes_big = render_scene(scene, size=128)
    for small_box, large_box in zip(boxes_a, boxes_big):
        assert np.allclose(np.array(large_box) / 2, small_box, atol=1)


def test_sample_scene_is_deterministic_given_the_seed_and_checks_its_inputs():
    train, _ = split_subjects()
    one = [sample_scene(np.random.default_rng(5), train, s) for s in SUBSETS]
    two = [sample_scene(np.random.default_rng(5), train, s) for s in SUBSETS]
    assert one == two
    with pytest.raises(ValueError, match="unknown subset 'Pose'"):
        sample_scene(np.random.default_rng(0), train, "Pose")
    with pytest.raises(ValueError, match="needs 4 distinct subjects"):
        sample_scene(np.random.default_rng(0), train[:3], "Four")


def _holds(c: Constraint, scene: Scene, boxes) -> bool:
    """The ground truth of a constraint from the scene's own geometry."""
    centre = [((b[0] + b[2]) / 2, (b[1] + b[3]) / 2) for b in boxes]
    if c.kind == "background":
        return c.value == scene.background
    if c.kind == "bigger":
        i, j = c.subjects
        return scene.sizes[i] > scene.sizes[j]
    if c.kind == "action":
        return scene.actions[c.subjects[0]] == c.value
    if c.kind == "relation":
        (ax, ay), (bx, by) = centre[c.subjects[0]], centre[c.subjects[1]]
        return {"to the left of": ax < bx, "to the right of": ax > bx, "above": ay < by, "below": ay > by}[c.value]
    if c.kind == "order":
        xs = [centre[i][0] for i in c.subjects]
        return xs == sorted(xs)
    raise AssertionError(c.kind)


EXPECTED_KINDS = {"Attribute": {"bigger"}, "Action": {"action"}, "Background": {"background"},
                  "Position": {"relation"}, "Complex": {"relation", "action", "background"},
                  "Three": {"order"}, "Four": {"order"}}


@pytest.mark.parametrize("subset", list(SUBSETS))
def test_instructions_parse_back_into_constraints_the_scene_satisfies(subset):
    rng = np.random.default_rng(11)
    for _ in range(30):
        scene = sample_scene(rng, all_subjects(), subset)
        constraints = parse_instruction(scene.instruction, [s.phrase for s in scene.subjects])
        assert {c.kind for c in constraints} == EXPECTED_KINDS[subset], scene.instruction
        _, boxes = render_scene(scene)
        assert all(_holds(c, scene, boxes) for c in constraints), scene.instruction


def test_parser_reads_the_templates_and_ignores_other_text():
    phrases = ["red star", "blue striped circle"]
    got = parse_instruction("The red star is jumping to the right of the blue striped circle, which is resting, "
                            "on a mint background", phrases)
    assert got == [Constraint("background", (), "mint"), Constraint("action", (0,), "jumping"),
                   Constraint("action", (1,), "resting"), Constraint("relation", (0, 1), "to the right of")]
    assert parse_instruction("a small red star and a big blue striped circle", phrases) == [
        Constraint("bigger", (1, 0))]
    assert parse_instruction("a red star on a plaid background", phrases) == []  # not a world background
    assert parse_instruction("a photo of a dog", phrases) == []
