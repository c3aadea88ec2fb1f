"""Training data of the reward model: grid parsing and cutting, the answer rule, pairs / labels / ShareGPT readers
with their named problems, the held-out split, and ``psrl reward-model pairs`` end to end against a fake
OpenAI-compatible teacher (resume, sharding, bad inputs counted, human labels, ShareGPT import)."""
import base64
import csv
import io
import json

import numpy as np
import pytest
from PIL import Image

V1 = "Given two subfigures generated based on the theme"


# ---------------------------------------------------------------------------------------------- grids
@pytest.mark.unit
def test_grid_spec_and_cell_pairs():
    from psrl.reward_model.grids import GridError, cell_pairs, parse_grid_spec

    # grid sizes and cells: psrl.data.grid_prompt, tested in test_t2is_prompts
    assert parse_grid_spec(" 2x2 ") == (2, 2)
    for bad in ("2", "1x1", "ax2"):
        with pytest.raises(GridError):
            parse_grid_spec(bad)
    assert cell_pairs(4) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]


@pytest.mark.unit
@pytest.mark.parametrize("reply, want", [("**Yes**, both show the cat.", "Yes, both show the cat."),
                                         ("no. The hat differs", "No. The hat differs"),
                                         ('"Yes" - same identity', 'Yes - same identity'), ("Yes", "Yes")])
def test_teacher_replies_are_read_by_their_first_word(reply, want):
    from psrl.reward_model.pairs import answer_of, parse_judge_reply

    got, why = parse_judge_reply(reply)
    assert got == want and why == "" and answer_of(got) in ("Yes", "No")


@pytest.mark.unit
@pytest.mark.parametrize("reply", ["I think yes.", "Yesterday they matched", "", "Maybe"])
def test_teacher_replies_without_a_leading_answer_are_refused(reply):
    from psrl.reward_model.pairs import parse_judge_reply

    got, why = parse_judge_reply(reply)
    assert got is None and why


# ---------------------------------------------------------------------------------------------- readers
def _line(**kw):
    base = {"id": "a", "images": ["x.png", "y.png"], "prompt": "same?", "response": "Yes. Same."}
    base.update(kw)
    return json.dumps(base)


@pytest.mark.unit
def test_pairs_jsonl_problems_name_file_and_line(tmp_path):
    from psrl.reward_model.pairs import read_pairs

    f = tmp_path / "p.jsonl"
    f.write_text("\n".join([_line(), "{not json", _line(id="b", label="Maybe"), _line(id="c", response="Sure"),
                            _line(id="d", images=["x.png"]), _line(), _line(id="e", label="no", response="No.")])
                 + "\n")
    examples, problems = read_pairs(f)
    assert [e.id for e in examples] == ["a", "e"] and [e.label for e in examples] == ["Yes", "No"]
    assert examples[0].where == f"{f}:1"
    expect = [(2, "not valid JSON"), (3, "'Maybe' is neither Yes nor No"), (4, "must start with Yes or No"),
              (5, "list of 2 image paths"), (6, "duplicate id 'a'")]
    assert len(problems) == len(expect)
    for p, (line, why) in zip(problems, expect):
        assert p.startswith(f"{f}:{line}: ") and why in p


@pytest.mark.unit
def test_human_labels_csv_and_jsonl(tmp_path):
    from psrl.reward_model.pairs import read_labels

    f = tmp_path / "labels.csv"
    f.write_text("id,label,reason\ng:0-1,yes,same cat\ng:0-2, No ,\ng:1-2,maybe,\ng:0-1,No,again\n")
    labels, problems = read_labels(f)
    assert labels == {"g:0-1": ("Yes", "same cat", f"{f}:2"), "g:0-2": ("No", "", f"{f}:3")}
    assert problems[0] == f"{f}:4: label 'maybe' of pair 'g:1-2' is neither Yes nor No"
    assert problems[1].startswith(f"{f}:5: pair 'g:0-1' is labelled again")
    j = tmp_path / "labels.jsonl"
    j.write_text(json.dumps({"id": "g:0-1", "label": "YES"}) + "\n")
    assert read_labels(j)[0] == {"g:0-1": ("Yes", "", f"{j}:1")}


