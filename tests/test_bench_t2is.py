"""T2IS-Bench in ``psrl bench``: the grid / prompt rules, the loader's issues, the metrics on a tiny judge (against
hand-computed means over cell pairs and criteria) and generate / eval / compare from the CLI on tiny FLUX."""
import json
import math

import pytest
import torch
import yaml

from psrl.bench.loading import load_benchmark, load_results
from psrl.data.grid_prompt import cut_grid

CRITERIA = {"Identity": {"Face": "The fox looks the same in every image.", "Coat": "The coat colour is the same."},
            "Style": {"Render": "Every image is rendered alike."},
            "Logic": {"Place": "The scenes fit one forest."}}
PROMPT = ("FOUR-PANEL Images with a 2x2 grid layout of a red fox in a forest.All images keep one style. "
          "[TOP]-[LEFT]:The fox sleeps. [TOP]-[RIGHT]:The fox runs. [BOTTOM]-[LEFT]:The fox eats. "
          "[BOTTOM]-[RIGHT]:The fox looks at the stars.")


def line(idx, case, category="Character Generation", criteria=CRITERIA, layout="2x2", prompt=PROMPT):
    return {"idx": idx, "prompt": prompt, "height": 1024, "width": 1024, "layout": layout, "theme": "A red fox.",
            "category": category, "task_name": "Multi-Scenario", "criteria": criteria, "from": "T2IS",
            "original_idx": case}


def make_t2is(root):
    """Four lines: two characters (one without Logic criteria), one story, one without any grid size."""
    root.mkdir(parents=True, exist_ok=True)
    lines = [line("0001", "0001_0001"),
             line("0002", "0001_0002", criteria={k: v for k, v in CRITERIA.items() if k != "Logic"}),
             line("0003", "0011_0001", category="Story Generation"),
             line("0004", "0011_0002", category="Story Generation", layout=None, prompt="A fox, four panels.")]
    (root / "test_metadata.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    cell = {"Entity": ["a fox"], "Attribute": ["the fox is red", "the fox has a white belly"], "Relation": ["a fox in "
                                                                                                       "a forest"]}
    alignment = {case: {f"{i:04d}": cell for i in range(4)} for case in ("0001_0001", "0001_0002", "0011_0001")}
    (root / "prompt_alignment.json").write_text(json.dumps(alignment))
    return root


@pytest.mark.unit
def test_entry_grid_falls_back_from_layout_to_prompt_and_keeps_the_sub_prompts(tmp_path):
    """The grid rules themselves are tested once, in test_t2is_prompts (psrl.data.grid_prompt)."""
    from psrl.bench.t2is import parse_entry

    entry = line(0, "0001_0001", layout="four panels")
    record, issues = parse_entry("character", 0, entry)
    assert issues == [] and record.tags["grid"] == [2, 2] and record.tags["theme"] == "A red fox."
    assert record.tags["sub_prompts"] == ["The fox sleeps.", "The fox runs.", "The fox eats.",
                                          "The fox looks at the stars."]
    record, issues = parse_entry("character", 0, line(0, "0001_0001", layout="0x2", prompt="a fox"))
    assert record is None and "no grid size" in str(issues[0])


@pytest.mark.unit
def test_loader_subsets_issues_and_records(tmp_path):
    root = make_t2is(tmp_path / "t2is")
    data = load_benchmark("t2is", root)
    assert list(data.raw) == ["character", "story"] and [i.key for i in data.items] == [
        "character/0", "character/1", "story/0", "story/1"]
    bad = [str(i) for i in data.issues]
    assert bad == ["story[1].layout: case 0011_0002: no grid size ('2x2') in layout None nor in the prompt"]
    rec = data.items[0].record
    assert rec.subjects == () and rec.prompt == PROMPT and rec.tags["grid"] == [2, 2]
    assert rec.tags["theme"] == "A red fox." and rec.tags["sub_prompts"][3] == "The fox looks at the stars."
    assert len(rec.tags["alignment"]) == 4 and rec.tags["alignment"][0]["Entity"] == ["a fox"]
    assert data.items[3].record is None
    assert [i.key for i in load_benchmark("t2is", root, ["story"]).items] == ["story/0", "story/1"]
    nope = tmp_path / "nope"
    assert [str(i) for i in load_benchmark("t2is", nope).issues] == [f"*.data_root: not a directory: {nope}"]
    unknown = load_benchmark("t2is", root, ["comics"])
    assert any("unknown subset" in str(i) for i in unknown.issues)
    (root / "prompt_alignment.json").write_text(json.dumps({"0001_0001": {"0000": {}}}))
    partial = load_benchmark("t2is", root)
    assert partial.items[0].record.tags["alignment"] is None
    assert any("no 4 per-image criteria" in str(i) for i in partial.issues)


