"""benchmarks/reward_model_throughput.py still runs against the library (smallest settings, CPU). Its figures are
not checked: performance is reported by running the script (benchmarks/README.md), never asserted by a test."""
import runpy
import sys
from pathlib import Path

import pytest

pytest.importorskip("diffusers")  # the script reuses grpo_iteration.measure, whose module imports diffusers

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.component
def test_reward_model_throughput_script_runs(monkeypatch, capsys):
    args = ["--shape", "small", "--steps", "1", "--batch", "1", "--image-size", "32", "--reply-tokens", "8",
            "--lora-rank", "4"]
    monkeypatch.setattr(sys, "argv", ["reward_model_throughput.py", *args])
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    with pytest.raises(SystemExit) as exc:
        runpy.run_path(str(BENCHMARKS / "reward_model_throughput.py"), run_name="__main__")
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "ratio psrl/transformers" in out and "| psrl (weighted first-token, reply logits) |" in out
