"""``hf://`` data roots: ``data.data_root`` of a training run and ``psrl bench --data-root``, fetched from a local
fake Hub (tests/hub_fake.py) with ``snapshot_download(allow_patterns=...)``, read from the cache offline, and one
clear line when offline and never fetched."""
import io
import json
from pathlib import Path

import pytest
from PIL import Image

import hub_fake
from hub_fake import go_offline
from psrl.cli.main import main

fake_hub = hub_fake.fake_hub  # the fixture


def _png(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.component
def test_training_data_root_from_the_hub_then_offline(fake_hub, tmp_path, monkeypatch):
    from psrl.data.records import RecordError
    from psrl.rl.grpo_trainer import GRPOTrainer
    from psrl.rl.run_config import load_run_config

    fake_hub.add_repo("dataset", "org/refs", {"imgs/dog.png": _png((200, 10, 10)), "README.md": b"# refs"})
    records = tmp_path / "records.jsonl"
    records.write_text(json.dumps({"id": "a", "prompt": "a dog", "subjects": [{"image": "dog.png",
                                                                               "phrase": "dog"}]}) + "\n")
    overrides = [f"data.records={records}", "data.data_root=hf://org/refs/imgs", f"run.output_dir={tmp_path / 'runs'}",
                 "run.name=hub", "train.max_steps=1", "train.groups_per_step=1", "train.group_size=2",
                 "train.sample_batch_size=2", "train.train_batch_size=2", "sampling.num_steps=2"]
    trainer = GRPOTrainer(load_run_config(None, overrides))
    root = Path(trainer.records[0].root)  # the records were resolved under the fetched folder
    assert (root / "dog.png").read_bytes() == _png((200, 10, 10)) and not (root / "dog.png").is_symlink()
    assert not (root.parent / "README.md").exists()  # only the folder asked for
    assert fake_hub.repos[("dataset", "org/refs")].commits[-1][0] in str(root)  # pinned: one folder per commit

    go_offline(monkeypatch)
    seen = len(fake_hub.requests)
    again = GRPOTrainer(load_run_config(None, [*overrides, "run.name=hub2"]))
    assert Path(again.records[0].root) == root and len(fake_hub.requests) == seen  # from the cache, no request
    with pytest.raises(RecordError, match=r"^data.data_root: hf://org/other/imgs: .*offline") as e:
        GRPOTrainer(load_run_config(None, [*overrides, "data.data_root=hf://org/other/imgs", "run.name=hub3"]))
    assert "\n" not in str(e.value) and not (tmp_path / "runs" / "hub3").exists()


@pytest.mark.e2e
def test_bench_data_root_from_the_hub(fake_hub, tmp_path, monkeypatch, capsys):
    files = {f"dataset/{s}/0{j}.jpg": _png((40 * k + 20, 100, 200 - 30 * j))
             for k, s in enumerate(("cat", "dog")) for j in range(2)}
    fake_hub.add_repo("dataset", "google/dreambooth", {**files, "README.md": b"# DreamBench"})
    out = tmp_path / "eval.jsonl"
    assert main(["bench", "records", "--benchmark", "dreambench", "--data-root", "hf://google/dreambooth/dataset",
                 "--out", str(out), "--subsets", "cat"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows and all(r["subjects"][0]["image"].startswith("cat/") for r in rows)
    assert main(["bench", "validate", "--benchmark", "dreambench", "--data-root",
                 "hf://datasets/google/dreambooth/dataset", "--subsets", "cat"]) == 0
    go_offline(monkeypatch)
    with pytest.raises(SystemExit) as e:
        main(["bench", "validate", "--benchmark", "dreambench", "--data-root", "hf://google/other/dataset"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "argument --data-root: hf://google/other/dataset: the dataset was never fetched" in err
