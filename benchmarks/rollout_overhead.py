"""Time psrl's SDE rollout (all latents + per-step log-probs) against diffusers ``FluxPipeline.__call__``.

Both run on the *same* random "small" FLUX (a few double and single blocks, 16 latent channels, an 8x VAE, 256 px),
with the same prompts, steps, batch and seed, in one process, alternating, after a warm-up. The ratio
``psrl / diffusers`` is the overhead of sampling with log-probs (target <= 1.05).

    python benchmarks/rollout_overhead.py                         # CPU, fp32
    python benchmarks/rollout_overhead.py --device cuda --dtype bfloat16 --batch 8 --steps 10
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch


def small_flux_components(seed: int = 0, *, double: int = 2, single: int = 4, heads: int = 4, head_dim: int = 64,
                          vae_channels: int = 32) -> dict:
    """Random FLUX-shaped components: FLUX's latent layout (16 channels, 2x2 packing -> 64), an 8x VAE, the
    transformer with ``double`` + ``single`` blocks of width ``heads * head_dim``, tiny CLIP/T5 text encoders."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel

    from psrl.models.tiny import (tiny_clip_text_encoder, tiny_clip_tokenizer, tiny_flux_scheduler,
                                  tiny_t5_encoder, tiny_t5_tokenizer)

    tokenizer, tokenizer_2 = tiny_clip_tokenizer(), tiny_t5_tokenizer()
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=double, num_single_layers=single, attention_head_dim=head_dim,
        num_attention_heads=heads, joint_attention_dim=32, pooled_projection_dim=32,
        axes_dims_rope=[head_dim // 4, 3 * head_dim // 8, 3 * head_dim // 8], guidance_embeds=True).eval()
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(vae_channels,) * 4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1,
        norm_num_groups=min(32, vae_channels), use_quant_conv=False, use_post_quant_conv=False,
        shift_factor=0.1159, scaling_factor=0.3611).eval()
    return dict(scheduler=tiny_flux_scheduler(), vae=vae, transformer=transformer,
                text_encoder=tiny_clip_text_encoder(tokenizer, seed), tokenizer=tokenizer,
                text_encoder_2=tiny_t5_encoder(tokenizer_2, seed), tokenizer_2=tokenizer_2)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--noise-level", type=float, default=0.7)
    p.add_argument("--max-sequence-length", type=int, default=64)
    p.add_argument("--double", type=int, default=2, help="double-stream blocks")
    p.add_argument("--single", type=int, default=4, help="single-stream blocks")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from diffusers import FluxPipeline

    from psrl.data.records import Record
    from psrl.models.config import ModelConfig
    from psrl.sampling import SamplingConfig
    from psrl.models.flux import FluxPolicy

    device = torch.device(args.device)
    components = small_flux_components(double=args.double, single=args.single)
    # the policy converts and moves the shared modules; the pipeline then runs the very same weights
    policy = FluxPolicy(components, ModelConfig(lora=None, dtype=args.dtype,
                                                max_sequence_length=args.max_sequence_length), device)
    pipe = FluxPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    prompts = [f"a photo of object {i}" for i in range(args.batch)]
    records = [Record(id=str(i), prompt=t) for i, t in enumerate(prompts)]
    sampling = SamplingConfig(num_steps=args.steps, height=args.size, width=args.size, guidance_scale=3.5,
                              noise_level=args.noise_level)

    def run_psrl():
        gens = [torch.Generator().manual_seed(i) for i in range(args.batch)]
        return policy.rollout(records, sampling, generator=gens).images

    def run_diffusers():
        gens = [torch.Generator().manual_seed(i) for i in range(args.batch)]
        return pipe(prompt=prompts, num_inference_steps=args.steps, height=args.size, width=args.size,
                    guidance_scale=3.5, max_sequence_length=args.max_sequence_length, generator=gens,
                    output_type="pt").images

    times = {"psrl": [], "diffusers": []}
    with torch.inference_mode():
        for fn in (run_psrl, run_diffusers):  # warm-up (allocator, kernels)
            fn()
        _sync(device)
        for _ in range(args.repeats):
            for name, fn in (("psrl", run_psrl), ("diffusers", run_diffusers)):
                _sync(device)
                t0 = time.perf_counter()
                fn()
                _sync(device)
                times[name].append(time.perf_counter() - t0)
    n_params = sum(p.numel() for p in components["transformer"].parameters())
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"device={device} dtype={args.dtype} batch={args.batch} steps={args.steps} size={args.size} "
          f"transformer={args.double}+{args.single} blocks ({n_params / 1e6:.1f}M params) repeats={args.repeats}")
    for k in ("diffusers", "psrl"):
        print(f"{k:>10}: median {med[k]:.4f} s  (min {min(times[k]):.4f}, max {max(times[k]):.4f})")
    print(f"ratio psrl/diffusers = {med['psrl'] / med['diffusers']:.3f}  (target <= 1.05; ratio of the minimums "
          f"{min(times['psrl']) / min(times['diffusers']):.3f})")


if __name__ == "__main__":
    main()
