"""Generation (resume, determinism) and evaluation (per-sample JSONL, failures counted, resume after a kill)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from fixtures_bench import ColorPolicy, make_psrbench, metric_set_for_tests

from psrl.bench.evaluate import SAMPLES, evaluate_samples, read_sample_rows
from psrl.bench.generate import generate_benchmark
from psrl.bench.loading import load_benchmark, load_results
from psrl.bench.results import result_manifest
from psrl.bench.summary import summarize
from psrl.bench.tasks import parse_metrics
from psrl.errors import PsrlError
from psrl.sampling import SamplingConfig

TESTS = Path(__file__).parent
SRC = TESTS.parent / "src"


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    base = tmp_path_factory.mktemp("bench")
    root = make_psrbench(base / "data")
    out = base / "out"
    policy = ColorPolicy()
    stats = generate_benchmark(policy, load_benchmark("psrbench", root), out, seeds=[0, 1], sampling=SamplingConfig(),
                               batch_size=3, skip_invalid=True,
                               manifest=result_manifest("psrbench", root))
    return root, out, stats


@pytest.mark.component
def test_generate_writes_released_format_and_resumes(generated, tmp_path):
    root, out, stats = generated
    assert stats.generated == 2 * 14 and sorted(stats.skipped_invalid) == sorted(
        ["Attribute/2", "Action/2", "Background/2", "Position/2", "Complex/2"])
    entries = json.loads((out / "seed1" / "Three.json").read_text())
    assert [e["result_path"] for e in entries] == [str((out / "seed1" / "Three" / f"{i}.png").resolve())
                                                   for i in range(2)]
    assert entries[0]["input_path"] == ["subjects/ring.png", "subjects/car.png", "animals/cat.png"]
    # invalid entries stay in the result file, without result_path
    attr = json.loads((out / "seed0" / "Attribute.json").read_text())
    assert len(attr) == 3 and "result_path" not in attr[2]
    # a second run generates nothing
    again = generate_benchmark(ColorPolicy(), load_benchmark("psrbench", root), out, seeds=[0, 1],
                               sampling=SamplingConfig(), skip_invalid=True)
    assert again.generated == 0 and again.skipped_existing == 28
    # without --skip-invalid the invalid entries stop the run, each named
    with pytest.raises(PsrlError, match=r"Background/2.*escapes"):
        generate_benchmark(ColorPolicy(), load_benchmark("psrbench", root), tmp_path / "x", seeds=[0],
                           sampling=SamplingConfig())


@pytest.mark.component
def test_images_do_not_depend_on_batching(generated, tmp_path):
    root, out, _ = generated
    generate_benchmark(ColorPolicy(), load_benchmark("psrbench", root, ["Four"]), tmp_path, seeds=[1],
                       sampling=SamplingConfig(), batch_size=1)
    a = (tmp_path / "seed1" / "Four" / "1.png").read_bytes()
    assert a == (out / "seed1" / "Four" / "1.png").read_bytes()
    assert a != (out / "seed0" / "Four" / "1.png").read_bytes()


@pytest.mark.component
def test_eval_counts_failures_and_retries_failing_batches_per_sample(generated, tmp_path):
    root, out, _ = generated
    samples, _ = load_results(out, data_root=root)
    assert len(samples) == 2 * 19
    metrics = parse_metrics(metric_set_for_tests())
    stats = evaluate_samples(samples, tmp_path, metrics, benchmark="psrbench", batch_size=4)
    rows = read_sample_rows(tmp_path)
    assert len(rows) == 38 == stats.computed
    assert not list(tmp_path.glob("samples.part*"))  # merged
    # subject_consistency raises on any batch with a crab: the batch is retried per sample, only crab samples fail
    crab = [r for r in rows.values() if r["phrases"] and "crab" in r["phrases"]]
    assert crab and all(r["failures"]["subject_consistency"].startswith("RuntimeError") for r in crab)
    # the rows keep reference paths as the benchmark writes them (relative to its root), not the resolved ones
    assert rows["seed0/Four/0"]["references"][3] == "animals/cat.png"
    others = [r for r in rows.values() if r["phrases"] and "crab" not in r["phrases"] and r["image"]
              and r["failures"]["subject_consistency"] is None]
    assert others and all(r["scores"]["subject_consistency"] == 1.0 for r in others)
    # NaN from a metric -> null + reason; judge text kept; Position uses its own metric
    scarf = rows["seed0/Attribute/1"]
    assert scarf["scores"]["semantic_alignment"] is None
    assert scarf["failures"]["semantic_alignment"] == "judge reply had no score"
    assert rows["seed0/Action/0"]["details"]["semantic_alignment"]["judge_text"].startswith("[Thought]")
    assert "mean_rgb" in rows["seed0/Position/0"]["details"]["semantic_alignment"]
    # scale applied, raw kept
    r = rows["seed0/Four/0"]
    assert r["scores"]["aesthetics"] == pytest.approx(0.1 * r["raw"]["aesthetics"])
    # invalid entries and missing images are failures on every dimension, not dropped
    assert rows["seed1/Background/2"]["failures"]["aesthetics"].startswith("invalid entry")
    assert rows["seed1/Attribute/2"]["failures"]["aesthetics"] == "no result_path in the result file"
    assert stats.failures["aesthetics"] == 10
    summary = summarize(list(rows.values()), benchmark="psrbench",
                        dimensions=["subject_consistency", "semantic_alignment", "aesthetics"],
                        subsets=["Attribute", "Action", "Background", "Position", "Complex", "Three", "Four"])
    cell = summary["table"]["Attribute"]["semantic_alignment"]
    assert (cell["n"], cell["failed"], cell["total"]) == (2, 4, 6)
    expected = sum(r["scores"]["semantic_alignment"] for r in rows.values() if r["subset"] == "Attribute"
                   and r["scores"]["semantic_alignment"] is not None) / 2
    assert cell["mean"] == pytest.approx(expected)
    means = [summary["table"][s]["aesthetics"]["mean"] for s in summary["subsets"]]
    assert summary["overall"]["aesthetics"]["mean"] == pytest.approx(sum(means) / 7)
    assert set(summary["overall"]["aesthetics"]["per_seed"]) == {"0", "1"}


@pytest.mark.component
def test_eval_refuses_to_mix_metric_configs(generated, tmp_path):
    root, out, _ = generated
    samples, _ = load_results(out, data_root=root, subsets=["Four"])
    evaluate_samples(samples, tmp_path, parse_metrics({"aesthetics": {"reward": "mean_color"}}), benchmark="psrbench")
    with pytest.raises(PsrlError, match="another metric config"):
        evaluate_samples(samples, tmp_path, parse_metrics({"aesthetics": {"reward": "mean_color", "scale": 2}}),
                         benchmark="psrbench")


@pytest.mark.component
def test_results_of_another_model_with_relative_paths(generated, tmp_path):
    """Only result JSON files, directly in the folder, result_path relative to the JSON file."""
    root, out, _ = generated
    entries = json.loads((out / "seed0" / "Four.json").read_text())
    (tmp_path / "imgs").mkdir()
    for i, e in enumerate(entries):
        (tmp_path / "imgs" / f"{i}.png").write_bytes(Path(e["result_path"]).read_bytes())
        e["result_path"] = f"imgs/{i}.png"
    (tmp_path / "Four.json").write_text(json.dumps(entries))
    samples, issues = load_results(tmp_path, data_root=root)
    assert issues == [] and [s.key for s in samples] == ["seed0/Four/0", "seed0/Four/1"]
    assert all(s.problem is None and s.image == (tmp_path / "imgs" / f"{i}.png").resolve()
               for i, s in enumerate(samples))
    # a corrupt result image is a failure on every dimension, the other sample is scored
    (tmp_path / "imgs" / "1.png").write_bytes(b"\x89PNG truncated")
    evaluate_samples(samples, tmp_path / "eval", parse_metrics({"aesthetics": {"reward": "mean_color"}}),
                     benchmark="psrbench")
    rows = read_sample_rows(tmp_path / "eval")
    assert rows["seed0/Four/0"]["scores"]["aesthetics"] is not None
    why = rows["seed0/Four/1"]["failures"]["aesthetics"]
    assert why.startswith(f"result image {tmp_path / 'imgs' / '1.png'}: unreadable image"), why


@pytest.mark.component
def test_report_gallery_reads_the_resolved_reference_paths(generated, tmp_path):
    """The gallery's reference thumbnails come from the paths resolved at load (no data root reaches the report):
    the same images the data root joined with the entry's relative paths gave, and `psrl bench report DIR`
    rebuilds the same page."""
    from psrl.bench.pipeline import eval_and_report, report_from_dir
    from psrl.bench.report import _thumb_b64

    root, out, _ = generated
    samples, _ = load_results(out, data_root=root, subsets=["Three"])
    metrics = parse_metrics({"aesthetics": {"reward": "mean_color"}})
    _, summary = eval_and_report(samples, tmp_path, metrics, benchmark="psrbench", results_dir=out)
    rows = read_sample_rows(tmp_path)
    assert len(rows) == 4 and summary["data_root"] == str(root.resolve())
    html = (tmp_path / "report.html").read_text()
    for row in rows.values():
        assert row["reference_images"] == [str((root / ref).resolve()) for ref in row["references"]]
        for ref in row["references"]:
            assert _thumb_b64(root / ref) in html
    assert html.count("<figure class=\"missing\">") == 0
    report_from_dir(tmp_path, title=f"psrbench: {out}")
    assert (tmp_path / "report.html").read_text() == html
    assert json.loads((tmp_path / "summary.json").read_text())["data_root"] == str(root.resolve())


def _eval_cmd(results, out, metrics_file):
    return [sys.executable, "-m", "psrl", "bench", "eval", "--results", str(results), "--out", str(out),
            "--metrics", str(metrics_file), "--batch-size", "1", "--no-report"]


@pytest.mark.e2e
def test_killed_eval_resumes_without_loss_or_recompute(generated, tmp_path):
    _root, out, _ = generated
    log = tmp_path / "calls.log"
    metrics_file = tmp_path / "metrics.yaml"
    metrics_file.write_text(yaml.safe_dump({"metrics": metric_set_for_tests(log=str(log))}))
    env = dict(os.environ, PYTHONPATH=f"{TESTS}{os.pathsep}{SRC}", PSRL_TEST_METRIC_SLEEP="0.25")
    eval_dir = tmp_path / "eval"
    proc = subprocess.Popen(_eval_cmd(out, eval_dir, metrics_file), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    part = eval_dir / "samples.part0.jsonl"
    deadline = time.time() + 90
    try:
        while time.time() < deadline:
            if part.is_file() and part.read_text().count("\n") >= 5:
                break
            if proc.poll() is not None:
                pytest.fail("evaluation ended before it could be killed: " + proc.stderr.read().decode()[-2000:])
            time.sleep(0.05)
        else:
            pytest.fail("evaluation did not write 5 samples in time")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    written_before = {json.loads(line)["key"] for line in part.read_text().splitlines() if line.endswith("}")}
    assert 5 <= len(written_before) < 38
    assert not (eval_dir / SAMPLES).exists()
    calls_before = len(log.read_text().splitlines())
    env["PSRL_TEST_METRIC_SLEEP"] = "0"
    done = subprocess.run(_eval_cmd(out, eval_dir, metrics_file), env=env, capture_output=True, text=True, check=False,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"({len(written_before)} resumed)" in done.stdout
    lines = (eval_dir / SAMPLES).read_text().splitlines()
    keys = [json.loads(line)["key"] for line in lines]
    assert len(keys) == len(set(keys)) == 38
    # nothing written before the kill was scored again (the log names record id + image mean)
    from psrl.bench.evaluate import load_image_tensor

    rows = {json.loads(line)["key"]: json.loads(line) for line in lines}
    signature = {k: f"{k.split('/', 1)[1]} {float(load_image_tensor(rows[k]['image']).mean()):.6f}"
                 for k in written_before if rows[k]["image"] and rows[k]["subset"] != "Position"}
    after = set(log.read_text().splitlines()[calls_before:])
    assert signature and not (set(signature.values()) & after)
    assert len(after) > 0


@pytest.mark.component
def test_tensor_roundtrip_of_saved_images(generated):
    from psrl.bench.evaluate import load_image_tensor

    _, out, _ = generated
    img = load_image_tensor(out / "seed0" / "Four" / "0.png")
    assert img.shape == (3, 32, 32) and img.dtype == torch.float32
    assert float(img[:, 0, 0].mean()) == pytest.approx(0.5, abs=1 / 255)


@pytest.mark.component
def test_remote_judge_endpoint_rubric_per_subset(generated, tmp_path):
    """--judge-endpoint: an OpenAI-compatible server gets the subset's rubric with the instruction; 0-10 -> [0, 1];
    a reply the strict parser rejects is a counted failure with the reply kept."""
    from fake_chat import FakeChatServer

    from psrl.bench.tasks import metrics_to_json, psrbench_metrics

    seen = []

    def judge(body):
        text = body["messages"][0]["content"][-1]["text"]
        seen.append((text, body.get("temperature")))
        return "**[Score]:** eight" if "scarf" in text else "[Thought]: matches. [Score]: 7"

    with FakeChatServer(judge) as server:
        sa = metrics_to_json(psrbench_metrics(judge_endpoint=server.url))["semantic_alignment"]
        sa["per_subset"]["Position"] = {"reward": "mean_color"}
        root, out, _ = generated
        samples, _ = load_results(out, data_root=root, subsets=["Attribute", "Background"])
        samples = [s for s in samples if s.seed == 0]
        stats = evaluate_samples(samples, tmp_path, parse_metrics({"semantic_alignment": sa}), benchmark="psrbench",
                                 batch_size=4)
    rows = read_sample_rows(tmp_path)
    assert rows["seed0/Background/0"]["scores"]["semantic_alignment"] == pytest.approx(0.7)
    assert rows["seed0/Attribute/0"]["details"]["semantic_alignment"]["raw_text"].endswith("[Score]: 7")
    scarf = rows["seed0/Attribute/1"]
    assert scarf["scores"]["semantic_alignment"] is None and "eight" in scarf["details"]["semantic_alignment"][
        "raw_text"]
    assert stats.failures["semantic_alignment"] == 1 + 2  # the unparsable reply + two entries without an image
    assert len(seen) == 4 and all(t == 0.2 for _, t in seen)
    assert any("[background description]: The car and the trolley in a snowy street." in text for text, _ in seen)
    assert any("[attribute description]: The cat is wearing a cape" in text for text, _ in seen)


@pytest.mark.unit
def test_out_of_memory_and_broken_metrics_stop_the_evaluation():
    from psrl.bench.evaluate import score_batch
    from psrl.data.records import Record

    class Broken:
        name = "broken"

        def __init__(self, exc):
            self.exc = exc

        def __call__(self, images, records):
            raise self.exc

    images, records = torch.zeros(2, 3, 8, 8), [Record(id="a", prompt="x"), Record(id="b", prompt="y")]
    for exc in (torch.OutOfMemoryError("CUDA out of memory"), ImportError("no module named foo")):
        with pytest.raises(type(exc)):
            score_batch(Broken(exc), images, records)
    rows = score_batch(Broken(RuntimeError("detector crashed")), images, records)
    assert [r[:2] for r in rows] == [(None, "RuntimeError: detector crashed")] * 2