@pytest.mark.unit
def test_sharegpt_import_reads_both_tag_styles_and_names_bad_items(tmp_path):
    from psrl.reward_model.sharegpt import read_sharegpt, write_sharegpt

    good = {"messages": [{"role": "user", "content": "<image><image>Do the two images match?"},
                         {"role": "assistant", "content": "Yes. They match."}], "images": ["a.png", "b.png"]}
    gpt = {"conversations": [{"from": "human", "value": "<image>Same cat?<image>"},
                             {"from": "gpt", "value": "No. Different cats."}], "images": ["a.png", "c.png"]}
    items = [good, gpt,
             {**good, "images": ["a.png", "b.png", "c.png"]},
             {**good, "system": "You judge images."},
             {"messages": good["messages"] * 2, "images": ["a.png", "b.png"]},
             {**good, "messages": [good["messages"][0], {"role": "assistant", "content": "They match."}]},
             {**good, "images": ["/etc/a.png", "b.png"]}]
    f = tmp_path / "paco.json"
    f.write_text(json.dumps(items))
    examples, problems = read_sharegpt(f)
    assert [(e.id, e.label, e.prompt) for e in examples] == [("paco-0", "Yes", "Do the two images match?"),
                                                              ("paco-1", "No", "Same cat?")]
    reasons = ["2 <image> placeholders and 2 images", "system prompt", "one 'user' turn then one 'assistant'",
               "must start with Yes or No", "relative to the JSON file's folder"]
    assert len(problems) == 5
    for i, (p, why) in enumerate(zip(problems, reasons), start=2):
        assert p.startswith(f"{f}: item {i}: ") and why in p
    write_sharegpt(examples, tmp_path / "out.json")   # LLaMA-Factory's format back, and read again
    again, none = read_sharegpt(tmp_path / "out.json")
    assert none == [] and [(e.id, e.images, e.prompt, e.response) for e in again] == \
        [(e.id, e.images, e.prompt, e.response) for e in examples]


@pytest.mark.unit
def test_heldout_split_keeps_groups_together():
    from psrl.reward_model.pairs import PairExample, split_heldout

    ex = [PairExample(f"g{g}:{k}", ("a", "b"), "p", "Yes", group=f"g{g}") for g in range(10) for k in range(3)]
    train, held = split_heldout(ex, 0.2, seed=1)
    assert len(held) == 6 and {e.group for e in train}.isdisjoint({e.group for e in held})
    assert split_heldout(list(reversed(ex)), 0.2, seed=1)[1] == [e for e in reversed(ex) if e.group in
                                                                 {h.group for h in held}]
    assert len(split_heldout(ex[:6], 0.01)[1]) == 3   # at least one group when asked for any
    assert split_heldout(ex, 0.0)[1] == []


# ---------------------------------------------------------------------------------------------- the pairs command
RED, BLUE, GREEN = (220, 30, 30), (30, 40, 220), (30, 200, 40)


def _grid(colors, rows, cols, cell=20):
    img = Image.new("RGB", (cols * cell, rows * cell))
    for k, c in enumerate(colors):
        r, q = divmod(k, cols)
        img.paste(Image.new("RGB", (cell, cell), c), (q * cell, r * cell))
    return img


def teacher_reply(body):
    """An OpenAI-compatible teacher that looks at the two images: 'Yes' when their mean colours agree. A theme
    containing 'mute' gets a reply that does not start with Yes or No."""
    content = body["messages"][0]["content"]
    means = [np.asarray(Image.open(io.BytesIO(base64.b64decode(c["image_url"]["url"].split(",")[1]))))
             .reshape(-1, 3).mean(0) for c in content if c["type"] == "image_url"]
    if "mute" in content[-1]["text"]:
        return "I would rather not say."
    return "Yes. Both panels show the same colour." if np.abs(means[0] - means[1]).max() < 10 else \
        "No. The colours differ."


