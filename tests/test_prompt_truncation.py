"""A prompt longer than a text encoder keeps is warned about once per record (id, tokens dropped), not silently
cut and not at every step: FLUX and FLUX-Kontext (CLIP 77, T5 model.max_sequence_length), SD3 (CLIP, T5; the
pipeline's own per-call warning is silenced); Qwen-Image-Edit-Plus does not truncate at all."""
import logging

import numpy as np
import pytest
from PIL import Image

from psrl.data.records import Record, SubjectRef, resolve_records
from psrl.sampling import SamplingConfig
from psrl.models.config import ModelConfig
from psrl.models.truncation import tokens_dropped, warn_truncated_prompts

pytestmark = pytest.mark.component

pytest.importorskip("diffusers")

LONG = "a red cat and a dog on a sofa, " * 4  # 124 characters, ~90 tiny CLIP tokens (character-level)
SHORT = "a red cat"
SAMPLING = SamplingConfig(num_steps=2, height=16, width=16)


def _records():
    # a group of 3 copies of the long record, as a step samples it, plus a short one
    return [Record(id="long-1", prompt=LONG)] * 3 + [Record(id="short-1", prompt=SHORT)]


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "prompt" in r.getMessage()]


def test_tokens_dropped_counts_what_truncation_cuts():
    from psrl.models.tiny import tiny_clip_tokenizer, tiny_t5_tokenizer

    for tok, max_length in [(tiny_t5_tokenizer(), 16), (tiny_clip_tokenizer(), 77)]:
        full = tok([LONG], truncation=False, verbose=False)["input_ids"][0]
        cut = tok([LONG], max_length=max_length, truncation=True)["input_ids"][0]
        assert len(cut) == max_length < len(full)
        assert tokens_dropped(tok, [LONG, SHORT], max_length) == [len(full) - max_length, 0]
    seen: dict = {}
    warned = warn_truncated_prompts(_records(), tiny_t5_tokenizer(), 16, "T5", "model.max_sequence_length", seen)
    assert [w[0] for w in warned] == ["long-1"]
    assert warn_truncated_prompts(_records(), tiny_t5_tokenizer(), 16, "T5", "x", seen) == []  # already checked


def _expected_t5_drop(max_length):
    from psrl.models.tiny import tiny_t5_tokenizer

    return len(tiny_t5_tokenizer()([LONG], verbose=False)["input_ids"][0]) - max_length


def test_flux_warns_once_per_record_not_per_step(caplog):
    from psrl.models.flux import FluxPolicy

    policy = FluxPolicy.from_config(ModelConfig(name="flux", path="tiny", max_sequence_length=16))
    with caplog.at_level(logging.WARNING):
        for _ in range(3):  # three steps drawing the same records
            policy.encode(_records(), SAMPLING)
    msgs = _warnings(caplog)
    t5 = [m for m in msgs if "T5" in m]
    assert len(t5) == 1 and "'long-1'" in t5[0] and "model.max_sequence_length keeps 16" in t5[0]
    assert f"the last {_expected_t5_drop(16)} token(s) are dropped" in t5[0]
    clip = [m for m in msgs if "CLIP" in m]
    assert len(clip) == 1 and "'long-1'" in clip[0] and "keeps 77" in clip[0]
    assert not any("short-1" in m for m in msgs)
    # a prompt that fits the budget is not warned about
    caplog.clear()
    roomy = FluxPolicy.from_config(ModelConfig(name="flux", path="tiny", max_sequence_length=128))
    with caplog.at_level(logging.WARNING):
        roomy.encode(_records(), SAMPLING)
    assert not [m for m in _warnings(caplog) if "T5" in m]


def test_flux_kontext_warns_once_per_record(tmp_path, caplog):
    from psrl.models.flux_kontext import FluxKontextPolicy

    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "a.png")
    cfg = ModelConfig(name="flux_kontext", path="tiny", max_sequence_length=16,
                      args={"reference_long_side_single": 16})
    policy = FluxKontextPolicy.from_config(cfg, "cpu")
    records = resolve_records([Record(id="long-k", prompt=LONG, subjects=(SubjectRef("a.png", "cat"),))], tmp_path)
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            policy.encode(records, SAMPLING)
    t5 = [m for m in _warnings(caplog) if "T5" in m]
    assert len(t5) == 1 and "'long-k'" in t5[0] and f"last {_expected_t5_drop(16)} token(s)" in t5[0]


def test_sd3_warns_once_per_record_and_silences_the_per_call_pipeline_warning(caplog):
    from psrl.models.sd3 import SD3Policy

    policy = SD3Policy.from_config(ModelConfig(name="sd3", path="tiny", max_sequence_length=16), "cpu")
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            policy.encode(_records(), SAMPLING)
    msgs = _warnings(caplog)
    t5 = [m for m in msgs if "T5" in m]
    assert len(t5) == 1 and "'long-1'" in t5[0] and f"last {_expected_t5_drop(16)} token(s)" in t5[0]
    assert len([m for m in msgs if "CLIP" in m]) == 1
    assert "The following part of your input was truncated" not in caplog.text


def test_qwen_edit_plus_keeps_the_whole_prompt(tmp_path, caplog):
    # diffusers' QwenImageEditPlusPipeline.encode_prompt takes max_sequence_length but never cuts the prompt: the
    # text encoder reads it whole, so there is nothing to warn about; the embedding grows with the prompt instead.
    from psrl.models.qwen_edit_plus import QwenImageEditPlusPolicy

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "a.png")
    cfg = ModelConfig(name="qwen_image_edit_plus", path="tiny", max_sequence_length=16,
                      args={"condition_area": 32 * 32, "vae_area": 32 * 32})
    policy = QwenImageEditPlusPolicy.from_config(cfg, "cpu")
    sub = (SubjectRef(str(tmp_path / "a.png"), "cat"),)  # a resolved path, as records reach the policy
    with caplog.at_level(logging.WARNING):
        cond, _ = policy.encode([Record(id="q-long", prompt=LONG * 3, subjects=sub),
                                 Record(id="q-short", prompt=SHORT, subjects=sub)], SAMPLING)
    lengths = cond["prompt_len"].tolist()
    assert lengths[0] - lengths[1] > 16  # the long prompt was not cut to the budget
    assert not [m for m in _warnings(caplog) if "dropped" in m]


def test_many_truncated_records_are_listed_up_to_a_limit_then_counted(caplog):
    """A large dataset of long prompts names the first few records, says once that the rest are counted, and still
    returns (and remembers) every truncated record."""
    from psrl.models.tiny import tiny_t5_tokenizer
    from psrl.models.truncation import LISTED

    records = [Record(id=f"long-{i}", prompt=LONG) for i in range(LISTED + 7)] + [Record(id="short", prompt=SHORT)]
    seen: dict = {}
    with caplog.at_level(logging.WARNING):
        found = warn_truncated_prompts(records[:4], tiny_t5_tokenizer(), 16, "T5", "model.max_sequence_length", seen)
        found += warn_truncated_prompts(records, tiny_t5_tokenizer(), 16, "T5", "model.max_sequence_length", seen)
    msgs = [r.getMessage() for r in caplog.records]
    assert len(found) == LISTED + 7 and seen[("#truncated", "T5")] == LISTED + 7
    assert sum("its prompt is" in m for m in msgs) == LISTED
    assert sum("are not listed (raise model.max_sequence_length" in m for m in msgs) == 1
