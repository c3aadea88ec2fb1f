"""CLI: psrl reward score on tiny models writes per-sample JSONL and a summary; bad inputs are counted or named."""
import json

import pytest
import torch
from PIL import Image

from psrl.cli.main import main
from psrl.data.records import Record, SubjectRef, write_records


@pytest.fixture
def workdir(tmp_path):
    g = torch.Generator().manual_seed(0)
    refs = tmp_path / "refs"
    refs.mkdir()
    Image.fromarray((torch.rand(40, 40, 3, generator=g) * 255).byte().numpy()).save(refs / "cat.png")
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        Image.fromarray((torch.rand(32, 32, 3, generator=g) * 255).byte().numpy()).save(images / f"s{i}.png")
    Image.fromarray((torch.rand(48, 32, 3, generator=g) * 255).byte().numpy()).save(images / "s3.jpg")
    (images / "s4.png").write_bytes(b"garbage")
    recs = [Record(id=f"s{i}", prompt="a cat above a dog", subjects=(SubjectRef("refs/cat.png", "cat"),))
            for i in range(6)]
    write_records(recs, tmp_path / "records.jsonl")
    return tmp_path


@pytest.mark.e2e
def test_reward_score_writes_jsonl_and_summary(workdir, capsys):
    out = workdir / "out.jsonl"
    rc = main(["reward", "score", "--reward", "subject_consistency", "--args",
               json.dumps({"path": "tiny", "detector": {"kind": "grounding_dino", "box_threshold": 0.0}}),
               "--records", str(workdir / "records.jsonl"), "--images", str(workdir / "images"),
               "--out", str(out), "--batch-size", "2"])
    assert rc == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"s{i}" for i in range(6)]
    assert all(isinstance(r["score"], float) for r in rows[:4])      # s3 is a differently sized jpg
    assert isinstance(rows[0]["details"]["per_subject"], list) and "weakest_subject" in rows[0]["details"]
    assert rows[4]["score"] is None and "unreadable" in rows[4]["failure"]
    assert rows[5]["score"] is None and "not found" in rows[5]["failure"]
    text = capsys.readouterr().out
    assert "subject_consistency: 4/6 scored, 2 failed" in text and "wrote" in text


@pytest.mark.e2e
def test_reward_score_resolves_references_under_data_root_once(workdir, capsys):
    """References resolve under --data-root (default: the records file's folder) when the records are read; a path
    that escapes the root stops the command before any model loads."""
    base = ["reward", "score", "--reward", "dino", "--args", '{"path": "tiny"}', "--images", str(workdir / "images"),
            "--records", str(workdir / "records.jsonl")]
    assert main(base + ["--out", str(workdir / "a.jsonl")]) == 0  # refs/cat.png under the records' folder
    assert "dino: 4/6 scored" in capsys.readouterr().out
    assert main(base + ["--data-root", str(workdir / "refs"), "--out", str(workdir / "b.jsonl")]) == 1
    rows = [json.loads(x) for x in (workdir / "b.jsonl").read_text().splitlines()]
    assert "refs/refs/cat.png: file not found" in rows[0]["failure"]  # looked up under the given root
    write_records([Record(id="e", prompt="p", subjects=(SubjectRef("../cat.png", "cat"),))], workdir / "esc.jsonl")
    assert main(base[:-1] + [str(workdir / "esc.jsonl")]) == 2
    assert "'e': subjects[0].image '../cat.png' escapes the data root" in capsys.readouterr().err


