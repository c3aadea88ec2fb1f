"""Seconds and peak memory per phase (rollout, reward, train) of one GRPO iteration of psrl's trainer.

The policy is the random "small" FLUX of ``rollout_overhead.py`` (256 px) with a LoRA, driven by the real
``GRPOTrainer`` and the ``mean_color`` reward. The first iteration warms up; the next ones are measured.
Peak memory: CUDA ``max_memory_allocated`` per phase on a GPU; on the CPU the peak resident set size sampled
during the phase (minus the RSS before it, i.e. what the phase added).

    python benchmarks/grpo_iteration.py                               # CPU, fp32
    python benchmarks/grpo_iteration.py --device cuda --dtype bfloat16 --group-size 8 --groups 4 --batch 8
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rollout_overhead import small_flux_components  # noqa: E402


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextmanager
def measure(name: str, device: torch.device, results: dict):
    """Time a phase and record its peak memory (CUDA allocator, or sampled RSS on the CPU)."""
    peak = {"rss": _rss()}
    base = peak["rss"]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak["rss"] = max(peak["rss"], _rss())
            time.sleep(0.005)

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    try:
        yield
    finally:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        stop.set()
        thread.join()
        if device.type == "cuda":
            mem = torch.cuda.max_memory_allocated(device)
        else:
            mem = max(peak["rss"], _rss()) - base
        results.setdefault(name, []).append((seconds, mem))


def instrument(trainer, device, results) -> None:
    """Wrap the trainer's three phases with :func:`measure` (no change to what they do)."""
    for phase, attr in (("rollout", "_rollout"), ("reward", "_score"), ("train", "_update")):
        original = getattr(trainer, attr)

        def wrapped(*a, _orig=original, _phase=phase, **k):
            with measure(_phase, device, results):
                return _orig(*a, **k)

        setattr(trainer, attr, wrapped)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--groups", type=int, default=2, help="prompts per iteration")
    p.add_argument("--group-size", type=int, default=4)
    p.add_argument("--batch", type=int, default=4, help="sample and train batch size")
    p.add_argument("--steps", type=int, default=6, help="denoising steps (all but the last are trained)")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--lora-rank", type=int, default=32)
    p.add_argument("--iterations", type=int, default=2, help="measured iterations after one warm-up")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from psrl.models.config import LoraConfig, ModelConfig
    from psrl.models.flux import FluxPolicy
    from psrl.rl.run_config import load_run_config
    from psrl.rl.grpo_trainer import GRPOTrainer

    device = torch.device(args.device)
    out = tempfile.mkdtemp(prefix="psrl-bench-")
    cfg = load_run_config(None, [
        f"run.output_dir={out}", "run.name=bench", f"train.max_steps={args.iterations + 1}",
        f"train.groups_per_step={args.groups}", f"train.group_size={args.group_size}",
        f"train.sample_batch_size={args.batch}", f"train.train_batch_size={args.batch}", "train.lr=1e-4",
        "train.clip_range=1e-4", f"train.device={device.type}", f"sampling.num_steps={args.steps}",
        f"sampling.height={args.size}", f"sampling.width={args.size}", "sampling.noise_level=0.7",
        "eval.every=0", f"train.save_every={10**6}",
        f"train.mixed_precision={'bf16' if args.dtype == 'bfloat16' else 'no'}"])
    lora = LoraConfig(rank=args.lora_rank, alpha=2 * args.lora_rank, targets="attn", init="gaussian")
    model_cfg = ModelConfig(lora=lora, dtype=args.dtype, max_sequence_length=64,
                            gradient_checkpointing=args.gradient_checkpointing)
    policy = FluxPolicy(small_flux_components(), model_cfg, device)
    trainer = GRPOTrainer(cfg, policy=policy)
    trainer.save = lambda step: None  # measure the iteration, not checkpoint I/O
    results: dict = {}
    instrument(trainer, device, results)
    trainer.train()
    n_lora = sum(p.numel() for p in trainer.params)
    print(f"device={device} dtype={args.dtype} images/iteration={args.groups * args.group_size} batch={args.batch} "
          f"steps={args.steps} (trained {args.steps - 1}) size={args.size} LoRA rank {args.lora_rank} "
          f"({n_lora / 1e6:.2f}M params) measured iterations={args.iterations}")
    memory = "peak CUDA allocated" if device.type == "cuda" else "peak RSS added"
    total = 0.0
    for phase in ("rollout", "reward", "train"):
        measured = results[phase][1:]  # drop the warm-up iteration
        sec = sum(s for s, _ in measured) / len(measured)
        mem = max(m for _, m in measured)
        total += sec
        print(f"{phase:>8}: {sec:8.3f} s   {memory} {mem / 2**20:9.1f} MiB")
    print(f"   total: {total:8.3f} s per iteration")


if __name__ == "__main__":
    main()
