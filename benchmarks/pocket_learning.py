"""Which rewards GRPO learns on the pocket world in CPU minutes: PocketBench before and after, reward by reward.

For each reward and seed: ``psrl train`` with the embedded demo's recipe (``psrl/configs/pocket_world.yaml``) and
that reward, on ``psrl world make`` training records (training subjects), then ``psrl bench generate`` + ``psrl bench
eval --benchmark pocket`` with the run's LoRA on PocketBench (held-out subjects, seven subsets). The baseline, named
``generator``, is the same benchmark run on the generator without a LoRA, in the same invocation. Optionally
``psrl diagnose`` first, for its signal/noise verdict on each reward's gradients.

Prints one row per reward: the run's own held-out eval reward at step 0 and at the end, and PocketBench's four
dimensions (SC gain is subject consistency minus its reference-swap control; mean +- std over seeds), each beside its
change from the baseline. Everything goes through the CLI, exactly as a user runs it. CPU minutes: about
(steps x 7 s + 40 s) per reward and seed on an idle 2-core machine.

    python benchmarks/pocket_learning.py --out /tmp/pl --seeds 0 1 2 \
        --rewards mean_color pocket_subjects:identity_dense pocket_subjects:fidelity --diagnose
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from psrl.bench.tasks import POCKET_DIMENSIONS as DIMS  # SC, SA, Fidelity, SC gain

DEMO = Path(__file__).resolve().parents[1] / "src" / "psrl" / "configs" / "pocket_world.yaml"


def psrl(*args: str, log: Path) -> str:
    """Run ``python -m psrl ARGS``; its output goes to ``log``; a failure raises with the log's tail."""
    proc = subprocess.run([sys.executable, "-m", "psrl", *args], capture_output=True, text=True)
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode:
        raise SystemExit(f"psrl {' '.join(args)} failed ({proc.returncode}); see {log}:\n{proc.stderr[-2000:]}")
    return proc.stdout


def reward_specs(text: str) -> list[dict]:
    """``name`` or ``name:score`` (the ``score`` argument of ``pocket_subjects``), several joined by ``+`` (summed
    with weight 1) -> ``rewards`` entries."""
    specs = []
    for part in text.split("+"):
        name, _, score = part.partition(":")
        spec = {"name": name, "weight": 1.0, "args": {"score": score} if score else {}}
        if name == "mean_color":
            spec["args"] = {"target": [0.4, 0.6, 1.0]}  # the demo's target
        specs.append(spec)
    return specs


def run_config(args, specs: list[dict], seed: int, world: Path, out: Path) -> Path:
    """The demo's config with ``specs`` as its rewards, world records, ``seed`` and ``--steps``."""
    cfg = yaml.safe_load(DEMO.read_text())
    cfg["model"]["path"] = str(Path(args.generator).resolve())
    cfg["rewards"] = specs
    cfg["data"] = {"records": str(world / "train.jsonl")}
    cfg["eval"].update(records=str(world / "eval.jsonl"), every=args.steps, at_start=True, statistics=False,
                       rewards=[])  # PocketBench measures the held-out dimensions; a trained reward cannot be one
    cfg["train"].update(seed=seed, max_steps=args.steps, lr=args.lr, beta=args.beta)
    label = "+".join(f"{s['name']}-{s['args'].get('score', 'x')}" for s in specs)
    label += f"-beta{args.beta:g}" if args.beta else ""
    cfg["run"].update(name=f"{label}-s{seed}", output_dir=str(out))
    path = out / f"{cfg['run']['name']}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def bench(args, world: Path, out: Path, lora: Path | None) -> dict[str, float]:
    """PocketBench's overall means with the generator (and ``lora``), ODE at the eval's step count."""
    gen_cfg = out.with_suffix(".gen.yaml")
    cfg = yaml.safe_load(DEMO.read_text())
    gen_cfg.write_text(yaml.safe_dump({"model": {**cfg["model"], "path": str(Path(args.generator).resolve()),
                                                 "lora": None},
                                       "sampling": {**cfg["sampling"], "num_steps": cfg["eval"]["num_steps"],
                                                    "noise_level": 0.0}}))
    gen = ["bench", "generate", "--benchmark", "pocket", "--config", str(gen_cfg), "--data-root",
           str(world / "pocketbench"), "--out", str(out), "--device", "cpu"]
    psrl(*gen, *(["--lora", str(lora)] if lora else []), log=out.with_suffix(".generate.log"))
    psrl("bench", "eval", "--results", str(out), log=out.with_suffix(".eval.log"))
    summary = json.loads((out / "eval" / "summary.json").read_text())
    return {d: float(summary["overall"][d]["mean"]) for d in DIMS}


