"""Trackers: metrics.jsonl always, accelerate's TensorBoard / W&B trackers with hyperparameters and images; the
progress bar only on a terminal."""
import io
import json

import pytest
import torch
from PIL import Image

from psrl.rl.tracking import Tracker, hparams, read_metrics


def _image(color, size=(12, 8)):
    return Image.new("RGB", size, color)


@pytest.mark.unit
def test_jsonl_is_always_written_and_nan_is_null(tmp_path):
    tracker = Tracker(tmp_path, "jsonl")
    tracker.log({"a": 1.5, "b": torch.tensor(2.0), "c": float("nan"), "d": [1, 2]}, 3)
    tracker.log_images("eval/samples", _image("red"), 3)  # no image tracker: nothing to do, no error
    tracker.close()
    assert read_metrics(tmp_path / "metrics.jsonl") == [{"step": 3, "a": 1.5, "b": 2.0, "c": None, "d": [1, 2]}]


@pytest.mark.unit
def test_hparams_are_flat_scalars_with_the_psrl_version():
    flat = hparams({"train": {"lr": 0.1, "betas": [0.9, 0.99]}, "run": {"name": None, "tracker": ["jsonl"]},
                    "rewards": [{"name": "mean_color"}], "data": {"args": {}}})
    assert flat["train.lr"] == 0.1 and flat["train.betas"] == "[0.9, 0.99]" and flat["run.name"] == "null"
    assert flat["rewards"] == '[{"name": "mean_color"}]' and flat["data.args"] == "{}"
    assert isinstance(flat["psrl_version"], str) and flat["psrl_version"]
    assert all(isinstance(v, (bool, int, float, str)) for v in flat.values())


@pytest.mark.unit
def test_a_missing_tracker_package_is_a_config_error(tmp_path, monkeypatch):
    import importlib.util

    from psrl.config import ConfigError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"run.tracker=wandb needs the wandb package.*psrl\[wandb\]"):
        Tracker(tmp_path, ["jsonl", "wandb"])


def _tb_events(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))  # the real reader TensorBoard uses
    acc.Reload()
    return acc


@pytest.mark.component
def test_tensorboard_gets_scalars_images_and_hparams(tmp_path):
    pytest.importorskip("tensorboard")
    tracker = Tracker(tmp_path, ["jsonl", "tensorboard"], config={"train": {"lr": 0.25}}, run_name="r")
    tracker.log({"reward/mean": 0.5, "note": "text is not a scalar", "bad": float("nan")}, 1)
    tracker.log({"reward/mean": 0.75}, 2)
    tracker.log_images("eval/samples", _image((255, 0, 0)), 2)
    tracker.log_images("before_after", [_image((0, 255, 0)), _image((0, 0, 255), (6, 6))], 2)
    tracker.close()
    acc = _tb_events(tmp_path / "tensorboard")
    assert [(e.step, e.value) for e in acc.Scalars("reward/mean")] == [(1, 0.5), (2, 0.75)]
    assert "bad" not in acc.Tags()["scalars"] and "note" not in acc.Tags()["scalars"]
    [img] = acc.Images("eval/samples")
    decoded = Image.open(io.BytesIO(img.encoded_image_string))
    assert (img.step, decoded.size, decoded.getpixel((3, 3))) == (2, (12, 8), (255, 0, 0))
    assert Image.open(io.BytesIO(acc.Images("before_after/1")[0].encoded_image_string)).size == (6, 6)
    # hparams: accelerate writes them as a sub-run of the log dir, with the psrl version beside the config
    from tensorboard.plugins.hparams import plugin_data_pb2

    found = {}
    for sub in (tmp_path / "tensorboard").iterdir():
        if sub.is_dir():
            sub_acc = _tb_events(sub)
            plugins = sub_acc.PluginTagToContent("hparams") if list(sub.glob("events*")) else {}
            for tag, content in plugins.items():
                data = plugin_data_pb2.HParamsPluginData.FromString(content)
                if data.HasField("session_start_info"):
                    found = {k: v for k, v in data.session_start_info.hparams.items()}
    assert found["train.lr"].number_value == 0.25 and found["psrl_version"].string_value
    assert read_metrics(tmp_path / "metrics.jsonl")[1] == {"step": 2, "reward/mean": 0.75}


