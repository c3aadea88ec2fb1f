"""``psrl generate``: ODE images for a records file with a run config's policy (optionally a trained LoRA)."""
from __future__ import annotations

import argparse
from pathlib import Path

LORA_HELP = ("LoRA to generate with: a .safetensors file, a folder holding pytorch_lora_weights.safetensors (e.g. "
             "`psrl lora combine` output), a checkpoint runs/<run>/checkpoints/step-N (its lora_ema/ when kept, else "
             "lora/) or a run folder runs/<run> (its newest complete checkpoint). Its own rank and alpha are used; "
             "model.lora.fuse must list what it was trained on (a mismatch is warned about)")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "generate", help="generate images for records (ODE sampling) with a config's policy and an optional LoRA",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  psrl generate --records prompts.jsonl --out out/ --lora runs/tiny_flux/checkpoints/step-12\n"
               "  psrl generate --config configs/flux_grpo.yaml --records bench.jsonl --out imgs --steps 28")
    p.add_argument("--config", help="run config YAML whose model and sampling sections are used (default: embedded)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--records", help="records JSONL, image paths under the config's data.data_root, else its folder "
                                     "(default: the config's eval.records, else data.records, with their roots)")
    p.add_argument("--out", required=True, help="output folder; one <record id>.png per record")
    p.add_argument("--lora", help=LORA_HELP)
    p.add_argument("--steps", type=int, help="denoising steps (default: eval.num_steps)")
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=4)
    p.set_defaults(func=run)


def run(args) -> int:
    import dataclasses

    import torch

    from psrl.data.records import image_filenames
    from psrl.errors import PsrlError
    from psrl.models.lora import lora_config_for_file
    from psrl.rl.distributed import make_accelerator
    from psrl.rl.run_config import load_run_config, run_records
    from psrl.rl.sampler import sample_seed
    from psrl.images import save_image

    cfg = load_run_config(args.config, args.overrides)
    if args.records:  # resolved as the trainer resolves data.records (under data.data_root, else its folder)
        cfg.data.records = args.records
    which = "eval" if cfg.eval.records and not args.records else "data"
    records = run_records(cfg, which)
    if args.batch_size < 1:
        raise PsrlError(f"--batch-size must be >= 1, got {args.batch_size}")
    names = image_filenames(records)  # before any model loads: colliding ids are an error, not an overwrite
    e, s = cfg.eval, cfg.sampling
    sampling = dataclasses.replace(
        s, num_steps=args.steps or e.num_steps, noise_level=0.0,
        height=args.height or e.resolution or e.height or s.height,
        width=args.width or e.resolution or e.width or s.width,
        guidance_scale=e.guidance_scale if e.guidance_scale is not None else s.guidance_scale)
    device = make_accelerator(cfg.train.device).device
    from psrl.models.factory import build_policy

    if args.lora:
        # the adapter takes the file's own shape, so a combined or SFT LoRA loads whatever rank the config trains
        cfg.model.lora, lora = lora_config_for_file(cfg.model.lora, args.lora)
    policy = build_policy(cfg.model, device)
    from psrl.models.checks import check_sampling_size, validate_records

    # every record checked before the first image (subject count, references decode), as psrl train does
    check_sampling_size(policy, sampling, "--height/--width (or the config's sampling size)")
    source = args.records or f"{which}.records"
    records = validate_records(records, policy, source)
    names = image_filenames(records)
    if args.lora:
        policy.load_lora(lora)
    policy.train(False)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(records), args.batch_size):
        batch = records[start:start + args.batch_size]
        gens = [torch.Generator().manual_seed(sample_seed(args.seed, 0, start + i, salt="generate"))
                for i in range(len(batch))]
        with torch.no_grad():
            images = policy.generate(batch, sampling, generator=gens).float().cpu()
        for name, image in zip(names[start:start + args.batch_size], images):
            save_image(image, out / name)
    print(f"wrote {len(records)} images ({sampling.width}x{sampling.height}, {sampling.num_steps} steps) to {out}")
    return 0
