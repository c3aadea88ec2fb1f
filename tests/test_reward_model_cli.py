"""``psrl reward-model`` end to end on tiny models: the shipped tiny config trains and exports, its adapter drives a
GRPO run's ``vlm_consistency`` reward, ``merge`` rebuilds the merged folder, ``eval`` scores ranking and pairwise
benchmarks (JSONL and the ConsistencyRank-Bench folder layout) with a report beside the published numbers."""
import json
from pathlib import Path

import pytest
from PIL import Image

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from psrl.cli.main import main

    out = tmp_path_factory.mktemp("rm")
    assert main(["reward-model", "train", "--config", str(CONFIGS / "tiny" / "paco_reward.yaml"),
                 "--set", f"run.output_dir={out}"]) == 0
    return out / "tiny_paco_reward"


@pytest.mark.e2e
def test_tiny_config_trains_and_exports(tiny_run):
    rows = [json.loads(x) for x in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4] and rows[0]["data/train_examples"] == 8
    assert all("eval/yes_no_accuracy" in rows[i] for i in (0, 2, 4))
    assert (tiny_run / "adapter" / "adapter_config.json").is_file()
    assert (tiny_run / "merged" / "config.json").is_file() and (tiny_run / "merged" / "model.safetensors").is_file()
    assert (tiny_run / "checkpoints" / "step-4" / "lora" / "adapter_model.safetensors").is_file()


@pytest.mark.e2e
def test_trained_adapter_is_a_grpo_reward(tiny_run, tmp_path):
    """A policy trains with the reward model: one GRPO step of the tiny PaCo-FLUX twin with the adapter loaded."""
    from psrl.cli.main import main

    assert main(["train", "--config", str(CONFIGS / "tiny" / "paco_flux_refs.yaml"),
                 "--set", f"rewards.0.args.adapter_path={tiny_run / 'adapter'}", "--set", "train.max_steps=1",
                 "--set", "eval.every=0", "--set", f"run.output_dir={tmp_path}"]) == 0
    run = next(p for p in tmp_path.iterdir() if p.is_dir())
    metrics = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert metrics["step"] == 1 and metrics["reward/vlm_consistency/failure_rate"] == 0.0


@pytest.mark.e2e
def test_merge_command_and_print_config(tiny_run, tmp_path, capsys):
    from safetensors.torch import load_file

    from psrl.cli.main import main

    assert main(["reward-model", "merge", "--base", "tiny", "--adapter", str(tiny_run / "adapter"),
                 "--out", str(tmp_path / "m")]) == 0
    a, b = load_file(tmp_path / "m" / "model.safetensors"), load_file(tiny_run / "merged" / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] - b[k]).abs().max() < 1e-6 for k in a)
    capsys.readouterr()
    assert main(["reward-model", "train", "--config", str(CONFIGS / "paco_reward.yaml"), "--print-config"]) == 0
    text = capsys.readouterr().out
    assert "first_token_weight: 0.1  # alpha, the weight of the answer token" in text
    assert "rank: 32" in text and "cutoff_len: 16384" in text


@pytest.mark.unit
def test_recipe_is_the_released_one_and_the_twin_keeps_its_loss():
    from psrl.reward_model.reward_model_config import load_reward_model_config

    full = load_reward_model_config(CONFIGS / "paco_reward.yaml")
    twin = load_reward_model_config(CONFIGS / "tiny" / "paco_reward.yaml")
    m, t = full.model, full.train
    assert (m.path, m.lora.rank, m.lora.targets, m.image_max_pixels) == ("Qwen/Qwen2.5-VL-7B-Instruct", 32, "all",
                                                                          2097152)
    assert (t.first_token_weight, t.lr, t.lr_scheduler, t.warmup_ratio, t.num_train_epochs) == (0.1, 2e-4, "cosine",
                                                                                                 0.1, 2.0)
    assert (t.batch_size, t.gradient_accumulation, t.cutoff_len, t.mixed_precision) == (8, 4, 16384, "bf16")
    assert twin.model.path == "tiny" and twin.train.first_token_weight == t.first_token_weight
    assert "paco_reward_lora.yaml" in (CONFIGS / "paco_reward.yaml").read_text()


# alike on purpose: a config file written, loaded, and refused with the key named, as tests/test_config.py does
@pytest.mark.unit
def test_config_errors_name_the_key(tmp_path):
    from psrl.config import ConfigError
    from psrl.reward_model.reward_model_config import load_reward_model_config

    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {path: tiny}\n")
    with pytest.raises(ConfigError, match="data.train is required"):
        load_reward_model_config(cfg)
    cfg.write_text("data: {train: x.jsonl}\ntrain: {first_token_weight: 1.5}\n")
    with pytest.raises(ConfigError, match=r"first_token_weight must be in \[0, 1\], got 1.5"):
        load_reward_model_config(cfg)
    cfg.write_text("data: {train: x.jsonl}\ntrain: {lr_schedule: cosine}\n")
    with pytest.raises(ConfigError, match="unknown config key 'train.lr_schedule'"):
        load_reward_model_config(cfg)


# ---------------------------------------------------------------------------------------------- eval
def _colour(path, rgb):
    Image.new("RGB", (40, 40), rgb).save(path)


