"""Cost of reference conditioning and of resolution-decoupled training for the FLUX.1-Kontext policy.

1. Seconds per rollout step against the number of references (0..4) at a fixed output size: 0 is the plain FLUX
   policy on the same components, 1..4 the Kontext policy (references appended to the token sequence; resized by
   the UNO rule scaled to the output size: long side = size for one reference, 0.625 * size for several).
2. Speedup of one training iteration (rollout of a group + log-prob/backward over the trained steps) at half the
   resolution against full resolution (PaCo's resolution-decoupled training; references scale with the size).

One run each, after one warm-up; ratios are printed. Random weights (no download):

    python benchmarks/reference_cost.py                       # tiny components, CPU
    python benchmarks/reference_cost.py --model small --size 64 --device cuda

``--model tiny`` is the 68k-parameter test transformer (dominated by overhead); ``small`` is a wider/deeper random
FLUX transformer (2 double + 4 single blocks, width 256) whose cost is dominated by attention and linear layers,
which is what the ratios are about.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def build_components(model: str, seed: int = 0) -> dict:
    from diffusers import FluxTransformer2DModel

    from psrl.models.tiny import tiny_flux_components

    comps = tiny_flux_components(seed, guidance_embeds=True)
    if model == "small":
        torch.manual_seed(seed)
        comps["transformer"] = FluxTransformer2DModel(
            patch_size=1, in_channels=4, num_layers=2, num_single_layers=4, attention_head_dim=64,
            num_attention_heads=4, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[16, 24, 24],
            guidance_embeds=True).eval()
    elif model != "tiny":
        raise SystemExit(f"--model must be tiny or small, got {model!r}")
    return comps


def make_references(root: Path, n: int) -> list[str]:
    rng = np.random.default_rng(0)
    names = []
    for i in range(n):
        name = f"ref{i}.png"
        Image.fromarray(rng.integers(0, 256, (96, 80 + 8 * i, 3), dtype=np.uint8)).save(root / name)
        names.append(name)
    return names


def kontext_policy(model: str, device: str, size: int, rank: int):
    from psrl.models.config import LoraConfig, ModelConfig
    from psrl.models.flux_kontext import FluxKontextPolicy

    multiple = 2  # tiny VAE: scale 1 x 2x2 packing
    args = {"reference_long_side_single": size, "reference_multiple": multiple,
            "reference_long_side_multi": max(multiple, int(size * 0.625) // 2 * 2)}
    cfg = ModelConfig(name="flux_kontext", lora=LoraConfig(rank=rank, alpha=rank), max_sequence_length=32, args=args)
    return FluxKontextPolicy(build_components(model), cfg, device)


def flux_policy(model: str, device: str, rank: int):
    from psrl.models.config import LoraConfig, ModelConfig
    from psrl.models.flux import FluxPolicy

    return FluxPolicy(build_components(model), ModelConfig(lora=LoraConfig(rank=rank, alpha=rank),
                                                           max_sequence_length=32), device)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_rollout(policy, records, sampling, device: str) -> float:
    """Seconds per denoising step of one rollout of ``records`` (after a warm-up run)."""
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(len(records))]  # noqa: E731
    policy.rollout(records, sampling, gens())
    _sync(device)
    t0 = time.perf_counter()
    policy.rollout(records, sampling, gens())
    _sync(device)
    return (time.perf_counter() - t0) / sampling.num_steps


def time_iteration(policy, records, sampling, device: str) -> float:
    """Seconds of one GRPO-shaped iteration: a rollout, then log-prob + backward on every trained step."""
    def once():
        ro = policy.rollout(records, sampling, [torch.Generator().manual_seed(i) for i in range(len(records))])
        policy.train(True)
        for step in ro.trained_steps:
            policy.log_prob(ro, step).log_prob.mean().backward()
        policy.train(False)

    once()
    _sync(device)
    t0 = time.perf_counter()
    once()
    _sync(device)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--model", default="tiny", choices=["tiny", "small"])
    p.add_argument("--size", type=int, default=32, help="output size in pixels (full resolution)")
    p.add_argument("--steps", type=int, default=4, help="denoising steps per rollout")
    p.add_argument("--group", type=int, default=2, help="images per rollout (one record repeated)")
    p.add_argument("--rank", type=int, default=4, help="LoRA rank")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from psrl.data.records import Record, SubjectRef, resolve_records
    from psrl.sampling import SamplingConfig

    print(f"device {args.device}, model {args.model}, {args.size}x{args.size}, {args.steps} steps, group "
          f"{args.group}, LoRA r{args.rank}, torch threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        names = make_references(root, 4)
        sampling = SamplingConfig(num_steps=args.steps, height=args.size, width=args.size, guidance_scale=2.5,
                                  noise_level=0.9)
        prompt = "the dog next to the cat"
        print("\n1. seconds per rollout step vs number of references")
        base = flux_policy(args.model, args.device, args.rank)
        per_step = {0: time_rollout(base, [Record(id="r0", prompt=prompt)] * args.group, sampling, args.device)}
        kontext = kontext_policy(args.model, args.device, args.size, args.rank)
        for n in range(1, 5):
            subjects = tuple(SubjectRef(image=x, phrase="s") for x in names[:n])
            rec = resolve_records([Record(id=f"r{n}", prompt=prompt, subjects=subjects)], root)[0]
            tokens = int(kontext.encode_conditions([rec], sampling)["ref_len"][0])
            per_step[n] = time_rollout(kontext, [rec] * args.group, sampling, args.device)
            per_step[f"tokens{n}"] = tokens
        target_tokens = (args.size // 2) ** 2
        print(f"  refs  ref tokens  s/step   x vs 0 refs   (target tokens {target_tokens})")
        for n in range(5):
            tok = per_step.get(f"tokens{n}", 0)
            print(f"  {n:>4}  {tok:>10}  {per_step[n]:.4f}  {per_step[n] / per_step[0]:>11.2f}")

        print("\n2. one training iteration, half vs full resolution (1 reference, scaled with the size)")
        rec = resolve_records([Record(id="r1", prompt=prompt, subjects=(SubjectRef(image=names[0], phrase="s"),))],
                              root)[0]
        times = {}
        for size in (args.size, args.size // 2):
            pol = kontext_policy(args.model, args.device, size, args.rank)
            s = SamplingConfig(num_steps=args.steps, height=size, width=size, guidance_scale=2.5, noise_level=0.9)
            times[size] = time_iteration(pol, [rec] * args.group, s, args.device)
            print(f"  {size}x{size}: {times[size]:.3f} s per iteration")
        print(f"  speedup of half resolution: {times[args.size] / times[args.size // 2]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
