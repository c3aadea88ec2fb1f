"""The scripts in benchmarks/ still run against the current library (smallest settings, CPU). Their figures are
not checked here: performance is reported by running the scripts, never asserted by timed tests."""
import runpy
import sys
from pathlib import Path

import pytest

pytest.importorskip("diffusers")

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = {
    "rollout_overhead.py": (["--batch", "1", "--steps", "2", "--size", "64", "--repeats", "1"],
                            "ratio psrl/diffusers"),
    "grpo_iteration.py": (["--groups", "1", "--group-size", "2", "--batch", "2", "--steps", "2", "--size", "64",
                           "--iterations", "1"], "per iteration"),
    "reference_cost.py": (["--steps", "2", "--group", "2", "--size", "32"], "speedup of half resolution"),
    "reward_throughput.py": (["--size", "tiny", "--group", "2"], "max |score difference|"),
    "bench_eval_throughput.py": (["--samples", "4", "--batch-size", "2", "--size", "32"], "ratio batched"),
    "reward_model_throughput.py": (["--shape", "small", "--steps", "1", "--image-size", "64", "--reply-tokens", "8",
                                    "--batch", "1", "--lora-rank", "4"], "ratio psrl/transformers"),
    "kontext_memory.py": (["--shape", "small", "--dtype", "float32", "--size", "64", "--steps", "2", "--refs", "2",
                           "--group-size", "2", "--batch", "2", "--lora-rank", "4", "--max-sequence-length", "16"],
                          "peak RSS added"),
    "time_to_reward.py": (["--seeds", "1", "--max-steps", "1", "--variants", "ppo,nft", "--eval-repeats", "1"],
                          "ratio to ppo"),
    "world_throughput.py": (["--scenes", "7"], "ratio to PNG"),
    "pocket_learning.py": (["--out", "{tmp}", "--steps", "1", "--seeds", "0", "--rewards", "mean_color",
                            "--num", "4", "--bench-per-subset", "1"], "baseline = the generator without LoRA"),
}


@pytest.mark.unit
def test_every_benchmark_script_is_covered():
    assert {p.name for p in BENCHMARKS.glob("*.py")} == set(SCRIPTS)


@pytest.mark.e2e
@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_benchmark_script_runs(script, monkeypatch, capsys, tmp_path):
    args, expected = SCRIPTS[script]
    monkeypatch.setattr(sys, "argv", [script, *(a.format(tmp=tmp_path / "out") for a in args)])
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    try:
        runpy.run_path(str(BENCHMARKS / script), run_name="__main__")
    except SystemExit as exc:  # scripts that end with sys.exit(main())
        assert exc.code in (0, None), exc.code
    assert expected in capsys.readouterr().out