@pytest.mark.unit
def test_registry_lists_every_benchmark_and_its_functions_import():
    from psrl.bench.benchmarks import BENCHMARKS, get_benchmark
    from psrl.errors import PsrlError
    from psrl.registry import import_object

    assert BENCHMARKS.names() == ["dreambench", "gedit", "gedit-cn", "pocket", "psrbench", "t2is"]
    for name in BENCHMARKS.names():
        spec = get_benchmark(name)
        assert spec.name == name and spec.subsets and spec.dimensions
        for field in ("load", "parse_entry", "context", "metrics", "summary_extras"):
            assert getattr(spec, field) is None or callable(import_object(getattr(spec, field)))
    assert get_benchmark("t2is").overall_rule == "sample_mean" and get_benchmark("gedit").overall_rule == "subset_mean"
    with pytest.raises(PsrlError, match="unknown benchmark 'geneval'; known: dreambench, gedit"):
        get_benchmark("geneval")
    with pytest.raises(PsrlError, match="--psrbench-compat applies to PSRBench only"):
        get_benchmark("t2is").call("metrics", compat=True)
    with pytest.raises(PsrlError, match="--judge-model needs --judge-endpoint"):
        get_benchmark("t2is").call("metrics", judge_model="qwen")


@pytest.mark.unit
def test_overall_rule_pools_samples_or_averages_subsets():
    """T2IS-Eval averages over every case; PSRBench / GEdit average the subset means."""
    from psrl.bench.summary import summarize

    rows = [{"key": f"k{i}", "subset": s, "seed": 0, "scores": {"identity": v}, "failures": {"identity": None}}
            for i, (s, v) in enumerate([("character", 0.2), ("character", 0.4), ("character", 0.6), ("story", 1.0)])]
    pooled = summarize(rows, benchmark="t2is", dimensions=["identity"], subsets=["character", "story"],
                       overall_rule="sample_mean")["overall"]["identity"]
    by_subset = summarize(rows, benchmark="t2is", dimensions=["identity"], subsets=["character", "story"])
    assert pooled["mean"] == pytest.approx(0.55) and pooled["subset_mean"] == pytest.approx(0.7)
    assert pooled["per_seed"]["0"] == pytest.approx(0.55)
    assert by_subset["overall"]["identity"]["mean"] == pytest.approx(0.7)
    assert by_subset["overall_rule"] == "subset_mean"
    with pytest.raises(ValueError, match="overall_rule must be one of"):
        summarize(rows, benchmark="t2is", dimensions=["identity"], subsets=["character"], overall_rule="median")


@pytest.mark.unit
def test_import_image_sets_tiles_t2is_eval_outputs(tmp_path):
    """Per-image files <case>_<NNNN>.png (T2IS-Eval's layout) become one grid per entry, readable by eval."""
    from PIL import Image

    from psrl.bench.t2is import import_image_sets

    root = make_t2is(tmp_path / "t2is")
    images = tmp_path / "images"
    images.mkdir()
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    for k, c in enumerate(colors):  # written out of order: the trailing number decides
        Image.new("RGB", (12, 10) if k else (10, 8), c).save(images / f"0001_0001_{3 - k:04d}.png")
    for k in range(3):  # one image short of its 2x2 grid
        Image.new("RGB", (10, 8), colors[k]).save(images / f"0011_0001_{k:04d}.png")
    out = tmp_path / "out"
    report = import_image_sets(images, load_benchmark("t2is", root), out)
    assert report == {"imported": 1, "incomplete": {"0011_0001": 3}, "missing": ["0001_0002"]}
    grid = Image.open(out / "seed0" / "character" / "0.png")
    assert grid.size == (24, 20)  # the first image's size (12x10, number 0000) per cell
    assert [grid.getpixel(xy) for xy in [(0, 0), (12, 0), (0, 10), (12, 10)]] == colors[::-1]
    manifest = json.loads((out / "bench.json").read_text())
    assert manifest["benchmark"] == "t2is" and manifest["data_root"] == str(root.resolve())
    samples, _ = load_results(out)  # benchmark and root from bench.json
    problems = {s.key: s.problem for s in samples}
    assert problems["seed0/character/0"] is None and problems["seed0/story/0"] == "no result_path in the result file"