def eval_reward(run_dir: Path, name: str) -> tuple[float, float]:
    """Reward ``name``'s held-out eval mean at the first and last evaluation (``metrics.jsonl``)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    vals = [r[f"eval/{name}/mean"] for r in rows if f"eval/{name}/mean" in r]
    return (vals[0], vals[-1]) if vals else (math.nan, math.nan)


def verdict(cfg: Path, out: Path, batches: int) -> str:
    text = psrl("diagnose", "--config", str(cfg), "--batches", str(batches), log=out)
    return next((line.strip() for line in text.splitlines() if "verdict" in line.lower()), "no verdict line")


def spread(xs: list[float]) -> str:
    xs = [x for x in xs if math.isfinite(x)]
    if not xs:
        return "nan"
    return f"{statistics.fmean(xs):.3f} +- {statistics.stdev(xs) if len(xs) > 1 else 0.0:.3f}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="a new folder for the world, runs and benchmark results")
    p.add_argument("--generator", default=str(DEMO.parents[1] / "world" / "weights" / "pocket-kontext"))
    p.add_argument("--rewards", nargs="+", default=["mean_color", "pocket_subjects:identity_dense",
                                                    "pocket_subjects:fidelity"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=12, help="GRPO steps per run (12: docs/pocket_world.md's table)")
    p.add_argument("--lr", type=float, default=0.005, help="GRPO learning rate (0.005: docs/pocket_world.md's table)")
    p.add_argument("--beta", type=float, default=0.0, help="train.beta, the KL penalty to the base model (0: none)")
    p.add_argument("--num", type=int, default=256, help="training records to make")
    p.add_argument("--bench-per-subset", type=int, default=20, help="PocketBench entries per subset")
    p.add_argument("--diagnose", type=int, default=0, metavar="BATCHES", help="psrl diagnose batches (0: skip)")
    args = p.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    world = out / "world"
    if not (world / "train.jsonl").is_file():
        psrl("world", "make", "--out", str(world), "--num", str(args.num), "--eval-num", "8",
             "--bench-per-subset", str(args.bench_per_subset), log=out / "world.log")
    t0 = time.perf_counter()
    base = bench(args, world, out / "bench-generator", None)
    print(f"generator (baseline), PocketBench {args.bench_per_subset * 7} entries: "
          + "  ".join(f"{d} {base[d]:.3f}" for d in DIMS), flush=True)
    rows = []
    for text in args.rewards:
        specs = reward_specs(text)
        afters, evals, verdict_line = [], [], ""
        for seed in args.seeds:
            cfg = run_config(args, specs, seed, world, out)
            if args.diagnose and seed == args.seeds[0]:
                verdict_line = verdict(cfg, cfg.with_suffix(".diagnose.log"), args.diagnose)
            run_dir = out / yaml.safe_load(cfg.read_text())["run"]["name"]
            psrl("train", "--config", str(cfg), log=cfg.with_suffix(".train.log"))
            evals.append(eval_reward(run_dir, specs[0]["name"]))  # the first of summed rewards
            afters.append(bench(args, world, out / f"bench-{run_dir.name}", run_dir))
            print(f"  {text} seed {seed}: eval reward {evals[-1][0]:.3f} -> {evals[-1][1]:.3f}; PocketBench "
                  + "  ".join(f"{d} {afters[-1][d]:.3f}" for d in DIMS), flush=True)
        rows.append((text, evals, afters, verdict_line))
    print(f"\n{len(args.seeds)} seed(s), {args.steps} GRPO steps each, beta {args.beta:g}; "
          "baseline = the generator without LoRA; "
          f"{time.perf_counter() - t0:.0f} s")
    print("| trained reward | its (the first's) held-out eval reward, step 0 -> end | "
          + " | ".join(f"{d} (baseline {base[d]:.3f})" for d in DIMS) + " | diagnose |")
    print("|---" * (3 + len(DIMS)) + "|")
    for text, evals, afters, verdict_line in rows:
        cells = [f"{spread([a[d] for a in afters])} ({statistics.fmean(a[d] for a in afters) - base[d]:+.3f})"
                 for d in DIMS]
        print(f"| {text} | {spread([e[0] for e in evals])} -> {spread([e[1] for e in evals])} | "
              + " | ".join(cells) + f" | {verdict_line or '-'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
