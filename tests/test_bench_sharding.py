"""Two CPU processes (torchrun, gloo): generate and eval shard the samples and merge to the single-process result."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from fixtures_bench import make_psrbench, metric_set_for_tests
from launch import ACCELERATE_2

from psrl.sharding import Shard

TESTS = Path(__file__).parent
SRC = TESTS.parent / "src"


@pytest.mark.unit
def test_shard_take_partitions_items():
    items = list(range(11))
    parts = [Shard(r, 3).take(items) for r in range(3)]
    assert parts == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8]]
    assert sorted(x for p in parts for x in p) == items
    with pytest.raises(ValueError):
        Shard(2, 2)


LAUNCHERS = {
    "torchrun": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"],
    "accelerate": ACCELERATE_2,
    None: [sys.executable],
}


def _bench(args, env, launcher):
    launcher = LAUNCHERS[launcher]
    done = subprocess.run([*launcher, "-m", "psrl", "bench", *args], env=env, capture_output=True, text=True,
                          check=False, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.e2e
def test_two_processes_match_one(tmp_path):
    root = make_psrbench(tmp_path / "data", bad=False, per_subset=1)
    cfg = tmp_path / "policy.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"name": "fixtures_bench:ColorPolicy"}}))
    metrics = tmp_path / "metrics.yaml"
    metrics.write_text(yaml.safe_dump({"metrics": metric_set_for_tests()}))
    env = dict(os.environ, PYTHONPATH=f"{TESTS}{os.pathsep}{SRC}", OMP_NUM_THREADS="1")
    outs = {}
    for nproc in (1, 2):
        out = tmp_path / f"out{nproc}"
        gen = _bench(["generate", "--config", str(cfg), "--data-root", str(root), "--out", str(out), "--seeds", "0",
                      "3", "--batch-size", "2", "--relative-paths"], env, "torchrun" if nproc == 2 else None)
        assert "generated 14 image(s)" in gen.stdout  # counts summed over the ranks, printed once
        ev = _bench(["eval", "--results", str(out), "--metrics", str(metrics), "--batch-size", "3", "--no-report"],
                    env, "accelerate" if nproc == 2 else None)
        assert ev.stdout.count("scored 14 sample(s)") == 1
        outs[nproc] = out
    one, two = outs[1], outs[2]
    for seed in (0, 3):
        for subset in ("Attribute", "Four"):
            assert json.loads((one / f"seed{seed}" / f"{subset}.json").read_text()) == \
                json.loads((two / f"seed{seed}" / f"{subset}.json").read_text())  # relative result paths
            assert (one / f"seed{seed}" / subset / "0.png").read_bytes() == \
                (two / f"seed{seed}" / subset / "0.png").read_bytes()
    rows1 = [json.loads(x) for x in (one / "eval" / "samples.jsonl").read_text().splitlines()]
    rows2 = [json.loads(x) for x in (two / "eval" / "samples.jsonl").read_text().splitlines()]
    assert len(rows1) == len(rows2) == 14 and not list((two / "eval").glob("samples.part*"))
    def strip(r):
        return {k: v for k, v in r.items() if k != "image"}

    assert [strip(r) for r in rows1] == [strip(r) for r in rows2]
