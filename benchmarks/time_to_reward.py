"""Time and images to reach a fixed reward level: Flow-GRPO's PPO against the Flow-GRPO-Fast window, DiffusionNFT
(SDE or ODE rollouts) and low-resolution training, on the embedded default ``psrl train`` config (the tiny random
FLUX, the dense ``mean_color`` "blue" reward).

Every run starts from the same weights (the LoRA's B is zero, so the first policy is the base model) and the seeds
of a seed index are shared by all variants. After each GRPO step the trainer's own evaluation generates the fixed
eval prompts with the ODE at the full resolution (``--size``; low-resolution training is evaluated there too) and
scores them with the reward; a run reaches the level at the first step whose eval reward is at least the initial eval
reward + ``--delta``, and stops there. Per variant: how many seeds reached the level within ``--max-steps``, and the
medians over seeds of GRPO steps, images generated for training, training seconds (rollout + reward + update;
evaluation excluded) and seconds per step, each also as a ratio to ``ppo``'s median. A run that does not reach
the level counts as infinitely slow, so a median over seeds that mostly failed is "not reached".

    python benchmarks/time_to_reward.py --threads 1 --seeds 7          # all variants (~10 min on 1 core)
    python benchmarks/time_to_reward.py --seeds 1 --max-steps 2 --variants ppo,nft   # seconds (smoke test)

Variants (``--set`` overrides on the embedded default; PPO is Flow-GRPO's setting there):
``ppo`` (clip 0.05, SDE noise 0.9, 3 of 4 steps trained), ``fast`` (``sampling.train_steps=fast_window``, one
trained SDE step in the first half, ODE elsewhere), ``nft`` / ``nft_ode`` (``train.loss=nft``, ``nft_beta=0.1``,
SDE / ODE rollouts), ``nft_beta1`` (PaCo's default ``nft_beta=1``), ``lowres`` (PPO trained at half the side,
evaluated at the full one).
"""
from __future__ import annotations

import argparse
import logging
import math
import shutil
import statistics
import tempfile

import torch

VARIANTS: dict[str, list[str]] = {
    "ppo": [],
    "fast": ["sampling.train_steps=fast_window", "sampling.train_k=1"],
    "nft": ["train.loss=nft", "train.nft_beta=0.1"],
    "nft_ode": ["train.loss=nft", "train.nft_beta=0.1", "sampling.noise_level=0"],
    "nft_beta1": ["train.loss=nft", "train.nft_beta=1.0"],
    "lowres": ["LOWRES"],  # replaced by the sampling size --low-size
}


class _Reached(Exception):
    pass


def run_variant(name: str, seed: int, args, out_dir: str, state: dict) -> dict:
    """One training run, stopped at the level; returns its initial eval reward and, per step, (eval reward, training
    seconds). The first run sets ``state["level"]`` from its initial eval reward."""
    from psrl.rl.grpo_trainer import GRPOTrainer
    from psrl.rl.run_config import load_run_config

    overrides = []
    for o in VARIANTS[name]:
        overrides += [f"sampling.height={args.low_size}", f"sampling.width={args.low_size}"] if o == "LOWRES" else [o]
    prompts = load_run_config(None, []).data.records
    cfg = load_run_config(None, [
        f"run.output_dir={out_dir}", f"run.name={name}-{seed}", f"train.seed={seed}",
        f"train.max_steps={args.max_steps}", f"sampling.height={args.size}", f"sampling.width={args.size}",
        "eval.every=1", f"eval.records={list(prompts) * args.eval_repeats}", f"eval.height={args.size}",
        f"eval.width={args.size}", "train.device=cpu", *overrides])
    curve: list[tuple[float, float]] = []

    class Trainer(GRPOTrainer):
        def after_step(self, done: int, metrics: dict) -> None:
            super().after_step(done, metrics)  # the trainer's evaluation (every step here)
            reward = metrics["eval/mean_color/mean"]
            curve.append((reward, metrics["time/step"]))
            if reward >= state["level"]:
                raise _Reached

    trainer = Trainer(cfg)
    trainer.save = lambda *a, **k: None  # time the training, not checkpoint I/O
    initial = trainer.evaluate(0)["eval/mean_color/mean"]
    if state.get("level") is None:
        state["initial"], state["level"] = initial, initial + args.delta
    try:
        trainer.train()
    except _Reached:
        pass
    return {"initial": initial, "curve": curve, "images_per_step": trainer.sizes.images_per_step}


