"""End to end from the CLI on the fixture: validate, generate (tiny FLUX-Kontext), eval (tiny detector, embedder,
judge, HPSv3), report, compare, and the HTML report in headless Chromium."""
import json

import pytest
import yaml
from chromium import needs_chromium, screenshot
from fixtures_bench import make_psrbench

from psrl.cli.main import main

pytestmark = pytest.mark.e2e

KONTEXT = {
    "model": {"name": "flux_kontext", "path": "tiny", "max_sequence_length": 16,
              "args": {"reference_long_side_single": 32, "reference_long_side_multi": 16}},
    "sampling": {"num_steps": 2, "height": 32, "width": 32},
}
DIMS = ("subject_consistency", "semantic_alignment", "aesthetics")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("cli")
    root = make_psrbench(base / "data", per_subset=1)
    cfg = base / "kontext.yaml"
    cfg.write_text(yaml.safe_dump(KONTEXT))
    out = base / "out"
    assert main(["bench", "generate", "--config", str(cfg), "--data-root", str(root), "--out", str(out),
                 "--skip-invalid", "--batch-size", "4"]) == 0
    assert main(["bench", "eval", "--results", str(out), "--tiny", "--batch-size", "8"]) == 0
    return base, root, out


def test_generate_and_eval_from_the_cli(run, capsys):
    _base, root, out = run
    manifest = json.loads((out / "bench.json").read_text())
    assert manifest["data_root"] == str(root.resolve()) and manifest["model"]["name"] == "flux_kontext"
    assert sorted(manifest["skipped_invalid"]) == ["Action/1", "Attribute/1", "Background/1", "Complex/1",
                                                   "Position/1"]
    position = json.loads((out / "seed0" / "Position.json").read_text())
    assert position[0]["result_path"].endswith("seed0/Position/0.png") and "result_path" not in position[1]
    rows = [json.loads(line) for line in (out / "eval" / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 7 + 5
    good = [r for r in rows if r["index"] == 0]
    for r in good:
        assert set(r["scores"]) == set(DIMS)
        sc = r["scores"]["subject_consistency"]
        assert sc is not None and -1.0 <= sc <= 1.0
        assert len(r["details"]["subject_consistency"]["per_subject"]) == len(r["references"])
        assert r["scores"]["aesthetics"] == pytest.approx(0.1 * r["raw"]["aesthetics"])
    # a random-weight judge writes no score: NaN + reason and the reply kept, never a default of 5
    judged = [r for r in good if r["subset"] != "Position"]
    assert all(r["scores"]["semantic_alignment"] is None for r in judged)
    assert all("[Score]" in r["failures"]["semantic_alignment"] for r in judged)
    assert all(isinstance(r["details"]["semantic_alignment"]["raw_text"], str) for r in judged)
    pos = next(r for r in good if r["subset"] == "Position")
    assert pos["failures"]["semantic_alignment"] is None and 0.0 <= pos["scores"]["semantic_alignment"] <= 1.0
    summary = json.loads((out / "eval" / "summary.json").read_text())
    assert summary["overall"]["semantic_alignment"]["failed"] == 6 + 5
    assert summary["table"]["Position"]["semantic_alignment"]["n"] == 1
    assert summary["config"]["metrics"]["subject_consistency"]["default"]["args"]["mode"] == "honest"
    assert len(summary["config_hash"]) == 16 and "torch" in summary["versions"]
    for name in ("table.md", "table.csv", "radar.png", "report.html"):
        assert (out / "eval" / name).stat().st_size > 0
    assert "| **Overall** |" in (out / "eval" / "table.md").read_text()
    assert (out / "eval" / "radar.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (out / "eval" / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 1 + 7 * 3  # radar + references + results
    assert "src='http" not in html and 'src="http' not in html  # self-contained


def test_compat_mode_report_and_compare(run, capsys):
    base, _root, out = run
    assert main(["bench", "eval", "--results", str(out), "--tiny", "--psrbench-compat", "--subsets", "Position",
                 "Four"]) == 0
    compat = json.loads((out / "eval_compat" / "summary.json").read_text())
    honest = json.loads((out / "eval" / "summary.json").read_text())
    assert compat["config"]["metrics"]["subject_consistency"]["default"]["args"]["mode"] == "psrbench_compat"
    assert compat["config_hash"] != honest["config_hash"] and compat["subsets"] == ["Position", "Four"]
    assert main(["bench", "report", str(out / "eval"), "--title", "rebuilt"]) == 0
    assert "rebuilt" in (out / "eval" / "report.html").read_text()
    capsys.readouterr()
    cmp_dir = base / "cmp"
    assert main(["bench", "compare", str(out / "eval"), str(out / "eval_compat"), "--published",
                 "--out", str(cmp_dir)]) == 0
    text = capsys.readouterr().out
    assert "out/eval | measured" in text and "PSR (SFT+RL) (reported) | reported | 0.673" in text
    result = json.loads((cmp_dir / "compare.json").read_text())
    assert [r["kind"] for r in result["rows"]].count("reported") == 6
    assert (cmp_dir / "compare_radar.png").stat().st_size > 0


@needs_chromium
def test_html_report_renders_in_headless_chromium(run, tmp_path):
    from PIL import ImageStat

    _, _, out = run
    im = screenshot(out / "eval" / "report.html", tmp_path)
    stat = ImageStat.Stat(im)
    colors = im.resize((100, 140)).getcolors(maxcolors=100 * 140)
    # not blank: real variation in pixel values and many distinct colours (tables, radar, thumbnails)
    assert max(stat.stddev) > 10
    assert colors is not None and len(colors) > 50


def test_dreambench_flow(tmp_path, capsys):
    from fixtures_bench import make_dreambench

    root = make_dreambench(tmp_path / "dreambench", subjects=("cat",))
    cfg = tmp_path / "policy.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"name": "fixtures_bench:ColorPolicy"}}))
    out = tmp_path / "out"
    assert main(["bench", "validate", "--benchmark", "dreambench", "--data-root", str(root), "--subsets", "cat"]) == 0
    assert main(["bench", "generate", "--benchmark", "dreambench", "--config", str(cfg), "--data-root", str(root),
                 "--out", str(out), "--subsets", "cat", "--reference-index", "all", "--batch-size", "25"]) == 0
    live = json.loads((out / "seed0" / "live.json").read_text())
    assert len(live) == 25 and live[10]["instruction"] == "a cat wearing a red hat"
    assert live[0]["input_path"] == ["cat/00.jpg", "cat/01.jpg"] and live[0]["category2"] == "cat"
    assert main(["bench", "eval", "--results", str(out), "--tiny", "--batch-size", "25"]) == 0
    summary = json.loads((out / "eval" / "summary.json").read_text())
    assert summary["benchmark"] == "dreambench" and summary["dimensions"] == ["dino", "clip_i", "clip_t"]
    assert summary["subsets"] == ["live"] and summary["table"]["live"]["dino"]["n"] == 25
    rows = [json.loads(x) for x in (out / "eval" / "samples.jsonl").read_text().splitlines()]
    # DINO / CLIP-I average over the two real images of the subject
    assert all(len(r["details"]["dino"]["per_subject"]) == 2 for r in rows)
    assert all(-1 <= r["scores"]["clip_t"] <= 1 for r in rows)