@pytest.fixture
def teacher():
    from fake_chat import FakeChatServer

    with FakeChatServer(teacher_reply) as t:
        yield t


def _grids(root):
    """Two good grids, one muted (its replies are unparsable) and five bad lines."""
    _grid([RED, RED, BLUE, RED], 2, 2).save(root / "g1.png")
    _grid([GREEN, GREEN, BLUE], 1, 3).save(root / "g2.png")
    _grid([RED, BLUE], 1, 2).save(root / "g3.png")
    Image.new("RGB", (41, 40)).save(root / "odd.png")
    (root / "broken.png").write_bytes((root / "g1.png").read_bytes()[:60])
    lines = [{"id": "g1", "image": "g1.png", "prompt": "FOUR-PANEL Images with a 2x2 grid layout of a dog",
              "theme": "a dog in four seasons"},
             {"id": "g2", "image": "g2.png", "prompt": "THREE-PANEL Images with a 1x3 grid layout of a mug"},
             {"id": "g3", "image": "g3.png", "prompt": "a mute pair", "grid": "1x2"},
             {"id": "odd", "image": "odd.png", "prompt": "a 2x2 grid of cats"},
             {"id": "gone", "image": "missing.png", "prompt": "a 2x2 grid"},
             {"id": "broken", "image": "broken.png", "prompt": "a 2x2 grid"},
             {"id": "nogrid", "image": "g1.png", "prompt": "a cat"}]
    text = "\n".join(json.dumps(x) for x in lines[:3]) + "\n{bad json\n" + \
        "\n".join(json.dumps(x) for x in lines[3:]) + "\n"
    (root / "grids.jsonl").write_text(text)
    return root / "grids.jsonl"


@pytest.mark.e2e
def test_pairs_command_with_a_teacher_resumes_and_counts_bad_inputs(tmp_path, teacher, capsys):
    from psrl.cli.main import main
    from psrl.reward_model.pairs import read_pairs

    grids = _grids(tmp_path)
    out = tmp_path / "ds"
    args = ["reward-model", "pairs", "--dir", str(out), "--grids", str(grids), "--teacher-url", teacher.url,
            "--teacher-model", "teacher-72b", "--heldout", "0.5", "--no-progress"]
    assert main(args) == 0
    text = capsys.readouterr().out
    stats = json.loads((out / "stats.json").read_text())
    assert stats["pair_cells"]["kept"] == 3 and stats["pair_cells"]["extra"] == {"cells": 9}
    assert stats["pair_cells"]["rejected_by_reason"] == {"bad_line": 1, "grid_does_not_divide": 1,
                                                         "image_unreadable": 2, "no_grid_size": 1}
    assert f"{grids}:5: a 41x40 image does not divide into a 2x2 grid" in text   # named: file, line, reason
    assert f"{grids}:4: not valid JSON" in text
    labels = stats["pair_labels"]
    assert labels["kept"] == 9 and labels["rejected_by_reason"] == {"unparsable_reply": 1}  # 6 + 3 pairs, 1 muted
    assert labels["extra"] == {"yes": 4, "no": 5}     # g1: 3 red cells -> 3 Yes pairs; g2: green-green
    sent = teacher.bodies[0]
    assert sent["model"] == "teacher-72b" and V1 in sent["messages"][0]["content"][-1]["text"]
    assert 'theme: "a dog in four seasons"' in teacher.bodies[0]["messages"][0]["content"][-1]["text"]
    pairs, problems = read_pairs(out / "pairs.jsonl")
    assert problems == [] and len(pairs) == 9
    by_id = {p.id: p for p in pairs}
    assert by_id["g1:0-1"].label == "Yes" and by_id["g1:0-2"].label == "No" and by_id["g2:0-1"].label == "Yes"
    assert by_id["g1:0-3"].images == ("cells/g1/0.png", "cells/g1/3.png")
    assert Image.open(out / "cells/g1/2.png").getpixel((3, 3)) == BLUE
    train, held = read_pairs(out / "train.jsonl")[0], read_pairs(out / "heldout.jsonl")[0]
    assert len(train) + len(held) == 9 and {p.group for p in train}.isdisjoint({p.group for p in held})
    rows = list(csv.DictReader((out / "to_label.csv").open()))
    assert [r["id"] for r in rows] == ["g3:0-1"]      # the unparsable one waits for a human
    n = teacher.requests
    assert main(args) == 0                            # a rerun finds everything done: no request, same files
    assert teacher.requests == n and json.loads((out / "stats.json").read_text())["pair_labels"]["new"] == 0
    capsys.readouterr()
    assert main([*args[:4], "--grids", str(grids), "--template", "v3"]) == 2   # a changed setting needs --redo
    assert "template changed" in capsys.readouterr().err