def reach(run: dict, level: float) -> tuple[float, float, float]:
    """(steps, images, training seconds) to the first eval reward >= level; inf when never reached."""
    seconds = 0.0
    for i, (reward, sec) in enumerate(run["curve"], 1):
        seconds += sec
        if reward >= level:
            return float(i), float(i * run["images_per_step"]), seconds
    return math.inf, math.inf, math.inf


def _fmt(x: float, spec: str) -> str:
    return "not reached" if math.isinf(x) else format(x, spec)


def _ratio(x: float, base: float) -> str:
    if math.isinf(x) or math.isinf(base):
        return "n/a"
    return f"{x / base:.2f}"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    p.add_argument("--seeds", type=int, default=3, help="seed indices 0 .. n-1 (train.seed)")
    p.add_argument("--max-steps", type=int, default=40, help="GRPO steps a run may take to reach the level")
    p.add_argument("--delta", type=float, default=0.004,
                   help="the level is the initial eval reward + delta (mean_color; the tiny model's reward moves "
                        "~0.01 in 40 steps)")
    p.add_argument("--size", type=int, default=16, help="training and evaluation size in pixels")
    p.add_argument("--low-size", type=int, default=8, help="training size of the lowres variant")
    p.add_argument("--eval-repeats", type=int, default=2, help="eval images per training prompt")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or "ppo" not in names:
        raise SystemExit(f"--variants must include ppo and name only {', '.join(VARIANTS)}; got {args.variants!r}")
    if args.threads:
        torch.set_num_threads(args.threads)
    psrl_log = logging.getLogger("psrl")
    old_level = psrl_log.level
    psrl_log.setLevel(logging.ERROR)  # the tiny prompts' truncation warnings, once per run
    out_dir = tempfile.mkdtemp(prefix="psrl-ttr-")
    try:
        state: dict = {"level": None}
        results: dict[str, list[tuple[float, float, float]]] = {}
        for seed in range(args.seeds):
            for name in names:
                run = run_variant(name, seed, args, out_dir, state)
                if len(results) == 0:
                    print(f"initial eval reward {state['initial']:.5f}; level {state['level']:.5f} "
                          f"(+{args.delta})")
                if abs(run["initial"] - state["initial"]) > 1e-6:  # LoRA B = 0: every run starts from the base
                    print(f"note: {name} seed {seed} starts at {run['initial']:.5f}, not {state['initial']:.5f}")
                steps, images, sec = reach(run, state["level"])
                per_step = sum(t for _, t in run["curve"]) / max(len(run["curve"]), 1)
                results.setdefault(name, []).append((steps, images, sec, per_step))
                print(f"seed {seed} {name:<10} steps {_fmt(steps, '.0f'):>11}  images {_fmt(images, '.0f'):>11}  "
                      f"train s {_fmt(sec, '.2f'):>11}  ({per_step:.3f} s/step, best eval "
                      f"{max((r for r, _ in run['curve']), default=float('nan')):.5f})", flush=True)
    finally:
        psrl_log.setLevel(old_level)
        shutil.rmtree(out_dir, ignore_errors=True)
    med = {n: tuple(statistics.median(sorted(r[i] for r in results[n])) for i in range(4)) for n in names}
    base = med["ppo"]
    print(f"\nmedians over {args.seeds} seed(s), budget {args.max_steps} steps; ratio to ppo (< 1: fewer / faster)")
    print(f"{'variant':<10} {'reached':>8} {'steps':>11} {'images':>11} {'train s':>11} {'s/step':>7} "
          f"{'x images':>9} {'x time':>7} {'x s/step':>9}")
    for n in names:
        ok = sum(not math.isinf(r[0]) for r in results[n])
        steps, images, sec, per_step = med[n]
        print(f"{n:<10} {ok:>4}/{len(results[n]):<3} {_fmt(steps, '.1f'):>11} {_fmt(images, '.0f'):>11} "
              f"{_fmt(sec, '.2f'):>11} {per_step:>7.3f} {_ratio(images, base[1]):>9} {_ratio(sec, base[2]):>7} "
              f"{_ratio(per_step, base[3]):>9}")


if __name__ == "__main__":
    main()
