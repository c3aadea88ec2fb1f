"""``benchmarks/gpu_checks.sh`` cannot run without a GPU; its orchestration can: with a stand-in interpreter that
records each command, every step runs in order with its flags, a failing step is recorded and the next one still
runs, and the exit status says whether any failed."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_checks.sh"


def _fake_python(tmp_path, fail_on: str) -> Path:
    """An interpreter that appends its arguments to calls.txt and fails when they contain ``fail_on``."""
    fake = tmp_path / "fakepython"
    fake.write_text(f"""#!/usr/bin/env bash
echo "$*" >> {tmp_path}/calls.txt
if [[ "$*" == *"{fail_on}"* ]]; then echo "boom: $*"; exit 3; fi
echo "shape=fake rollout+reward: 1 s   train: 2 s   iteration peak: 3 GiB   MFU 1%   ratio 1.0  1 passed"
""")
    fake.chmod(0o755)
    return fake


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash, timeout")
def test_every_step_runs_and_failures_are_recorded(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), PYTHON=str(_fake_python(tmp_path, "--quantization nf4")), BUDGET="120")
    env.pop("PSRL_WHEELS", None)
    run = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=120,
                         cwd=SCRIPT.parents[1])
    assert run.returncode == 1, run.stderr
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    steps = [c for c in calls if c.startswith(("benchmarks/", "-m pytest"))]
    assert [s.split()[0] for s in steps] == ["benchmarks/kontext_memory.py"] * 3 + [
        "benchmarks/rollout_overhead.py", "benchmarks/grpo_iteration.py", "-m"]
    assert "--refs 4 --lora-rank 64 --size 512 --gradient-checkpointing" in steps[0]
    assert "--gradient-checkpointing" not in steps[1]
    assert "--quantization nf4" in steps[2]
    assert "--device cuda --dtype bfloat16" in steps[3] and "--device cuda --dtype bfloat16" in steps[4]
    assert "-m gpu" in steps[5] and "tests/test_quantization.py" in steps[5]
    summary = (out / "summary.txt").read_text()
    assert "[kontext_nf4] FAILED (exit 3)" in summary and "boom" in summary
    assert "[gpu_tests] ok" in summary and "iteration peak" in summary  # the step after the failure still ran
    assert (out / "gpu_checks.log").is_file()
