"""The PSRBench / T2I-CompBench position rule, relation parsing and the position reward."""
import pytest
import torch

from psrl.data.records import Record, SubjectRef
from psrl.rewards.detection import Detections
from psrl.rewards.position import PositionReward, parse_relation, position_score


@pytest.mark.unit
@pytest.mark.parametrize("text,rel", [
    ("The airplane is above the trolley, near a runway.", "above"),
    ("A cat to the left of a dog", "to the left of"),
    ("a cup on the right of a plate", "on the right of"),
    ("the ball is under the table, below the lamp", "below"),   # list order: "below" comes before "under"
    ("the box on top of the car and above", "above"),           # "above" precedes "on top of" in the list
    ("a dog next to a cat", None),
])
def test_parse_relation(text, rel):
    assert parse_relation(text) == rel


A_LEFT = [0, 0, 10, 10]     # centre (5, 5)
B_RIGHT = [40, 0, 50, 10]   # centre (45, 5)
B_BELOW = [0, 40, 10, 50]   # centre (5, 45)


@pytest.mark.unit
def test_position_rule_directions():
    assert position_score(A_LEFT, B_RIGHT, "to the left of") == 1.0
    assert position_score(A_LEFT, B_RIGHT, "on the right of") == 0.0
    assert position_score(B_RIGHT, A_LEFT, "to the right of") == 1.0
    assert position_score(A_LEFT, B_BELOW, "above") == 1.0       # y grows downward: B below A
    assert position_score(A_LEFT, B_BELOW, "on top of") == 1.0
    assert position_score(B_BELOW, A_LEFT, "under") == 1.0
    assert position_score(A_LEFT, B_BELOW, "below") == 0.0
    # left/right need |dx| > |dy|; above/below have no dominance check
    diag = [30, 60, 40, 70]  # centre (35, 65): dx 30, dy 60
    assert position_score(A_LEFT, diag, "to the left of") == 0.0
    assert position_score(A_LEFT, diag, "above") == 1.0
    assert position_score(A_LEFT, B_RIGHT, "dancing with") == 0.0


@pytest.mark.unit
def test_position_rule_iou_term_and_degenerate():
    a, b = [0, 0, 10, 10], [5, 0, 15, 10]  # IoU = 50 / 150 = 1/3, dx = 5 > 0
    assert position_score(a, b, "to the left of") == pytest.approx(0.1 / (1 / 3))
    assert position_score([0, 0, 0, 0], [0, 0, 0, 0], "above") == 0.0
    # next to / near: unreachable through the vocab but part of the rule
    assert position_score([0, 0, 10, 10], [300, 0, 310, 10], "next to") == 1.0     # |dy| = 0 < 150
    assert position_score([0, 0, 10, 10], [300, 400, 310, 410], "near") == pytest.approx(150 / 400)


class StubDetector:
    """Test fixture: fixed boxes per phrase (random-weight detectors cannot give meaningful boxes)."""

    def __init__(self, boxes: dict):
        self.boxes = boxes

    def detect(self, images, phrases):
        out = []
        for p in phrases:
            b = self.boxes.get(p, [])
            out.append(Detections(torch.tensor(b, dtype=torch.float32).reshape(-1, 4),
                                  torch.linspace(0.9, 0.5, len(b)) if b else torch.zeros(0)))
        return out


def _rec(prompt, a="cat", b="dog", **tags):
    return Record(id="r", prompt=prompt, subjects=(SubjectRef(None, a), SubjectRef(None, b)), tags=tags)


@pytest.mark.component
def test_position_reward_with_stub_detector():
    img = torch.rand(1, 3, 64, 64)
    reward = PositionReward(detector=StubDetector({"cat": [A_LEFT], "dog": [B_RIGHT]}))
    out = reward(img.repeat(4, 1, 1, 1), [
        _rec("a cat to the left of a dog"), _rec("a cat to the right of a dog"),
        _rec("a cat and a dog"), _rec("a cat and a bird", b="bird", relation="above")])
    assert out.scores[:2].tolist() == [1.0, 0.0]
    assert torch.isnan(out.scores[2]) and "no spatial relation" in out.failures[2]
    assert out.scores[3].item() == 0.0 and out.details["missing_subjects"][3] == ["bird"]
    assert out.failures[3] is None
    assert out.details["relation"][0] == "to the left of"


@pytest.mark.component
def test_position_same_phrase_honest_vs_compat():
    det = StubDetector({"cat": [B_RIGHT, A_LEFT]})
    img = torch.rand(1, 3, 64, 64)
    rec = [_rec("a cat to the left of a cat", a="cat", b="cat")]
    assert PositionReward(detector=det)(img, rec).scores.item() == 1.0
    assert PositionReward(detector=det, mode="psrbench_compat")(img, rec).scores.item() == 0.0


@pytest.mark.component
def test_position_reward_tiny_detector_end_to_end():
    reward = PositionReward(path="tiny", detector={"kind": "grounding_dino", "box_threshold": 0.0})
    out = reward(torch.rand(2, 3, 64, 64), [_rec("a cat above a dog")] * 2)
    assert out.scores.shape == (2,)
    assert torch.isfinite(out.scores).all() and ((out.scores >= 0) & (out.scores <= 1)).all()
