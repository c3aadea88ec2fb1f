"""``psrl world make`` end to end: its records feed ``psrl sft`` unchanged, PocketBench validates, generates and
evaluates through ``psrl bench`` (ground truth at the ceiling, noise far below)."""
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from psrl.cli.main import main
from psrl.data.records import read_records
from psrl.world.scenes import SUBSETS

pytestmark = pytest.mark.e2e

KONTEXT = {"name": "flux_kontext", "path": "tiny", "max_sequence_length": 16,
           "args": {"reference_long_side_single": 16, "reference_long_side_multi": 8}}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("w") / "pocket"
    assert main(["world", "make", "--out", str(out), "--num", "7", "--eval-num", "7", "--bench-per-subset", "2",
                 "--seed", "3"]) == 0
    return out


def _overall(eval_dir):
    summary = json.loads((eval_dir / "summary.json").read_text())
    return {dim: v["mean"] for dim, v in summary["overall"].items()}


def test_make_writes_records_references_and_the_benchmark(world, capsys):
    train, held = read_records(world / "train.jsonl"), read_records(world / "eval.jsonl")
    assert len(train) == len(held) == 7
    assert [r.tags["subset"] for r in train] == list(SUBSETS)
    info = json.loads((world / "world.json").read_text())
    held_ids = set(info["held_out_subjects"])
    assert len(held_ids) == 36
    for rec in train + held:
        assert Image.open(world / rec.target).size == (64, 64)
        for s in rec.subjects:
            assert Image.open(world / s.image).size == (32, 32)
    assert not {s.image for r in train for s in r.subjects} & {f"subjects/{i}.png" for i in held_ids}
    assert all(s.image[len("subjects/"):-4] in held_ids for r in held for s in r.subjects)
    four = json.loads((world / "pocketbench" / "Four.json").read_text())
    assert len(four) == 2 and set(four[0]) == {"instruction", "input_path", "category1", "category2", "category3",
                                               "category4"}
    assert main(["bench", "validate", "--data-root", str(world / "pocketbench")]) == 0  # PSRBench's own checks
    assert "14 entries in 7 subset(s); 0 issue(s)" in capsys.readouterr().out