@pytest.mark.component
def test_wandb_offline_gets_scalars_images_and_config(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    tracker = Tracker(tmp_path, ["wandb"], config={"train": {"lr": 0.25}}, run_name="r", wandb_project="p")
    tracker.log({"reward/mean": 0.5}, 1)
    tracker.log_images("eval/samples", _image((255, 0, 0)), 1)
    tracker.close()
    [run_dir] = (tmp_path / "wandb").glob("offline-run-*")
    pngs = list((run_dir / "files" / "media" / "images").rglob("*.png"))
    assert len(pngs) == 1 and Image.open(pngs[0]).getpixel((0, 0)) == (255, 0, 0)
    [log] = run_dir.glob("run-*.wandb")  # the offline run log (protobuf records) holds the config and history
    import time

    wanted = (b"train.lr", b"psrl_version", b"reward/mean")
    deadline = time.monotonic() + 30  # W&B's service process may still be flushing it under a loaded machine
    while not all(w in log.read_bytes() for w in wanted) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert [w for w in wanted if w not in log.read_bytes()] == []
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])["reward/mean"] == 0.5


@pytest.mark.unit
def test_progress_bar_only_on_a_terminal():
    from psrl.rl.base_trainer import wants_progress

    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert wants_progress(None, Tty()) is True
    assert wants_progress(None, io.StringIO()) is False  # a log file or a pipe: plain lines with the ETA
    assert wants_progress(True, io.StringIO()) is True and wants_progress(False, Tty()) is False


@pytest.mark.component
def test_training_logs_eval_grids_as_images_to_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    from psrl.rl.grpo_trainer import GRPOTrainer
    from psrl.rl.run_config import load_run_config

    cfg = load_run_config(None, [f"run.output_dir={tmp_path}", "run.name=tb", "run.report_to=[jsonl, tensorboard]",
                                 "train.max_steps=2", "train.groups_per_step=1", "train.group_size=2",
                                 "train.sample_batch_size=2", "train.train_batch_size=2", "sampling.num_steps=2",
                                 "eval.every=2", "eval.num_steps=2", "eval.resolution=8", "train.save_every=0"])
    trainer = GRPOTrainer(cfg)
    assert trainer.progress is False  # pytest's stderr is not a terminal
    trainer.train()
    acc = _tb_events(tmp_path / "tb" / "tensorboard")
    steps = [e.step for e in acc.Images("eval/samples")]
    assert steps and steps[-1] == 2 and (tmp_path / "tb" / "samples" / "step-2.png").is_file()
    saved = Image.open(tmp_path / "tb" / "samples" / "step-2.png")
    logged = Image.open(io.BytesIO(acc.Images("eval/samples")[-1].encoded_image_string))
    assert logged.tobytes() == saved.convert("RGB").tobytes() and logged.size == saved.size
    assert [e.step for e in acc.Scalars("reward/total/mean")] == [1, 2]


@pytest.mark.component
def test_with_a_bar_the_log_lines_still_carry_steps_per_second_and_the_eta(tmp_path, capsys):
    import logging
    import re

    from psrl.rl.grpo_trainer import GRPOTrainer
    from psrl.rl.run_config import load_run_config

    cfg = load_run_config(None, [f"run.output_dir={tmp_path}", "run.name=bar", "train.max_steps=2",
                                 "train.groups_per_step=1", "train.group_size=2", "train.sample_batch_size=2",
                                 "train.train_batch_size=2", "sampling.num_steps=2", "eval.every=0"])
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.INFO)
    try:
        GRPOTrainer(cfg, progress=True).train()
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    lines = [line for line in stream.getvalue().splitlines() if re.search(r"step \d/2 ", line)]
    assert len(lines) == 2 and all(re.search(r"\(\d+\.\d\d steps/s, ETA \d+:\d\d\)$", line) for line in lines)
    assert "2/2" in capsys.readouterr().err  # the bar itself, on stderr
