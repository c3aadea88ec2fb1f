"""``psrl report RUN_DIR`` on a run folder written the way the trainer writes one (Tracker rows, alarms.jsonl,
eval grids): curves, tables, alarms, grids in step order (step 0 first), the one-line error for a non-run folder,
and the HTML page rendered by headless Chromium (as the bench report test does)."""
import json

import pytest
import torch

from chromium import needs_chromium, screenshot

from psrl.cli.main import main
from psrl.images import save_image
from psrl.rl.report import html_report, load_run, markdown_report, svg_chart
from psrl.rl.tracking import Tracker


@pytest.fixture
def run_dir(tmp_path):
    """A 4-step run evaluated at steps 0, 2 and 4, with one reward_hacking alarm at step 4."""
    root = tmp_path / "runs" / "hacky"
    tracker = Tracker(root)
    for step in (0, 1, 2, 3, 4):
        row = {}
        if step:
            row = {"reward/total/mean": 0.4 + 0.05 * step, "reward/total/std": 0.01, "approx_kl": 1e-4 * step,
                   "clipfrac": 0.01 * step}
        if step % 2 == 0:
            row.update({"eval/dark/mean": 0.4 + 0.05 * step, "eval/heldout/color": 0.8 - 0.05 * step,
                        "eval/heldout/color/failure_rate": 0.0, "eval/stats/dark_fraction": 0.1 * step,
                        "eval/stats/diversity": 0.9 - 0.1 * step})
            shade = 1.0 - 0.2 * step
            save_image(torch.full((3, 16, 32), shade) * torch.tensor([1.0, 0.5, 0.2])[:, None, None],
                       root / "samples" / f"step-{step}.png")
        if step == 4:
            row["monitor/alarm/reward_hacking"] = 0.2
        tracker.log(row, step)
    tracker.close()
    alarm = {"step": 4, "name": "reward_hacking", "value": 0.2,
             "message": "trained reward dark rose +0.2000 while held-out reward color fell -0.2000 <b>"}
    (root / "alarms.jsonl").write_text(json.dumps(alarm) + "\n")
    return root


@pytest.mark.unit
def test_load_run_orders_grids_and_splits_rows(run_dir):
    # step-10 must sort after step-4 (numeric, not text order); a stray file is ignored
    save_image(torch.zeros(3, 16, 32), run_dir / "samples" / "step-10.png")
    (run_dir / "samples" / "notes.png").write_bytes(b"")
    data = load_run(run_dir)
    assert [s for s, _ in data.grids] == [0, 2, 4, 10]
    assert [r["step"] for r in data.steps] == [1, 2, 3, 4] and [r["step"] for r in data.evals] == [0, 2, 4]
    assert data.alarms[0]["name"] == "reward_hacking" and data.name == "hacky"


@pytest.mark.unit
def test_html_and_markdown_show_curves_alarms_and_grids(run_dir, tmp_path):
    data = load_run(run_dir)
    page = html_report(data)
    assert page.count("<svg") == 6  # trained, eval trained, held-out, KL/clip, dark_fraction, diversity
    assert "eval/heldout/color" in page and "reward_hacking" in page
    assert "&lt;b&gt;" in page and "<b>" not in page  # messages are escaped
    grids = page[page.index("<h2>Eval grids</h2>"):]
    assert grids.index("<figcaption>step 0 (before training)") < grids.index("<figcaption>step 2<") < \
        grids.index("<figcaption>step 4<")
    assert page.count("data:image/png;base64,") == 3 and page.count("class=mark") >= 4
    md = markdown_report(data, tmp_path / "elsewhere")
    assert "| step 0 | step 2 | step 4 |" in md and "![step 0](../runs/hacky/samples/step-0.png)" in md
    assert "- step 4: **reward_hacking**" in md and "| 4 | 0.6 | 0.6 |" in md
    # an empty series says so rather than drawing nothing
    assert "no data" in svg_chart("empty", {"x": []})


@pytest.mark.e2e
def test_cli_writes_the_report_and_refuses_a_non_run_folder(run_dir, tmp_path, capsys):
    assert main(["report", str(run_dir)]) == 0
    assert (run_dir / "report.html").is_file() and (run_dir / "report.md").is_file()
    assert main(["report", str(run_dir), "--out", str(tmp_path / "out")]) == 0
    assert "samples/step-0.png" in (tmp_path / "out" / "report.md").read_text()
    capsys.readouterr()
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: psrl report: {tmp_path / 'metrics.jsonl'} not found (is {tmp_path} a psrl train run " \
                  "folder?)"


@pytest.mark.e2e
@needs_chromium
def test_report_renders_in_headless_chromium(run_dir, tmp_path):
    from PIL import ImageStat

    assert main(["report", str(run_dir)]) == 0
    im = screenshot(run_dir / "report.html", tmp_path)
    stat = ImageStat.Stat(im)
    colors = im.resize((100, 140)).getcolors(maxcolors=100 * 140)
    # the dashed alarm line and the held-out curve draw pure-ish red pixels somewhere on the page
    reds = sum(n for n, (r, g, b) in im.getcolors(maxcolors=1000 * 1400) if r > 180 and g < 80 and b < 80)
    assert max(stat.stddev) > 10 and colors is not None and len(colors) > 20 and reds > 50