def _ranking_bench(root):
    """3 items: a reference and 4 candidates ranked by colour distance; the third misses a candidate."""
    lines = []
    for i in range(3):
        _colour(root / f"ref{i}.png", (200, 20, 20))
        cands = []
        for k, rgb in enumerate([(200, 20, 20), (150, 60, 20), (90, 90, 90), (20, 20, 200)]):
            _colour(root / f"c{i}{k}.png", rgb)
            cands.append(f"c{i}{k}.png")
        if i == 2:
            cands[3] = "missing.png"
        lines.append({"id": f"item{i}", "reference": f"ref{i}.png", "prompt": "a red ball", "candidates": cands,
                      "human_rank": [0, 1, 2, 3]})
    (root / "rank.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n{oops\n")
    return root / "rank.jsonl"


@pytest.mark.e2e
def test_eval_ranking_benchmark_with_any_reward_resumes_and_reports(tiny_run, tmp_path, capsys):
    from psrl.cli.main import main
    from psrl.reward_model.eval import read_results

    bench = _ranking_bench(tmp_path)
    out = tmp_path / "ev"
    args = ["reward-model", "eval", "--bench", str(bench), "--reward", "vlm_consistency", "--name", "tiny-rm",
            "--args", json.dumps({"path": "tiny", "adapter_path": str(tiny_run / "adapter"), "template": "v3"}),
            "--out", str(out)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "tiny-rm [paco]: accuracy" in text and "2/3 items scored, 1 unscorable" in text
    assert f"{bench}:4: not valid JSON" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["paco"]["n_items"] == 2 and summary["unscorable"] == 1
    report = (out / "report.md").read_text()
    assert "| **tiny-rm** (tau/rho over orderings, as published) |" in report
    assert "| PaCo-Reward-7B (published) | 0.449 | 0.250 | 0.288 | 0.557 |" in report
    rows = read_results(out / "results.jsonl")
    assert len(rows) == 3 and rows[2]["failure"].startswith("image missing.png")
    assert main(args) == 0                                   # a rerun scores nothing again
    assert len(read_results(out / "results.jsonl")) == 3
    capsys.readouterr()
    clip = ["reward-model", "eval", "--bench", str(bench), "--reward", "clip_i", "--args", '{"path": "tiny"}',
            "--out", str(tmp_path / "clip"), "--limit", "2"]
    assert main(clip) == 0
    assert json.loads((tmp_path / "clip" / "summary.json").read_text())["ranks"]["n_items"] == 2
    # every item unscorable (clip_t-less reward on prompt-only items): nothing measured, exit 1
    bad = tmp_path / "noref.jsonl"
    bad.write_text(json.dumps({"id": "x", "candidates": ["c00.png", "c01.png"], "human_rank": [0, 1]}) + "\n")
    assert main(["reward-model", "eval", "--bench", str(bad), "--reward", "clip_i", "--args", '{"path": "tiny"}',
                 "--out", str(tmp_path / "none")]) == 1
    assert "record has no reference subjects" in capsys.readouterr().out


@pytest.mark.component
def test_consistency_rank_bench_folder_and_pairwise_benchmarks(tmp_path):
    from psrl.reward_model.eval import evaluate, load_benchmark
    from psrl.rewards.base import build_reward

    folder = tmp_path / "ConsistencyRank-Bench"
    (folder / "images" / "0001").mkdir(parents=True)
    for name, rgb in {"0_0.png": (200, 20, 20), "1_0.png": (190, 30, 20), "2_0.png": (20, 20, 200),
                      "0_1.png": (90, 90, 90)}.items():
        _colour(folder / "images" / "0001" / name, rgb)
    (folder / "prompt_data.jsonl").write_text(json.dumps({"idx": "0001", "prompt": "a red ball"}) + "\n")
    item = {"folder": "0001", "ref_image": "0_1.png", "comp_images": ["0_0.png", "1_0.png", "2_0.png"],
            "rank_images": ["2_0.png", "0_0.png", "1_0.png"]}
    (folder / "consistency_full_rank.jsonl").write_text(json.dumps(item) + "\n" + json.dumps({"folder": "x"}) + "\n")
    bench = load_benchmark(folder)
    assert bench.kind == "ranking" and len(bench.items) == 1 and len(bench.problems) == 1
    it = bench.items[0]
    assert it.human_rank == (1, 2, 0) and it.reference == "images/0001/0_1.png" and it.prompt == "a red ball"
    summary = evaluate(bench, build_reward("clip_i", {"path": "tiny"}), tmp_path / "o1")
    assert summary["paco"]["n_items"] == 1 and summary["candidates"] == 3

    pairs = tmp_path / "edit.jsonl"
    im = "ConsistencyRank-Bench/images/0001"
    rows = [{"id": f"p{i}", "reference": f"{im}/0_0.png", "prompt": "make it red", "group": g,
             "chosen": f"{im}/1_0.png", "rejected": f"{im}/2_0.png"} for i, g in enumerate("aab")]
    pairs.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    bench = load_benchmark(pairs)
    assert bench.kind == "pairwise" and bench.root == tmp_path
    summary = evaluate(bench, build_reward("clip_i", {"path": "tiny"}), tmp_path / "o2")
    assert set(summary["strict"]) >= {"accuracy", "group/a", "group/b"} and summary["unscorable"] == 0
    assert "EditScore-7B" in (tmp_path / "o2" / "report.md").read_text()