@pytest.mark.component
def test_metrics_on_a_tiny_judge_follow_the_published_rules(tmp_path):
    """identity = mean over criteria of the mean P(Yes) over the 6 cell pairs; alignment = mean over cells of the
    mean over questions; each request's P(Yes) is checked against the judge called alone."""
    from psrl.bench.t2is_metrics import CellMean, T2ISAlignment, T2ISConsistency
    from psrl.rewards.vlm.transports import JudgeRequest
    from psrl.rewards.images import to_pil_images

    root = make_t2is(tmp_path / "t2is")
    records = [item.record for item in load_benchmark("t2is", root).items[:2]]
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 32, 32, generator=g)
    identity = T2ISConsistency(dimension="Identity", judge_size=16, path="tiny")
    out = identity(images, records)
    cells = [c.resize((16, 16)) for c in to_pil_images(list(cut_grid(images[0], 2, 2, min_side=1)))[0]]
    expected = []
    for text in CRITERIA["Identity"].values():
        reqs = [JudgeRequest([cells[i], cells[j]], f"Do images meet the following criteria? {text} Please answer "
                                                    f"Yes or No.") for i in range(4) for j in range(i + 1, 4)]
        expected.append(sum(p for p, _, _ in identity.judge.p_yes(reqs)) / 6)
    assert out.scores[0].item() == pytest.approx(sum(expected) / 2, abs=1e-5)
    assert out.details["group_scores"][0] == pytest.approx(expected, abs=1e-5)
    logic = T2ISConsistency(dimension="Logic", judge_size=16, path="tiny")(images, records)
    assert math.isnan(logic.scores[1]) and logic.failures[1] == "case 0001_0002: no Logic criteria"
    assert 0.0 <= logic.scores[0] <= 1.0 and logic.failures[0] is None
    attribute = T2ISAlignment(dimension="Attribute", path="tiny")
    got = attribute(images[:1], records[:1])
    cells = to_pil_images(list(cut_grid(images[0], 2, 2, min_side=1)))[0]
    per_cell = [sum(p for p, _, _ in attribute.judge.p_yes(
        [JudgeRequest([c], f'Does this figure show "{q}"? Please answer yes or no.') for q in
         ("the fox is red", "the fox has a white belly")])) / 2 for c in cells]
    assert got.scores[0].item() == pytest.approx(sum(per_cell) / 4, abs=1e-5)
    from psrl.rewards.simple import MeanColorReward

    aesthetic = CellMean(reward="mean_color")(images, records)
    alone = [MeanColorReward()(c[None], records[:1]).scores.item() for c in cut_grid(images[0], 2, 2, min_side=1)]
    assert aesthetic.scores[0].item() == pytest.approx(sum(alone) / 4, abs=1e-6)
    assert aesthetic.details["cell_scores"][1] is not None


FLUX = {"model": {"name": "flux", "path": "tiny", "max_sequence_length": 16},
        "sampling": {"num_steps": 2, "height": 32, "width": 32}}


@pytest.mark.e2e
def test_generate_eval_compare_from_the_cli(tmp_path, capsys):
    from psrl.cli.main import main

    root = make_t2is(tmp_path / "t2is")
    cfg = tmp_path / "flux.yaml"
    cfg.write_text(yaml.safe_dump(FLUX))
    out = tmp_path / "out"
    assert main(["bench", "validate", "--benchmark", "t2is", "--data-root", str(root)]) == 1
    assert "story[1].layout" in capsys.readouterr().out
    assert main(["bench", "generate", "--benchmark", "t2is", "--config", str(cfg), "--data-root", str(root),
                 "--out", str(out), "--skip-invalid"]) == 0
    assert json.loads((out / "bench.json").read_text())["benchmark"] == "t2is"
    story = json.loads((out / "seed0" / "story.json").read_text())
    assert story[0]["result_path"].endswith("seed0/story/0.png") and "result_path" not in story[1]
    assert main(["bench", "eval", "--results", str(out), "--tiny"]) == 0
    rows = {json.loads(x)["key"]: json.loads(x) for x in (out / "eval" / "samples.jsonl").read_text().splitlines()}
    assert set(rows) == {"seed0/character/0", "seed0/character/1", "seed0/story/0", "seed0/story/1"}
    good = rows["seed0/character/0"]["scores"]
    assert set(good) == {"aesthetic", "pa_entity", "pa_attribute", "pa_relation", "identity", "style", "logic"}
    assert all(v is not None and 0.0 <= v <= 1.0 for k, v in good.items() if k != "aesthetic")
    assert rows["seed0/character/1"]["failures"]["logic"] == "case 0001_0002: no Logic criteria"
    assert "invalid entry" in rows["seed0/story/1"]["failures"]["identity"]
    summary = json.loads((out / "eval" / "summary.json").read_text())
    assert summary["benchmark"] == "t2is" and summary["subsets"] == ["character", "story"]
    assert summary["data_root"] == str(root.resolve())  # the root the loader resolved the records under
    scored = [r["scores"]["identity"] for r in rows.values() if r["scores"]["identity"] is not None]
    assert summary["overall_rule"] == "sample_mean" and len(scored) == 3
    assert summary["overall"]["identity"]["mean"] == pytest.approx(sum(scored) / 3)
    # resumable: a second run scores nothing new
    assert main(["bench", "eval", "--results", str(out), "--tiny"]) == 0
    assert "scored 0 sample(s) (4 resumed)" in capsys.readouterr().out
    assert main(["bench", "compare", str(out / "eval"), "--published", "--out", str(tmp_path / "cmp")]) == 0
    table = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    reported = [r for r in table["rows"] if r["kind"] == "reported"]
    assert table["benchmark"] == "t2is" and len(reported) == 6
    paco = next(r for r in reported if "PaCo" in r["label"])
    assert paco["overall"]["identity"] == 0.508 and paco["overall"]["aesthetic"] == 0.555