@pytest.mark.e2e
def test_pairs_command_with_human_labels(tmp_path, capsys):
    from psrl.cli.main import main
    from psrl.reward_model.pairs import read_pairs

    grids = _grids(tmp_path)
    out = tmp_path / "ds"
    assert main(["reward-model", "pairs", "--dir", str(out), "--grids", str(grids), "--no-progress"]) == 0
    rows = list(csv.DictReader((out / "to_label.csv").open()))
    assert len(rows) == 10 and read_pairs(out / "train.jsonl")[0] == []
    for r in rows:
        r["label"] = {"g1:0-1": "yes", "g1:0-2": "maybe"}.get(r["id"], "No")
        r["reason"] = "same dog" if r["id"] == "g1:0-1" else ""
    labels = tmp_path / "labels.csv"
    with labels.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    capsys.readouterr()
    assert main(["reward-model", "pairs", "--dir", str(out), "--labels", str(labels), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert f"{labels}:3: label 'maybe' of pair 'g1:0-2' is neither Yes nor No" in text
    pairs = {p.id: p for p in read_pairs(out / "pairs.jsonl")[0]}
    assert len(pairs) == 9 and pairs["g1:0-1"].response == "Yes. same dog" and pairs["g1:0-3"].response == "No"
    assert [r["id"] for r in csv.DictReader((out / "to_label.csv").open())] == ["g1:0-2"]


@pytest.mark.e2e
def test_a_local_teacher_whose_replies_are_never_yes_or_no_labels_nothing(tmp_path, capsys):
    """The local transport (transformers) as teacher: psrl's random tiny judge never starts a reply with Yes or
    No, so every pair is rejected with its raw reply kept, and the command exits 1 (nothing usable came out)."""
    from psrl.cli.main import main
    from psrl.datagen.manifest import read_manifest

    _grid([RED, BLUE], 1, 2).save(tmp_path / "g.png")
    (tmp_path / "grids.jsonl").write_text(json.dumps({"id": "g", "image": "g.png", "prompt": "a 1x2 grid"}) + "\n")
    out = tmp_path / "ds"
    assert main(["reward-model", "pairs", "--dir", str(out), "--grids", str(tmp_path / "grids.jsonl"),
                 "--no-progress", "--set", "teacher.transport=local", "--set", "teacher.path=tiny",
                 "--set", "teacher.max_new_tokens=3"]) == 1
    entry = read_manifest(out, "pair_labels")[0]
    assert entry["status"] == "rejected" and entry["reason"] == "unparsable_reply" and isinstance(entry["raw"], str)
    assert "pair_labels: 1 in, 0 kept, 1 rejected (unparsable_reply 1)" in capsys.readouterr().out


@pytest.mark.component
def test_cells_stage_sharded_over_two_ranks_equals_one_process(tmp_path, monkeypatch):
    from psrl.datagen.manifest import read_manifest
    from psrl.datagen.runner import run_stage
    from psrl.sharding import Shard

    # the two ranks run one after the other in this process: nothing to wait for (a real launch has a process group)
    monkeypatch.setattr(Shard, "barrier", lambda self: None)
    from psrl.reward_model.pair_stages import CELLS_STAGE, CellsStage, PairsConfig

    cfg = PairsConfig(grids=str(_grids(tmp_path)))
    one, two = tmp_path / "one", tmp_path / "two"
    run_stage(CellsStage(cfg, one), one)
    assert run_stage(CellsStage(cfg, two), two, Shard(rank=1, world=2)) is None   # rank 1 writes its part
    assert (two / "pair_cells.part-1.jsonl").is_file()
    stats = run_stage(CellsStage(cfg, two), two, Shard(rank=0, world=2))          # rank 0 does its share, merges
    assert stats.kept == 3 and not list(two.glob("*.part-*"))
    assert read_manifest(one, CELLS_STAGE) == read_manifest(two, CELLS_STAGE)


@pytest.mark.e2e
def test_sharegpt_import_command(tmp_path, capsys):
    from psrl.cli.main import main
    from psrl.reward_model.pairs import read_pairs

    data = tmp_path / "PaCo-Dataset"
    (data / "images").mkdir(parents=True)
    items = []
    for i in range(6):
        for k in "ab":
            Image.new("RGB", (16, 16), RED).save(data / "images" / f"{i}{k}.png")
        items.append({"messages": [{"role": "user", "content": "<image><image>Consistent?"},
                                   {"role": "assistant", "content": "Yes. Same." if i % 2 else "No. Not."}],
                      "images": [f"images/{i}a.png", f"images/{i}b.png"]})
    items.append({"messages": items[0]["messages"], "images": ["images/0a.png"]})
    (data / "train.json").write_text(json.dumps(items))
    assert main(["reward-model", "pairs", "--dir", str(data), "--sharegpt", str(data / "train.json"),
                 "--heldout", "0.34"]) == 0
    out = capsys.readouterr().out
    assert "imported 6 pair(s) (3 Yes, 3 No), skipped 1" in out and "item 6" in out
    train, held = read_pairs(data / "train.jsonl")[0], read_pairs(data / "heldout.jsonl")[0]
    assert (len(train), len(held)) == (4, 2) and train[0].images[0].startswith("images/")
    # images outside --dir would escape the pairs file's root: refused, naming the item
    assert main(["reward-model", "pairs", "--dir", str(tmp_path / "elsewhere"), "--sharegpt",
                 str(data / "train.json")]) == 2
    assert "is outside" in capsys.readouterr().err


@pytest.mark.e2e
def test_from_grids_to_a_trained_and_evaluated_reward_model(tmp_path, teacher, capsys):
    """The whole path through the CLI: grids -> teacher-labelled pairs -> LoRA training -> ranking evaluation."""
    from pathlib import Path

    from psrl.cli.main import main

    out = tmp_path / "ds"
    assert main(["reward-model", "pairs", "--dir", str(out), "--grids", str(_grids(tmp_path)), "--teacher-url",
                 teacher.url, "--heldout", "0.34", "--no-progress"]) == 0
    config = Path(__file__).resolve().parents[1] / "configs" / "tiny" / "paco_reward.yaml"
    assert main(["reward-model", "train", "--config", str(config), "--set", f"data.train={out / 'train.jsonl'}",
                 "--set", f"data.eval={out / 'heldout.jsonl'}", "--set", "train.max_steps=2",
                 "--set", "train.save_merged=false", "--set", f"run.output_dir={tmp_path / 'runs'}"]) == 0
    adapter = tmp_path / "runs" / "tiny_paco_reward" / "adapter"
    bench = out / "rank.jsonl"
    bench.write_text(json.dumps({"id": "g1", "reference": "cells/g1/0.png", "prompt": "a dog",
                                 "candidates": ["cells/g1/1.png", "cells/g1/2.png", "cells/g1/3.png"],
                                 "human_rank": [0, 2, 1]}) + "\n")
    capsys.readouterr()
    assert main(["reward-model", "eval", "--bench", str(bench), "--reward", "vlm_consistency", "--args",
                 json.dumps({"path": "tiny", "adapter_path": str(adapter)}), "--out", str(tmp_path / "ev")]) == 0
    assert "1/1 items scored" in capsys.readouterr().out
