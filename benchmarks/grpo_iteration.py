"""Seconds and peak memory per phase (rollout, reward, train) of one GRPO iteration of psrl's trainer.

The policy is the random "small" FLUX of ``rollout_overhead.py`` (256 px) with a LoRA, driven by the real
``GRPOTrainer`` and the ``mean_color`` reward. The first iteration warms up; the next ones are measured.
Peak memory: CUDA ``max_memory_allocated`` per phase on a GPU; on the CPU the peak resident set size sampled
during the phase (minus the RSS before it, i.e. what the phase added). Phase times come from the trainer's own
metrics (``time/rollout``, ``time/reward``: the reward time that did not overlap a rollout, ``time/train``).

Train-phase MFU: the train phase's model FLOPs are counted once, on the warm-up iteration, with
``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions and attention, forward and backward; with
``--gradient-checkpointing`` the recomputed forward is counted too, so the figure is then hardware FLOP
utilisation), divided by the measured mean train time and by the device's dense bf16 peak: the table
:data:`BF16_PEAK_TFLOPS` for known GPUs, ``--peak-tflops`` otherwise. The CPU has no such table; there the achieved
FLOP/s is printed against a large matrix product timed in the same run and dtype (a measured ceiling, not a peak).

``--overlap`` adds a stand-in reward that costs about as much as the rollout (matrix products on the device,
no sleeping, calibrated on the warm-up), and runs the iteration with ``train.async_rewards`` off and on: the step
times and their ratio (sequential / overlapped) are printed.

    python benchmarks/grpo_iteration.py                               # CPU, fp32
    python benchmarks/grpo_iteration.py --threads 1 --overlap         # rewards overlapping rollouts
    python benchmarks/grpo_iteration.py --device cuda --dtype bfloat16 --group-size 8 --groups 4 --batch 8
    python benchmarks/grpo_iteration.py --device cuda --dtype bfloat16 --peak-tflops 700   # a GPU not in the table
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


# Dense (no sparsity) bf16 tensor-core peak in TFLOP/s from NVIDIA's datasheets, matched in order against
# torch.cuda.get_device_name() (so "H100 PCIe" is tested before "H100").
BF16_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("H200", 989.4), ("GH200", 989.4),
    ("B200", 2250.0), ("A100", 312.0), ("L40S", 362.05), ("L4", 121.0), ("A10G", 70.0), ("A10", 125.0),
)


def bf16_peak_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a GPU named ``device_name`` (``torch.cuda.get_device_name``), or ``None``."""
    for key, tflops in BF16_PEAK_TFLOPS:
        if key in device_name:
            return tflops
    return None


def _register_cpu_attention_flops() -> None:
    """torch's FLOP counter knows the CUDA attention kernels but not the CPU flash-attention ones; count them with
    the same SDPA formulas (forward 4*b*h*s_q*s_k*d, backward as torch counts it)."""
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    if aten._scaled_dot_product_flash_attention_for_cpu in fc.flop_registry:
        return

    @fc.register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu)
    def _forward(query, key, value, *args, out_shape=None, **kwargs):
        return fc.sdpa_flop_count(query, key, value)

    @fc.register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu_backward)
    def _backward(grad_out, query, key, value, *args, out_shape=None, **kwargs):
        return fc.sdpa_backward_flop_count(grad_out, query, key, value)