def test_make_is_deterministic_and_refuses_a_used_folder_or_bad_counts(world, tmp_path, capsys):
    again = tmp_path / "again"
    assert main(["world", "make", "--out", str(again), "--num", "7", "--eval-num", "7", "--bench-per-subset", "2",
                 "--seed", "3"]) == 0
    assert (again / "train.jsonl").read_text() == (world / "train.jsonl").read_text()
    position = "pocketbench/Position.json"
    assert (again / position).read_text() == (world / position).read_text()
    assert (again / "images/train/000003.png").read_bytes() == (world / "images/train/000003.png").read_bytes()
    capsys.readouterr()
    assert main(["world", "make", "--out", str(world)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert main(["world", "make", "--out", str(tmp_path / "none"), "--num", "0"]) == 2
    assert "--num must be an integer >= 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()


def test_ground_truth_is_the_ceiling_and_noise_scores_low(world, tmp_path):
    truth = world / "pocketbench_truth"
    assert main(["bench", "eval", "--results", str(truth), "--out", str(tmp_path / "truth_eval")]) == 0
    ceiling = _overall(tmp_path / "truth_eval")
    assert set(ceiling) == {"subject_consistency", "semantic_alignment", "fidelity", "subject_consistency_gain"}
    assert ceiling["subject_consistency"] >= 0.99 and ceiling["semantic_alignment"] == 1.0
    assert ceiling["fidelity"] > 0.97 and ceiling["subject_consistency_gain"] > 0.5
    # the same result files pointing at noise images
    noise = tmp_path / "noise" / "seed0"
    rng = np.random.default_rng(0)
    for subset in SUBSETS:
        entries = json.loads((truth / "seed0" / f"{subset}.json").read_text())
        (noise / subset).mkdir(parents=True)
        for e in entries:
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(noise / e["result_path"])
        (noise / f"{subset}.json").write_text(json.dumps(entries))
    assert main(["bench", "eval", "--results", str(tmp_path / "noise"), "--benchmark", "pocket",
                 "--data-root", str(world / "pocketbench")]) == 0
    low = _overall(tmp_path / "noise" / "eval")
    assert low["subject_consistency"] < 0.4 and low["semantic_alignment"] < 0.4 and low["fidelity"] < 0.5
    assert abs(low["subject_consistency_gain"]) < 0.1


def test_sft_trains_on_the_records_and_bench_generates_pocketbench(world, tmp_path):
    cfg = {"model": {**KONTEXT, "lora": {"rank": 4, "alpha": 4.0, "init": True}},
           "sft": {"max_steps": 2, "batch_size": 2, "height": 16, "width": 16, "lr": 0.01, "log_every": 1,
                   "seed": 0, "save_every": 0, "device": "cpu"},
           "data": {"records": str(world / "train.jsonl")},
           "run": {"name": "sft", "output_dir": str(tmp_path / "runs")}}
    (tmp_path / "sft.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["sft", "--config", str(tmp_path / "sft.yaml")]) == 0
    assert (tmp_path / "runs" / "sft" / "checkpoints" / "step-2" / "lora").is_dir()
    gen = {"model": KONTEXT, "sampling": {"num_steps": 2, "height": 16, "width": 16}}
    (tmp_path / "gen.yaml").write_text(yaml.safe_dump(gen))
    out = tmp_path / "bench"
    assert main(["bench", "generate", "--benchmark", "pocket", "--data-root", str(world / "pocketbench"),
                 "--config", str(tmp_path / "gen.yaml"), "--out", str(out), "--subsets", "Position", "Four"]) == 0
    assert main(["bench", "eval", "--results", str(out), "--subsets", "Position", "Four"]) == 0
    rows = [json.loads(line) for line in (out / "eval" / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 4
    # a random-weight model's 16x16 samples are scored (or fail with a reason), never silently defaulted
    for row in rows:
        for dim, score in row["scores"].items():
            assert (score is not None) != (row["failures"][dim] is not None)


def test_grpo_trains_on_the_world_records_with_the_world_reward(world, tmp_path):
    from psrl.rl.tracking import read_metrics

    config = Path(__file__).resolve().parents[1] / "configs" / "tiny" / "psr_kontext.yaml"
    assert main(["train", "--config", str(config), "--set", f"run.output_dir={tmp_path}",
                 "--set", f"data.records={world / 'train.jsonl'}", "--set", f"data.data_root={world}",
                 "--set", f"eval.records={world / 'eval.jsonl'}", "--set", "train.max_steps=1",
                 "--set", "rewards=[{name: pocket_subjects, weight: 1.0, args: {score: mean}}]"]) == 0
    (row,) = read_metrics(next(tmp_path.iterdir()) / "metrics.jsonl")
    # every sample of a random-weight model's 16x16 rollout is scored (low, never NaN): the trainer gets a signal
    assert row["reward/pocket_subjects/failure_rate"] == 0.0
    assert 0.0 <= row["reward/pocket_subjects/mean"] < 0.9


def test_two_scores_of_one_reward_train_together_under_labels(tmp_path, capsys):
    """``rewards.<i>.label``: pocket_subjects as identity_dense and as fidelity in one run, each logged under its
    label; the same reward twice without labels is refused before the run directory exists."""
    both = ("rewards=[{name: pocket_subjects, label: identity, args: {score: identity_dense}}, "
            "{name: pocket_subjects, label: palette, weight: 0.5, args: {score: fidelity}}]")
    common = ["train", "--set", f"run.output_dir={tmp_path}", "--set", "train.max_steps=1", "--set", "eval.every=0",
              "--set", "sampling.num_steps=2"]
    assert main([*common, "--set", both]) == 0
    row = json.loads((tmp_path / "pocket_world" / "metrics.jsonl").read_text().splitlines()[0])
    assert 0 <= row["reward/identity/mean"] <= 1 and 0.5 < row["reward/palette/mean"] <= 1
    assert row["reward/identity/mean"] != row["reward/palette/mean"] and "reward/pocket_subjects/mean" not in row
    capsys.readouterr()
    unlabelled = both.replace("label: identity, ", "").replace("label: palette, ", "")
    assert main([*common, "--set", unlabelled, "--set", "run.name=dup"]) == 2
    err = capsys.readouterr().err
    assert "names must be unique" in err and "label" in err and not (tmp_path / "dup").exists()
