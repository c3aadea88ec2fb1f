"""Data pipeline without models: vocabulary, planning, manifests, resume, prompts (templates and a fake LLM server),
grounding rules, instructions and the appearance rule, near-duplicates, export, config."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from fake_chat import FakeChatServer
from psrl.config import ConfigError, load_config
from psrl.datagen import manifest as mf
from psrl.datagen.boxes import box_iou, relation_from_boxes
from psrl.datagen.config import TASKS, DataPipelineConfig, GroundConfig
from psrl.datagen.export import run_export
from psrl.datagen.filter import near_duplicates
from psrl.datagen.ground import choose_boxes
from psrl.datagen.instructions import appearance_violations, template_instruction
from psrl.datagen.llm import mentions, parse_tagged
from psrl.datagen.runner import BaseStage, kept, rejected, run_stage
from psrl.datagen.stages import run_named_stage
from psrl.datagen.subjects import load_vocabulary, phrase_of, plan_sample
from psrl.fileio import write_jsonl_atomic
from psrl.data.records import read_records, resolve_under


def cfg_with(**sections) -> DataPipelineConfig:
    return load_config(DataPipelineConfig, default=sections)


# ---------------------------------------------------------------- vocabulary and planning
@pytest.mark.unit
def test_objects365_vocabulary_has_365_distinct_categories():
    vocab = load_vocabulary()
    assert len(vocab) == 365
    assert vocab[0] == "Person" and "Calculator" in vocab and "Cat" in vocab
    assert len({phrase_of(c) for c in vocab}) == 365
    assert phrase_of("Cabinet/Shelf") == "cabinet"


@pytest.mark.unit
def test_user_vocabulary_replaces_objects365(tmp_path):
    f = tmp_path / "v.txt"
    f.write_text("# mine\ncat\ndog\nDog\nteapot\nrobot\n\n")
    assert load_vocabulary(f) == ["cat", "dog", "teapot", "robot"]  # "Dog" merges with "dog"
    (tmp_path / "small.txt").write_text("a\nb\n")
    with pytest.raises(Exception, match="at least 4"):
        load_vocabulary(tmp_path / "small.txt")


@pytest.mark.unit
def test_plan_is_deterministic_and_maps_counts_to_tasks():
    cfg = cfg_with(subjects={"count_weights": [1, 1, 1]})
    vocab = load_vocabulary()
    plans = [plan_sample(i, vocab, cfg) for i in range(200)]
    assert plans == [plan_sample(i, vocab, cfg) for i in range(200)]
    for p in plans:
        n = len(p["categories"])
        assert 2 <= n <= 4 and len(set(p["phrases"])) == n
        assert p["task"] == {3: "Three", 4: "Four"}.get(n, p["task"])
        if n == 2:
            assert p["task"] in TASKS[:5]
    assert {p["task"] for p in plans} == set(TASKS)
    assert len({p["seed"] for p in plans}) == 200


# ---------------------------------------------------------------- manifests and resume
@pytest.mark.unit
def test_truncated_last_line_is_ignored_and_cut_before_appending(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text('{"id": "a", "status": "kept"}\n{"id": "b", "sta')
    assert [e["id"] for e in mf.iter_manifest(path)] == ["a"]
    with mf.ManifestWriter(path) as w:
        w.write({"id": "b", "status": "kept"})
    assert path.read_text() == '{"id": "a", "status": "kept"}\n{"id": "b", "status": "kept"}\n'


@pytest.mark.unit
def test_malformed_manifest_line_names_file_and_line(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text('{"id": "a", "status": "kept"}\n{"id": "b"}\n')
    with pytest.raises(mf.ManifestError, match=r"s.jsonl:2"):
        list(mf.iter_manifest(path))


@pytest.mark.unit
def test_missing_input_stage_names_the_command(tmp_path):
    with pytest.raises(mf.ManifestError, match="psrl data prompts"):
        mf.read_kept(tmp_path, "prompts")


@pytest.mark.unit
def test_merge_parts_orders_by_input_and_deduplicates(tmp_path):
    for rank, ids in ((0, ["c", "a"]), (1, ["b", "a"])):
        with mf.ManifestWriter(mf.part_path(tmp_path, "x", rank)) as w:
            for i in ids:
                w.write({"id": i, "status": "kept", "rank": rank})
    assert mf.merge_parts(tmp_path, "x", ["a", "b", "c"]) == 3
    entries = list(mf.iter_manifest(mf.manifest_path(tmp_path, "x")))
    assert [e["id"] for e in entries] == ["a", "b", "c"] and entries[0]["rank"] == 0
    assert mf.part_paths(tmp_path, "x") == []


class CountingStage(BaseStage):
    """Keeps even indices, rejects odd ones; raises after ``fail_after`` processed samples (a crash mid-stage)."""

    name = "count"
    batch_size = 3

    def __init__(self, n: int, fail_after: int | None = None):
        self.n, self.fail_after, self.calls = n, fail_after, 0

    def inputs(self, dataset):
        return [{"id": f"{i:03d}", "i": i} for i in range(self.n)]

    def process(self, batch):
        out = []
        for e in batch:
            if self.fail_after is not None and self.calls >= self.fail_after:
                raise RuntimeError("injected crash")
            self.calls += 1
            out.append(kept(e, v=e["i"] * 2) if e["i"] % 2 == 0 else rejected(e, "odd", f"{e['i']} is odd"))
        return out


@pytest.mark.unit
def test_stage_killed_midway_resumes_without_duplicates(tmp_path):
    with pytest.raises(RuntimeError, match="injected crash"):
        run_stage(CountingStage(10, fail_after=7), tmp_path)  # batches of 3: 6 samples written, the 3rd batch dies
    assert len(list(mf.iter_manifest(tmp_path / "count.jsonl"))) == 6
    resumed = CountingStage(10)
    stats = run_stage(resumed, tmp_path)
    assert resumed.calls == 4  # only the missing samples are processed again
    ids = [e["id"] for e in mf.iter_manifest(tmp_path / "count.jsonl")]
    assert ids == [f"{i:03d}" for i in range(10)]
    assert (stats.inputs, stats.kept, stats.rejected, stats.new) == (10, 5, 5, 4)
    assert stats.rejected_by_reason == {"odd": 5}
    assert json.loads((tmp_path / "stats.json").read_text())["count"]["kept"] == 5
    again = CountingStage(10)
    assert run_stage(again, tmp_path).new == 0 and again.calls == 0  # idempotent


# ---------------------------------------------------------------- prompts
@pytest.mark.unit
def test_template_prompts_name_every_subject(tmp_path):
    cfg = cfg_with(subjects={"num_samples": 40, "count_weights": [1, 1, 1]})
    run_named_stage("subjects", cfg, tmp_path)
    stats = run_named_stage("prompts", cfg, tmp_path)
    assert stats.kept == 40
    for e in mf.read_kept(tmp_path, "prompts"):
        assert all(mentions(e["prompt"], p) for p in e["phrases"]), e["prompt"]
        assert e["prompt_source"] == "template" and "scene" in e["slots"]


@pytest.mark.unit
def test_parse_tagged_and_mentions():
    assert parse_tagged("blah\n[Prompt]: A cat and a dog.\n", "Prompt") == "A cat and a dog."
    assert parse_tagged("**[Prompt]:** \"A cat\"", "Prompt") == "A cat"
    assert parse_tagged("[Thought]: x\n[Prompt]: y\n[Note]: z", "Prompt") == "y"
    assert parse_tagged("A cat and a dog", "Prompt") is None
    assert mentions("Two cats nap", "cat") and mentions("the Egg Tart", "egg tart")
    assert not mentions("a category", "cat") and not mentions("an eggtart", "egg tart")


def _llm_reply(request: dict) -> str:
    text = request["messages"][0]["content"]
    subjects = text.split("scene: ")[1].split(".\n")[0].split("; ")
    if "flaky" in subjects[0]:
        return "I cannot help with that."
    if "partial" in subjects[0]:
        return f"[Prompt]: A photo of a {subjects[0]} alone."
    return "[Thought]: easy\n[Prompt]: A photo of " + " and ".join(f"a {s}" for s in subjects) + " in a park."


@pytest.mark.unit
def test_llm_prompts_are_strictly_parsed_and_retried(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("flaky thing\npartial thing\ncat\ndog\nteapot\nrobot\n")
    with FakeChatServer(_llm_reply, statuses=[500]) as server:
        cfg = cfg_with(subjects={"num_samples": 12, "vocab": str(vocab), "counts": [2], "count_weights": [1]},
                       prompts={"llm": {"url": server.url, "retries": 2, "timeout": 5}})
        run_named_stage("subjects", cfg, tmp_path)
        stats = run_named_stage("prompts", cfg, tmp_path)
    entries = mf.read_manifest(tmp_path, "prompts")
    assert len(entries) == 12 and stats.kept + stats.rejected == 12
    assert server.requests >= 13  # the first request got a 500 and was retried
    for e in entries:
        first = e["phrases"][0]
        if first.startswith("flaky"):
            assert e["status"] == "rejected" and e["reason"] == "llm_unparsable" and "cannot" in e["raw_reply"]
        elif first.startswith("partial"):
            assert e["status"] == "rejected" and e["reason"] == "llm_missing_subject"
        else:
            assert e["status"] == "kept" and e["prompt_source"] == "llm"
            assert all(mentions(e["prompt"], p) for p in e["phrases"])
    assert stats.kept == sum(e["status"] == "kept" for e in entries) > 0


@pytest.mark.unit
def test_llm_endpoint_down_rejects_with_reason(tmp_path):
    cfg = cfg_with(subjects={"num_samples": 2},
                   prompts={"llm": {"url": "http://127.0.0.1:9/v1", "retries": 1, "timeout": 1}})
    run_named_stage("subjects", cfg, tmp_path)
    from psrl.datagen.llm import endpoint_client
    from psrl.datagen.prompts import PromptsStage
    stage = PromptsStage(cfg, client=endpoint_client(cfg.prompts.llm, backoff=0.01))
    stats = run_stage(stage, tmp_path)
    assert stats.rejected_by_reason == {"llm_error": 2}
    assert "failed after 2 attempts" in mf.read_manifest(tmp_path, "prompts")[0]["detail"]


# ---------------------------------------------------------------- grounding and positions
@pytest.mark.unit
def test_choose_boxes_rejections():
    cfg = GroundConfig(min_box_area=0.01, min_box_side=8, max_pair_iou=0.5)
    a = ([[0, 0, 40, 40], [50, 50, 60, 60]], [0.9, 0.95])
    b = ([[60, 60, 100, 100]], [0.8])
    boxes, scores, reason, _ = choose_boxes([([[0, 0, 40, 40]], [0.9]), b], ["a", "b"], 100, 100, cfg)
    assert reason is None and boxes == [[0, 0, 40, 40], [60, 60, 100, 100]] and scores == [0.9, 0.8]
    assert choose_boxes([a, b], ["a", "b"], 100, 100, cfg)[2] is None  # best box of a is 10x10: still large enough
    assert choose_boxes([([], []), b], ["a", "b"], 100, 100, cfg)[2] == "missing_subject"
    assert choose_boxes([([[0, 0, 5, 50]], [0.9]), b], ["a", "b"], 100, 100, cfg)[2] == "box_too_small"
    same = ([[58, 58, 100, 100]], [0.7])
    assert choose_boxes([same, b], ["a", "b"], 100, 100, cfg)[2] == "subjects_share_box"
    # boxes are clamped to the image before any test
    assert choose_boxes([([[-20, -20, 40, 40]], [0.9]), b], ["a", "b"], 100, 100, cfg)[0][0] == [0, 0, 40, 40]


@pytest.mark.unit
def test_relation_from_boxes_follows_the_position_metric():
    left, right = [0, 40, 20, 60], [60, 40, 80, 60]
    top, bottom = [40, 0, 60, 20], [40, 60, 60, 80]
    assert relation_from_boxes(left, right) == "to the left of"
    assert relation_from_boxes(right, left) == "to the right of"
    assert relation_from_boxes(top, bottom) == "above"
    assert relation_from_boxes(bottom, top) == "below"
    assert relation_from_boxes(left, [5, 40, 25, 60]) is None  # overlapping: ambiguous
    assert box_iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(1 / 3)


# ---------------------------------------------------------------- instructions
def _entry(task: str, phrases: list[str], **extra) -> dict:
    import random

    from psrl.datagen import templates
    slots = templates.draw_slots(task, phrases, random.Random(0))
    return {"id": "x", "task": task, "phrases": phrases, "slots": slots, "prompt": "p",
            "boxes": [[0, 40, 20, 60], [60, 40, 80, 60], [0, 0, 10, 10], [90, 90, 99, 99]][: len(phrases)], **extra}


@pytest.mark.unit
@pytest.mark.parametrize("task", TASKS)
def test_template_instruction_per_task_names_subjects_without_appearance(task):
    n = {"Three": 3, "Four": 4}.get(task, 2)
    phrases = ["cat", "calculator", "teapot", "egg tart"][:n]
    text, reason, _ = template_instruction(_entry(task, phrases))
    assert reason is None
    assert all(mentions(text, p) for p in phrases), text
    assert appearance_violations(text, phrases) == []
    if task == "Position":
        assert text.startswith("The cat is to the left of the calculator")


@pytest.mark.unit
def test_templates_agree_in_number_with_plural_categories():
    from psrl.datagen import templates

    assert [templates.is_plural(p) for p in ("green beans", "scissors", "bus", "wine glass", "tennis", "billiards",
                                             "asparagus", "cat")] == [True, True] + [False] * 6
    slots = {"scene": "on a beach", "attributes": ["wearing a crown", "wearing a cape"]}
    text = templates.instruction("Attribute", ["green beans", "bus"], slots)
    assert text.startswith("The green beans are wearing a crown and the bus is wearing a cape")
    assert templates.t2i_prompt("Attribute", ["green beans", "bus"], slots).startswith("A photo of green beans ")
    assert template_instruction({"task": "Position", "phrases": ["nuts", "cat"], "slots": {}, "prompt": "p",
                                 "boxes": [[0, 0, 10, 10], [50, 0, 60, 10]]})[0].startswith("The nuts are ")


@pytest.mark.unit
def test_position_instruction_rejects_overlapping_boxes():
    e = _entry("Position", ["cat", "dog"])
    e["boxes"] = [[0, 0, 50, 50], [5, 5, 55, 55]]
    assert template_instruction(e)[1] == "ambiguous_position"


@pytest.mark.unit
def test_appearance_rule():
    phrases = ["cat", "egg tart"]
    assert appearance_violations("The fluffy orange cat sits by the egg tart.", phrases) == ["fluffy cat",
                                                                                            "orange cat"]
    assert appearance_violations("The cat is very small, the egg tarts are golden.", phrases) == [
        "small cat", "golden egg tart"]
    assert appearance_violations("The cat wearing a red hat sits next to the egg tart in a green park.",
                                 phrases) == []
    assert appearance_violations("The striped cat", phrases, extra_words=["tabby"]) == ["striped cat"]
    assert appearance_violations("The tabby cat", phrases, extra_words=["tabby"]) == ["tabby cat"]


@pytest.mark.unit
def test_vlm_instructions_get_images_and_are_checked(tmp_path):
    Image.new("RGB", (8, 8), "red").save(tmp_path / "t.png")
    Image.new("RGB", (8, 8), "blue").save(tmp_path / "r0.png")
    Image.new("RGB", (8, 8), "green").save(tmp_path / "r1.png")
    replies = iter(["[Instruction]: The cat sits beside the dog in a garden.",
                    "[Instruction]: The fluffy cat sits beside the dog.",
                    "[Instruction]: The cat sits alone.",
                    "no tag here"])

    def reply(request):
        parts = request["messages"][0]["content"]
        assert [p["type"] for p in parts] == ["image_url"] * 3 + ["text"]
        assert parts[0]["image_url"]["url"].startswith("data:image/png;base64,")
        return next(replies)

    base = {"task": "Background", "phrases": ["cat", "dog"], "target": "t.png", "references": ["r0.png", "r1.png"],
            "boxes": [[0, 0, 2, 2], [5, 5, 8, 8]], "status": "kept"}
    with mf.ManifestWriter(tmp_path / "reedit.jsonl") as w:
        for i in range(4):
            w.write({**base, "id": f"s{i}"})
    with FakeChatServer(reply) as server:
        cfg = cfg_with(instructions={"vlm": {"url": server.url, "max_concurrency": 1}})
        stats = run_named_stage("instructions", cfg, tmp_path)
    assert stats.kept == 1
    assert stats.rejected_by_reason == {"appearance_in_instruction": 1, "vlm_missing_subject": 1, "vlm_unparsable": 1}
    assert mf.read_kept(tmp_path, "instructions")[0]["instruction"] == "The cat sits beside the dog in a garden."


# ---------------------------------------------------------------- filter and export
@pytest.mark.unit
def test_near_duplicates_greedy_in_order():
    e = np.array([[1, 0], [0.999, 0.01], [0, 1], [0.01, 1], [1, 0.0001]])
    assert near_duplicates(e, 0.99) == [None, 0, None, 2, 0]
    assert near_duplicates(e, 1.0) == [None] * 5


@pytest.mark.unit
def test_export_writes_records_and_psrbench(tmp_path):
    entries = []
    for i in range(20):
        n = 2 + i % 3
        task = {3: "Three", 4: "Four"}.get(n, "Position")
        refs = []
        for k in range(n):
            Image.new("RGB", (8, 8)).save(tmp_path / f"r{i}_{k}.png")
            refs.append(f"r{i}_{k}.png")
        Image.new("RGB", (8, 8)).save(tmp_path / f"t{i}.png")
        entries.append({"id": f"{i:03d}", "task": task, "phrases": [f"thing{k}" for k in range(n)],
                        "categories": [f"Thing{k}" for k in range(n)],
                        "instruction": f"instruction {i}: the thing0 is to the left of the thing1.",
                        "references": refs, "target": f"t{i}.png", "status": "kept"})
    write_jsonl_atomic(tmp_path / "filter.jsonl", entries)
    cfg = cfg_with(export={"heldout_fraction": 0.4})
    stats = run_export(tmp_path, cfg)
    train, held = read_records(tmp_path / "train.jsonl"), read_records(tmp_path / "eval.jsonl")
    assert len(train) + len(held) == 20 and stats.extra["eval"] == len(held) > 0
    for r in train + held:
        assert resolve_under(tmp_path, r.target).is_file()
        assert all(resolve_under(tmp_path, s.image).is_file() for s in r.subjects)
        assert r.tags["task"] in TASKS and r.prompt.startswith("instruction")
    bench = tmp_path / "psrbench"
    n_items = 0
    for task, count in stats.extra["psrbench_items"].items():
        items = json.loads((bench / f"{task}.json").read_text())
        assert len(items) == count
        for item in items:
            n = len(item["input_path"])
            assert [item[f"category{k + 1}"] for k in range(n)] == [f"thing{k}" for k in range(n)]
            assert all((bench / p).is_file() for p in item["input_path"])
        n_items += count
    assert n_items == len(held)
    assert run_export(tmp_path, cfg).extra == stats.extra  # idempotent
    try:
        from psrl.bench.loading import load_benchmark
    except ImportError:
        return
    loaded = load_benchmark("psrbench", bench)
    assert not getattr(loaded, "issues", [])


# ---------------------------------------------------------------- config
@pytest.mark.unit
def test_config_overrides_and_unknown_keys(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("render:\n  num_steps: 4\n  model: {name: flux, path: tiny}\nground:\n  max_pair_iou: 0.3\n")
    cfg = load_config(DataPipelineConfig, f, ["render.height=256", "filter.min_consistency=0.7"])
    assert (cfg.render.num_steps, cfg.render.height, cfg.ground.max_pair_iou) == (4, 256, 0.3)
    assert cfg.filter.min_consistency == 0.7 and cfg.references.model.name == "flux_kontext"
    with pytest.raises(ConfigError, match="render.steps"):
        load_config(DataPipelineConfig, f, ["render.steps=3"])
    with pytest.raises(ConfigError, match="counts"):
        load_config(DataPipelineConfig, default={"subjects": {"counts": [2, 5], "count_weights": [1, 1]}})


# ---------------------------------------------------------------- CLI
@pytest.mark.e2e
def test_cli_vocab_stats_and_redo(tmp_path, capsys):
    from psrl.cli.main import main

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("cat\ndog\nteapot\nrobot\nkite\n")
    d = tmp_path / "ds"
    assert main(["data", "subjects", "--dir", str(d), "--vocab", str(vocab), "--num-samples", "5",
                 "--no-progress"]) == 0
    assert main(["data", "prompts", "--dir", str(d), "--no-progress"]) == 0  # reuses <dir>/config.yaml
    out = capsys.readouterr().out
    assert "subjects: 5 in, 5 kept, 0 rejected, 5 new, vocabulary=5" in out and "prompts: 5 in, 5 kept" in out
    assert all(set(e["phrases"]) <= {"cat", "dog", "teapot", "robot", "kite"} for e in mf.read_kept(d, "prompts"))
    assert main(["data", "stats", "--dir", str(d)]) == 0
    assert "prompts: 5 in, 5 kept, 0 rejected, 5 new" in capsys.readouterr().out
    assert main(["data", "subjects", "--dir", str(d), "--redo", "--seed", "3", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "removed 2 manifest(s): subjects.jsonl, prompts.jsonl" in out and "5 new" in out
    assert not (d / "prompts.jsonl").exists() and "prompts" not in json.loads((d / "stats.json").read_text())
    assert main(["data", "render", "--dir", str(d)]) == 2  # its input stage is gone: a clear error
    assert "psrl data prompts" in capsys.readouterr().err


@pytest.mark.unit
def test_filter_stage_reasons_and_near_duplicates(tmp_path):
    """The filter's decisions with injected scores and embeddings (the reward itself is tested in the rewards)."""
    import torch

    from psrl.datagen.filter import FilterScoresStage, dedup_pass

    Image.new("RGB", (8, 8)).save(tmp_path / "t.png")
    scores = {  # id -> (reward result, embedding)
        "a": ({"score": 0.9, "failure": None, "per_subject": [0.9, 0.9], "missing": []}, [1.0, 0.0]),
        "b": ({"score": float("nan"), "failure": "reference image not found", "per_subject": None, "missing": []},
              [0.0, 1.0]),
        "c": ({"score": 0.4, "failure": None, "per_subject": [0.8, 0.0], "missing": ["dog"]}, [0.0, 1.0]),
        "d": ({"score": 0.3, "failure": None, "per_subject": [0.3, 0.3], "missing": []}, [0.0, 1.0]),
        "e": ({"score": 0.7, "failure": None, "per_subject": [0.95, 0.45], "missing": []}, [0.0, 1.0]),
        "f": ({"score": 0.8, "failure": None, "per_subject": [0.8, 0.8], "missing": []}, [0.999, 0.001]),
        "g": ({"score": 0.8, "failure": None, "per_subject": [0.8, 0.8], "missing": []}, [0.6, 0.8]),
    }
    with mf.ManifestWriter(tmp_path / "instructions.jsonl") as w:
        for sid in scores:
            w.write({"id": sid, "status": "kept", "target": "t.png", "instruction": "x", "phrases": ["cat", "dog"],
                     "references": ["r0.png", "r1.png"]})
    cfg = cfg_with(filter={"min_consistency": 0.5, "min_subject_consistency": 0.5, "max_duplicate_cosine": 0.99,
                           "batch_size": 3})
    calls = []

    def score(images, records):
        calls.append([r.id for r in records])
        assert [s.image for s in records[0].subjects] == ["r0.png", "r1.png"]
        return [scores[r.id][0] for r in records]

    order = iter(scores)
    def embed(images):
        return torch.tensor([scores[next(order)][1] for _ in images])

    stage = FilterScoresStage(cfg, tmp_path, score=score, embed=embed)
    run_stage(stage, tmp_path)
    entries = {e["id"]: e for e in dedup_pass(tmp_path, cfg)}
    assert {k: e.get("reason") for k, e in entries.items()} == {
        "a": None, "b": "consistency_unscorable", "c": "subject_missing_in_target", "d": "low_consistency",
        "e": "weak_subject", "f": "near_duplicate", "g": None}
    assert entries["f"]["detail"] == "of a" and entries["a"]["consistency_per_subject"] == [0.9, 0.9]
    assert calls == [["a", "b", "c"], ["d", "e", "f"], ["g"]]


@pytest.mark.unit
def test_a_stage_that_keeps_nothing_lets_the_next_run(tmp_path):
    class RejectAll(CountingStage):
        name = "prompts"

        def process(self, batch):
            return [rejected(e, "nope") for e in batch]

    assert run_stage(RejectAll(3), tmp_path).kept == 0
    stats = run_named_stage("render", cfg_with(), tmp_path)  # nothing to render: no model is loaded
    assert (stats.inputs, stats.kept) == (0, 0) and (tmp_path / "render.jsonl").is_file()
    write_jsonl_atomic(tmp_path / "filter.jsonl", [])
    stats = run_export(tmp_path, cfg_with())
    assert stats.kept == 0 and (tmp_path / "train.jsonl").read_text() == ""
