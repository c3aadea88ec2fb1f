"""The data pipeline on tiny random-weight models: all nine stages end to end, idempotent re-runs, a stage killed
mid-run and resumed, and a stage sharded over two processes. The images are noise: what is tested is the
plumbing (manifests, files, resume, sharding, statistics, exported records)."""
from __future__ import annotations

import copy
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from launch import accelerate_psrl, psrl_env, wait_for_lines
from PIL import Image

from psrl.config import load_config
from psrl.datagen import manifest as mf
from psrl.datagen.config import TINY_PRESET, DataPipelineConfig
from psrl.datagen.stages import STAGES, run_named_stage
from psrl.data.records import read_records, resolve_under

ROOT = Path(__file__).resolve().parents[1]


def tiny_cfg(**overrides) -> DataPipelineConfig:
    data = copy.deepcopy(TINY_PRESET)
    data["subjects"]["num_samples"] = 4
    data["device"] = "cpu"
    for key, value in overrides.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return load_config(DataPipelineConfig, default=data)


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> tuple[Path, dict]:
    """All nine stages on 4 samples; returns the dataset and each stage's statistics."""
    dataset = tmp_path_factory.mktemp("tiny_data")
    cfg = tiny_cfg()
    stats = {name: run_named_stage(name, cfg, dataset) for name in STAGES}
    return dataset, stats


@pytest.mark.component
def test_all_stages_end_to_end(tiny_dataset):
    dataset, stats = tiny_dataset
    # every stage consumed exactly what the previous one kept
    previous = None
    for name in STAGES[:-1]:
        s = stats[name]
        assert s.kept + s.rejected == s.inputs, name
        if previous is not None:
            assert s.inputs == stats[previous].kept, name
        previous = name
    assert stats["subjects"].inputs == 4 and stats["filter"].kept >= 1
    saved = json.loads((dataset / "stats.json").read_text())
    assert set(STAGES) <= set(saved) and saved["render"]["kept"] == stats["render"].kept

    for e in mf.read_kept(dataset, "reedit"):  # the tiny Kontext edits Attribute/Action/Background targets
        assert (e["edit"] is not None) == (e["task"] in ("Attribute", "Action", "Background"))
        assert e["target"].startswith("edited/" if e["edit"] else "targets/")
        assert Image.open(dataset / e["target"]).size == (32, 32)
    assert stats["reedit"].extra["edited"] == sum(1 for e in mf.read_kept(dataset, "reedit") if e["edit"])
    for e in mf.read_kept(dataset, "filter"):
        n = len(e["phrases"])
        target = Image.open(dataset / e["target"])
        assert target.size == (32, 32)
        assert len(e["boxes"]) == len(e["crops"]) == len(e["references"]) == n
        for crop, ref in zip(e["crops"], e["references"]):
            assert Image.open(dataset / ref).size == (32, 32)
            assert (dataset / crop).is_file()
        assert e["reference_prompts"][0].startswith(f"The same {e['phrases'][0]}")
        assert isinstance(e["consistency"], float)

    train = read_records(dataset / "train.jsonl") if stats["export"].extra["train"] else []
    held = read_records(dataset / "eval.jsonl") if stats["export"].extra["eval"] else []
    assert len(train) + len(held) == stats["filter"].kept
    for r in train + held:
        assert resolve_under(dataset, r.target).is_file()
        assert [resolve_under(dataset, s.image).is_file() for s in r.subjects] == [True] * len(r.subjects)
    bench = dataset / "psrbench"
    assert sum(len(json.loads((bench / f"{t}.json").read_text())) for t in stats["export"].extra["psrbench_items"]) \
        == len(held)


@pytest.mark.component
def test_rerun_is_idempotent_and_loads_no_model(tiny_dataset, monkeypatch):
    dataset, stats = tiny_dataset
    before = {name: mf.manifest_path(dataset, name).read_text() for name in STAGES[:-1]}
    import psrl.models.factory

    def no_models(*a, **k):
        raise AssertionError("a finished stage must not load models")

    monkeypatch.setattr(psrl.models.factory, "build_policy", no_models)
    cfg = tiny_cfg()
    for name in STAGES[:-1]:
        again = run_named_stage(name, cfg, dataset)
        assert again.new == 0 and again.kept == stats[name].kept, name
        assert mf.manifest_path(dataset, name).read_text() == before[name], name


@pytest.mark.component
def test_more_samples_extend_the_dataset(tiny_dataset, tmp_path):
    """Raising num_samples adds samples; the first ones keep their plans."""
    dataset, _ = tiny_dataset
    cfg = tiny_cfg(subjects={"num_samples": 6})
    run_named_stage("subjects", cfg, tmp_path)
    assert mf.read_manifest(tmp_path, "subjects")[:4] == mf.read_manifest(dataset, "subjects")
    assert len(mf.read_manifest(tmp_path, "subjects")) == 6