@pytest.mark.e2e
def test_reward_score_bad_arguments(workdir, capsys):
    base = ["reward", "score", "--records", str(workdir / "records.jsonl"), "--images", str(workdir / "images")]
    assert main(base + ["--reward", "mean_color", "--args", "{not json"]) == 2
    assert "--args is not valid JSON" in capsys.readouterr().err
    assert main(base + ["--reward", "no_such_reward"]) == 2
    assert "unknown reward 'no_such_reward'" in capsys.readouterr().err
    assert main(base + ["--reward", "subject_consistency", "--args", '{"path": "tiny", "mode": "fast"}']) == 2
    assert "mode must be one of" in capsys.readouterr().err
    assert main(base + ["--reward", "dino", "--args", json.dumps({"path": "tiny", "data_root": "refs"})]) == 2
    assert "--args.data_root: not read here" in capsys.readouterr().err  # the root is --data-root now
    assert main(["reward", "score", "--reward", "mean_color", "--records", str(workdir / "nope.jsonl"),
                 "--images", str(workdir / "images")]) == 2
    assert "records file not found" in capsys.readouterr().err
    assert main(["reward", "list"]) == 0
    names = capsys.readouterr().out.split()
    for name in ("subject_consistency", "position", "vlm_consistency", "semantic_alignment", "edit_consistency",
                 "hpsv3", "pickscore", "clip_t", "aesthetic", "clip_i", "dino", "remote"):
        assert name in names


@pytest.mark.unit
def test_generated_image_names_are_shared_with_generate_and_stay_inside(tmp_path):
    from psrl.cli.reward import _load_image
    from psrl.data.records import RecordError, image_filename, image_filenames

    assert image_filename("sea/1") == "sea_1.png" and image_filename("..") == "__.png"
    assert image_filename("a b:c", ".jpg") == "a_b_c.jpg"
    with pytest.raises(RecordError, match="'a/b' and 'a:b'.*a_b.png"):
        image_filenames([Record(id="a/b", prompt="x"), Record(id="a:b", prompt="y")])
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (8, 8)).save(images / "sea_1.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "secret.png")
    assert _load_image(images, "sea/1")[0] is not None
    img, why = _load_image(images, "../secret")
    assert img is None and "not found" in why and str(images) in why


@pytest.mark.e2e
def test_generate_reads_kontext_references_from_the_data_root(tmp_path, monkeypatch):
    """psrl generate with a reference-conditioned policy resolves subject images like the trainer does."""
    from pathlib import Path

    configs = Path(__file__).resolve().parents[1] / "configs" / "tiny"
    monkeypatch.chdir(tmp_path)  # references must not be looked up in the working directory
    assert main(["generate", "--config", str(configs / "psr_kontext.yaml"), "--records",
                 str(configs / "data" / "psr" / "eval.jsonl"), "--out", "imgs", "--steps", "2"]) == 0
    assert (tmp_path / "imgs" / "tiny-eval-1.png").is_file()


@pytest.mark.unit
def test_reward_score_exit_codes_max_failure_rate_and_whole_reasons(workdir, capsys):
    """2 of 6 samples have no usable image: fine by default, an error over --max-failure-rate; a reward that fails
    every sample exits 1 with its reason printed whole (colons included)."""
    base = ["reward", "score", "--records", str(workdir / "records.jsonl"), "--images", str(workdir / "images")]
    assert main(base + ["--reward", "mean_color"]) == 0
    out = capsys.readouterr().out
    assert f"1 x generated image {workdir / 'images' / 's4.png'}: unreadable image" in out
    assert f"1 x generated image not found: {workdir / 'images' / 's5.png'}" in out
    assert main(base + ["--reward", "mean_color", "--max-failure-rate", "0.2"]) == 1
    assert "error: mean_color: 2/6 samples failed (more than --max-failure-rate 0.2)" in capsys.readouterr().err
    assert main(base + ["--reward", "mean_color", "--max-failure-rate", "0.5"]) == 0
    capsys.readouterr()
    assert main(base + ["--reward", "fixtures_bench:WordyJudge"]) == 1
    captured = capsys.readouterr()
    whole = "judge reply has no parsable '[Score]': I would rate it 8/10: the dog is clear"
    assert f"  4 x {whole}" in captured.out
    assert "error: fixtures_bench:WordyJudge: 6/6 samples failed (every sample): 4 x " + whole in captured.err
    rows = [json.loads(x) for x in (workdir / "images" / "scores_fixtures_bench_WordyJudge.jsonl").read_text()
            .splitlines()]
    assert len(rows) == 6 and all(r["score"] is None for r in rows) and rows[0]["failure"] == whole
