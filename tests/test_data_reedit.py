"""PSR's re-editing step: edit plans per task, the stage with an injected editor (which samples are edited, what the
editor sees, failures, disabled), and the instruction that follows describing the edited target."""
from __future__ import annotations

import random

import pytest
import torch
from PIL import Image

from psrl.config import ConfigError, load_config
from psrl.datagen import manifest as mf
from psrl.datagen import templates
from psrl.datagen.config import DataPipelineConfig
from psrl.datagen.instructions import appearance_violations, template_instruction
from psrl.datagen.stages import run_named_stage
from psrl.data.records import RecordError

pytestmark = pytest.mark.unit

PHRASES = ["cat", "calculator"]


def _slots(task):
    return templates.draw_slots(task, PHRASES, random.Random(0))


@pytest.mark.parametrize("task,key", [("Attribute", "attributes"), ("Action", "actions"), ("Background", "scene")])
def test_edit_changes_one_slot_and_the_instruction_follows(task, key):
    slots = _slots(task)
    for seed in range(20):
        text, after = templates.draw_edit(task, PHRASES, slots, random.Random(seed))
        assert set(after) == set(slots) and after[key] != slots[key]
        if key != "scene":
            changed = [i for i in range(2) if after[key][i] != slots[key][i]]
            assert len(changed) == 1 and f"the {PHRASES[changed[0]]} is {after[key][changed[0]]}" in text
            assert after["scene"] == slots["scene"]
        else:
            assert after["scene"] in text
        entry = {"task": task, "phrases": PHRASES, "slots": after, "prompt": "unused"}
        instruction, reason, _ = template_instruction(entry)
        assert reason is None and appearance_violations(instruction, PHRASES) == []
        new_value = after[key] if key == "scene" else after[key][changed[0]]
        assert new_value in instruction
    assert slots == _slots(task), "the input slots are not modified"


def _entry(i, task, slots, **extra):
    return {"id": f"s{i}", "seed": i, "task": task, "phrases": PHRASES, "slots": slots, "prompt": "p",
            "target": f"targets/s{i}.png", "references": ["r0.png", "r1.png"], "status": "kept",
            "boxes": [[0, 0, 4, 4], [10, 10, 16, 16]], **extra}


def _dataset(tmp_path, entries):
    (tmp_path / "targets").mkdir()
    for e in entries:
        Image.new("RGB", (16, 16), "red").save(tmp_path / e["target"])
    with mf.ManifestWriter(tmp_path / "references.jsonl") as w:
        for e in entries:
            w.write(e)


def _cfg(**reedit):
    return load_config(DataPipelineConfig, default={"device": "cpu", "reedit": {"batch_size": 8, **reedit}})


def test_stage_edits_eligible_targets_and_passes_the_rest(tmp_path):
    entries = [_entry(0, "Attribute", _slots("Attribute")), _entry(1, "Position", _slots("Position")),
               _entry(2, "Background", {}), _entry(3, "Action", _slots("Action")),
               _entry(4, "Background", _slots("Background"))]
    _dataset(tmp_path, entries)
    calls = []

    def editor(records, seeds):
        calls.append([(r.id, r.prompt, [s.image for s in r.subjects]) for r in records])
        if any(r.id == "s3" for r in records):
            raise RecordError("record 's3': the editor refuses this image")
        return torch.full((len(records), 3, 16, 16), 0.25)

    stats = run_named_stage("reedit", _cfg(), tmp_path, renderer=editor)
    out = {e["id"]: e for e in mf.read_manifest(tmp_path, "reedit")}
    # Position is never edited; a slot-less sample is not edited without a VLM to describe the edit
    assert out["s1"]["edit"] is None and out["s1"]["target"] == "targets/s1.png"
    assert out["s2"]["edit"] is None
    assert out["s3"]["status"] == "rejected" and out["s3"]["reason"] == "reedit_error"
    for sid in ("s0", "s4"):
        e = out[sid]
        assert e["target"] == f"edited/{sid}.png" and e["original_target"] == f"targets/{sid}.png"
        assert Image.open(tmp_path / e["target"]).getpixel((0, 0)) == (64, 64, 64)
        assert e["edit"].startswith(("Edit the image", "Change the setting")) and e["slots"] != _slots(e["task"])
    # the editor sees the target itself as its one input image, with the edit as the prompt
    first = {sid: (prompt, images) for sid, prompt, images in calls[0]}
    assert first["s0"] == (out["s0"]["edit"], ["targets/s0.png"])
    assert stats.kept == 4 and stats.rejected_by_reason == {"reedit_error": 1} and stats.extra["edited"] == 2

    # the instruction stage describes the edited target
    run_named_stage("instructions", _cfg(), tmp_path)
    done = {e["id"]: e for e in mf.read_kept(tmp_path, "instructions")}
    changed = next(a for a, b in zip(out["s0"]["slots"]["attributes"], _slots("Attribute")["attributes"]) if a != b)
    assert changed in done["s0"]["instruction"]


def test_slotless_samples_are_edited_when_a_vlm_writes_the_instructions(tmp_path):
    _dataset(tmp_path, [_entry(0, "Background", {})])
    cfg = load_config(DataPipelineConfig, default={"device": "cpu",
                                                   "instructions": {"vlm": {"url": "http://127.0.0.1:9/v1"}}})
    run_named_stage("reedit", cfg, tmp_path, renderer=lambda records, seeds: torch.zeros(len(records), 3, 16, 16))
    (e,) = mf.read_manifest(tmp_path, "reedit")
    assert e["edit"].startswith("Change the setting") and e["slots"] == {} and e["target"] == "edited/s0.png"


def test_disabled_or_zero_prob_edits_nothing_and_loads_no_model(tmp_path, monkeypatch):
    import psrl.models.factory

    monkeypatch.setattr(psrl.models.factory, "build_policy", lambda *a, **k: pytest.fail("no model may load"))
    for i, cfg in enumerate((_cfg(enabled=False), _cfg(prob=0.0))):
        root = tmp_path / str(i)
        root.mkdir()
        _dataset(root, [_entry(0, "Attribute", _slots("Attribute"))])
        stats = run_named_stage("reedit", cfg, root)
        assert stats.kept == 1 and stats.extra["edited"] == 0
        assert mf.read_manifest(root, "reedit")[0]["target"] == "targets/s0.png"


def test_bad_reedit_config_names_the_field():
    with pytest.raises(ConfigError, match="reedit.tasks.*Position"):
        _cfg(tasks=["Attribute", "Position"])
    with pytest.raises(ConfigError, match="reedit.prob"):
        _cfg(prob=1.5)