def _slow_llm(request):
    time.sleep(0.15)
    text = request["messages"][0]["content"]
    subjects = text.split("scene: ")[1].split(".\n")[0].split("; ")
    return "[Prompt]: " + " and ".join(f"a {s}" for s in subjects) + " on a table."


@pytest.mark.e2e
def test_killed_stage_resumes_without_duplicates(tmp_path):
    """SIGKILL a running `psrl data prompts` (slow LLM), run it again: every sample exactly once."""
    from fake_chat import FakeChatServer

    cfg = tiny_cfg(subjects={"num_samples": 40})
    run_named_stage("subjects", cfg, tmp_path)
    out = tmp_path / "prompts.jsonl"
    with FakeChatServer(_slow_llm) as server:
        cmd = [sys.executable, "-m", "psrl", "data", "prompts", "--dir", str(tmp_path), "--tiny", "--no-progress",
               "--llm-endpoint", server.url, "--set", "prompts.llm.max_concurrency=2"]
        proc = subprocess.Popen(cmd, env=psrl_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        wait_for_lines(proc, out, 6, timeout=60, poll=0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        first = len(list(mf.iter_manifest(out)))
        assert 6 <= first < 40, "the stage was not interrupted midway"
        served = server.requests
        done = subprocess.run(cmd, env=psrl_env(), capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        assert server.requests - served == 40 - first  # only the missing samples were asked for again
    ids = [e["id"] for e in mf.iter_manifest(out)]
    assert len(ids) == len(set(ids)) == 40
    assert "prompts: 40 in, 40 kept, 0 rejected" in done.stdout
    assert json.loads((tmp_path / "stats.json").read_text())["prompts"]["new"] == 40 - first


@pytest.mark.e2e
def test_render_sharded_over_two_processes(tiny_dataset, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2 -m psrl data render` (gloo on CPU): every sample rendered
    once, part files merged in input order, images identical to the single-process run (per-sample seeds)."""
    dataset, _ = tiny_dataset
    for name in ("subjects", "prompts", "config"):
        src = dataset / (f"{name}.yaml" if name == "config" else f"{name}.jsonl")
        if src.is_file():
            (tmp_path / src.name).write_text(src.read_text())
    cmd = accelerate_psrl("data", "render", "--dir", str(tmp_path), "--tiny", "--no-progress", "--set", "device=cpu")
    done = subprocess.run(cmd, env=psrl_env(), capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "shard 1/2" in done.stdout + done.stderr
    assert mf.part_paths(tmp_path, "render") == []
    sharded = mf.read_manifest(tmp_path, "render")
    single = mf.read_manifest(dataset, "render")
    assert [e["id"] for e in sharded] == [e["id"] for e in single]
    for a, b in zip(sharded, single):
        assert a["render_seed"] == b["render_seed"]
        x = np.asarray(Image.open(tmp_path / a["target"]), dtype=np.int16)
        y = np.asarray(Image.open(dataset / b["target"]), dtype=np.int16)
        assert np.abs(x - y).max() <= 1  # batch composition may flip a rounding, nothing more
    assert json.loads((tmp_path / "stats.json").read_text())["render"]["kept"] == 4


@pytest.mark.e2e
def test_exported_records_train_with_psrl_sft(tiny_dataset, tmp_path):
    """`psrl sft` runs 2 steps of Kontext LoRA SFT on the exported records (targets + references)."""
    pytest.importorskip("psrl.cli.sft")
    import yaml

    from psrl.cli.main import main

    dataset, stats = tiny_dataset
    records = dataset / ("train.jsonl" if stats["export"].extra["train"] else "eval.jsonl")
    cfg = {
        "model": {"name": "flux_kontext", "path": "tiny", "lora": {"rank": 4, "alpha": 4},
                  "args": {"reference_long_side_single": 32, "reference_long_side_multi": 32}},
        "sft": {"max_steps": 2, "batch_size": 1, "height": 32, "width": 32, "device": "cpu", "eval_sigmas": [],
                "save_every": 2},
        "data": {"records": str(records), "data_root": str(dataset)},
        "run": {"name": "sft", "output_dir": str(tmp_path)},
    }
    (tmp_path / "sft.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["sft", "--config", str(tmp_path / "sft.yaml")]) == 0
    metrics = [json.loads(line) for line in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in metrics if "loss" in m]
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert list((tmp_path / "sft" / "checkpoints").glob("step-2*"))