def matmul_tflops(device, dtype, n: int = 2048, repeats: int = 5) -> float:
    """Measured throughput of an ``n x n`` matrix product in ``dtype`` on ``device`` (best of ``repeats``), TFLOP/s:
    the same-run ceiling the CPU's train-phase FLOP/s is compared with."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        (a @ a).sum().item()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e12


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


def instrument(trainer, device, results, *, count_flops: bool = True) -> None:
    """Wrap the trainer's two phases with :func:`measure` (no change to what they do): rollout with its rewards
    (which may overlap), and the update. With ``count_flops`` the first (warm-up) update also runs under a FLOP
    counter: ``results["train_flops"]``."""
    from torch.utils.flop_counter import FlopCounterMode

    _register_cpu_attention_flops()
    for phase, attr in (("rollout+reward", "_rollout_and_score"), ("train", "_update")):
        original = getattr(trainer, attr)

        def wrapped(*a, _orig=original, _phase=phase, **k):
            with measure(_phase, device, results):
                if _phase != "train" or "train_flops" in results or not count_flops:
                    return _orig(*a, **k)
                with FlopCounterMode(display=False) as counter:  # warm-up only: it slows what it counts
                    out = _orig(*a, **k)
                results["train_flops"] = counter.get_total_flops()
                return out

        setattr(trainer, attr, wrapped)


class BusyReward:
    """A CPU/GPU-bound stand-in for a heavy reward model: ``iters`` products of a 256x256 matrix per image batch,
    then the mean blue channel as the score (no sleeping: it competes for the device like a real model)."""

    name = "busy"

    def __init__(self, device, iters: int):
        self.iters = iters
        self.m = torch.randn(256, 256, device=device) / 16

    @torch.no_grad()
    def __call__(self, images, records):
        from psrl.rewards.base import RewardOutput

        x = self.m
        for _ in range(self.iters):
            x = torch.tanh(x @ self.m)
        scores = images[:, 2].float().mean(dim=(1, 2)).cpu() + 0 * float(x[0, 0])
        return RewardOutput(scores=scores, failures=[None] * len(records))


def _calibrate(device, seconds: float) -> int:
    """Matrix-product iterations that take about ``seconds`` on ``device``."""
    r = BusyReward(device, 50)
    images = torch.rand(1, 3, 8, 8)
    t0 = time.perf_counter()
    r(images, [None])
    per = (time.perf_counter() - t0) / 50
    return max(1, int(seconds / per))


def build(args, device, async_rewards: bool, extra_reward=None):
    from psrl.models.config import LoraConfig, ModelConfig
    from psrl.models.flux import FluxPolicy
    from psrl.rl.grpo_trainer import GRPOTrainer
    from psrl.rl.run_config import load_run_config

    out = tempfile.mkdtemp(prefix="psrl-bench-")
    cfg = load_run_config(None, [
        f"run.output_dir={out}", "run.name=bench", f"train.max_steps={args.iterations + 1}",
        f"train.groups_per_step={args.groups}", f"train.group_size={args.group_size}",
        f"train.sample_batch_size={args.batch}", f"train.train_batch_size={args.batch}", "train.lr=1e-4",
        "train.clip_range=1e-4", f"train.device={device.type}", f"sampling.num_steps={args.steps}",
        f"sampling.height={args.size}", f"sampling.width={args.size}", "sampling.noise_level=0.7",
        "eval.every=0", f"train.save_every={10**6}", f"train.async_rewards={str(async_rewards).lower()}",
        f"train.mixed_precision={'bf16' if args.dtype == 'bfloat16' else 'no'}"])
    lora = LoraConfig(rank=args.lora_rank, alpha=2 * args.lora_rank, targets="attn", init="gaussian")
    model_cfg = ModelConfig(lora=lora, dtype=args.dtype, max_sequence_length=64,
                            gradient_checkpointing=args.gradient_checkpointing)
    policy = FluxPolicy(small_flux_components(), model_cfg, device)
    trainer = GRPOTrainer(cfg, policy=policy)
    trainer.save = lambda step, **k: None  # measure the iteration, not checkpoint I/O
    if extra_reward is not None:
        trainer.rewards[0] = extra_reward
    return trainer


def _mean(history, key):
    measured = history[1:]  # drop the warm-up iteration
    return sum(m[key] for m in measured) / len(measured)


def report_mfu(flops: int, train_s: float, device, args) -> None:
    """Print the train phase's FLOPs, achieved TFLOP/s and MFU (or, on a CPU, the ratio to a same-run matmul)."""
    achieved = flops / train_s / 1e12
    ckpt = " incl. recompute (HFU)" if args.gradient_checkpointing else ""
    print(f"train FLOPs per iteration: {flops / 1e12:.4f} TFLOP{ckpt}; achieved {achieved:.4f} TFLOP/s")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = args.peak_tflops or (bf16_peak_tflops(name) if device.type == "cuda" else None)
    if peak:
        source = "--peak-tflops" if args.peak_tflops else "datasheet"
        print(f"train-phase MFU: {achieved / peak:.2%} of {peak:g} TFLOP/s dense bf16 ({name}, {source})")
    else:
        dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
        ceiling = matmul_tflops(device, dtype)
        print(f"train-phase MFU: n/a (no bf16 peak known for {name}; pass --peak-tflops); achieved / measured "
              f"2048^2 {args.dtype} matmul ({ceiling:.4f} TFLOP/s): {achieved / ceiling:.2%}")


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
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the device's dense bf16 peak for MFU (default: the table for known GPUs)")
    p.add_argument("--overlap", action="store_true",
                   help="compare train.async_rewards off and on with a reward as costly as the rollout")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    trainer = build(args, device, async_rewards=False)
    results: dict = {}
    instrument(trainer, device, results)
    history = trainer.train()
    n_lora = sum(p.numel() for p in trainer.params)
    print(f"device={device} dtype={args.dtype} images/iteration={args.groups * args.group_size} batch={args.batch} "
          f"steps={args.steps} (trained {args.steps - 1}) size={args.size} LoRA rank {args.lora_rank} "
          f"({n_lora / 1e6:.2f}M params) measured iterations={args.iterations}")
    memory = "peak CUDA allocated" if device.type == "cuda" else "peak RSS added"
    for phase, key in (("rollout", "time/rollout"), ("reward", "time/reward"), ("train", "time/train")):
        print(f"{phase:>8}: {_mean(history, key):8.3f} s")
    for phase in ("rollout+reward", "train"):
        print(f"{phase:>15} {memory} {max(m for _, m in results[phase][1:]) / 2**20:9.1f} MiB")
    print(f"   total: {_mean(history, 'time/step'):8.3f} s per iteration")
    report_mfu(results["train_flops"], _mean(history, "time/train"), device, args)
    if args.overlap:
        rollout_s = _mean(history, "time/rollout")
        batches = args.groups * args.group_size // args.batch
        iters = _calibrate(device, rollout_s / batches)
        steps = {}
        for mode in (False, True):
            t = build(args, device, async_rewards=mode, extra_reward=BusyReward(device, iters))
            h = t.train()
            steps[mode] = _mean(h, "time/step")
            print(f"async_rewards={str(mode).lower():5}: step {steps[mode]:7.3f} s  (rollout "
                  f"{_mean(h, 'time/rollout'):.3f} s, reward not overlapped {_mean(h, 'time/reward'):.3f} s, "
                  f"reward busy {_mean(h, 'time/reward_busy'):.3f} s, train {_mean(h, 'time/train'):.3f} s)")
        print(f"overlap speed-up (sequential / async step time): {steps[False] / steps[True]:.2f}x")


if __name__ == "__main__":
    main()
