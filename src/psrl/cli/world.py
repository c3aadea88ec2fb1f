"""``psrl world``: the pocket world (issue #18), procedurally drawn subjects and scenes small enough to run the
whole PSR loop on a CPU. Each step is a function adding its sub-parser, listed once in :func:`add_parser`."""
from __future__ import annotations

import argparse

EXAMPLES = """examples:
  psrl world make --out data/pocket                       # records, references, PocketBench (seed 0)
  psrl world make --out data/pocket --num 8000 --seed 1
  psrl bench eval --results data/pocket/pocketbench_truth  # PocketBench's ceiling: the ground-truth scenes
  psrl world pretrain --out pocket-kontext --num 6000 --vae-minutes 10 --sft-minutes 40   # the pocket generator
"""

# alike on purpose: a command with sub-steps (as psrl data): the parser, then one sub-parser per step
def add_parser(sub) -> None:
    p = sub.add_parser("world", help="the pocket world: make its data and PocketBench",
                       description=__doc__, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    ws = p.add_subparsers(dest="world_command", metavar="STEP")
    for add_step in (add_make, add_pretrain):
        add_step(ws)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def add_make(ws) -> None:
    m = ws.add_parser("make", help="write records (references + target scenes) and PocketBench into --out")
    m.add_argument("--out", required=True, help="a new (or empty) folder")
    m.add_argument("--num", type=int, default=1000, help="training records (default 1000)")
    m.add_argument("--eval-num", type=int, default=64, help="held-out records with targets (default 64)")
    m.add_argument("--bench-per-subset", type=int, default=20, help="PocketBench entries per subset (default 20)")
    m.add_argument("--seed", type=int, default=0)
    m.set_defaults(func=cmd_make)


def cmd_make(args) -> int:
    from psrl.world.export import WorldSpec, make_world

    summary = make_world(args.out, WorldSpec(num=args.num, eval_num=args.eval_num,
                                             bench_per_subset=args.bench_per_subset, seed=args.seed))
    bench = summary["bench_per_subset"] * len(summary["subsets"])
    print(f"wrote {summary['num']} training and {summary['eval_num']} held-out records, {summary['subjects']} "
          f"references and PocketBench ({bench} entries on {len(summary['held_out_subjects'])} held-out subjects) "
          f"to {args.out}\n  SFT / GRPO data: data.records={args.out}/train.jsonl\n"
          f"  benchmark: psrl bench generate --benchmark pocket --data-root {args.out}/pocketbench ...\n"
          f"  ceiling:   psrl bench eval --results {args.out}/pocketbench_truth")
    return 0


def add_pretrain(ws) -> None:
    from psrl.world.pretrain import PretrainConfig

    d = PretrainConfig()
    m = ws.add_parser("pretrain", help="train the pocket generator (VAE, then the transformer with psrl sft) into "
                                       "a diffusers FluxKontextPipeline folder --out",
                      description="Stage 1 trains the AutoencoderKL on the records' images; stage 2 trains the "
                                  "FluxTransformer2DModel in full with psrl sft (model.lora: null, EMA). Writes "
                                  "fp16 safetensors, README.md (model card) and pretrain.json into --out; work "
                                  "files (the world data, the SFT run) go to --out/.work.")
    m.add_argument("--out", required=True, help="the pipeline folder to write")
    m.add_argument("--records", help="records with targets (default: `psrl world make` --num scenes in .work)")
    m.add_argument("--num", type=int, default=6000, help="scenes to make when --records is not given (6000)")
    for name, help_ in (("vae_steps", "VAE steps"), ("vae_batch", "VAE batch"), ("vae_minutes", "VAE wall-clock cap"),
                        ("sft_steps", "transformer steps"), ("sft_batch", "transformer batch"),
                        ("sft_minutes", "transformer wall-clock cap"), ("sft_lr", "transformer AdamW lr"),
                        ("warmup", "transformer warm-up steps"), ("ema_decay", "transformer EMA decay"),
                        ("max_sequence_length", "T5 tokens of the instruction"),
                        ("reference_size", "reference long side in px"), ("seed", "seed")):
        default = getattr(d, name)
        m.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default,
                       help=f"{help_} (default {default}{'; 0 = none' if name.endswith('minutes') else ''})")
    m.add_argument("--resume", action="store_true", help="reuse the trained VAE and continue the SFT run in .work")
    m.set_defaults(func=cmd_pretrain)


def cmd_pretrain(args) -> int:
    from pathlib import Path

    from psrl.config import ConfigError
    from psrl.world.pretrain import PretrainConfig, pretrain

    try:
        cfg = PretrainConfig(**{k: getattr(args, k) for k in (
            "vae_steps", "vae_batch", "vae_minutes", "sft_steps", "sft_batch", "sft_minutes", "sft_lr", "warmup",
            "ema_decay", "max_sequence_length", "reference_size", "seed")})
    except ValueError as e:
        raise ConfigError(f"world pretrain: {e}") from None
    records = args.records
    if records is None:
        from psrl.world.export import WorldSpec, make_world

        data = Path(args.out) / ".work" / "world"
        if not (data / "train.jsonl").is_file():
            make_world(data, WorldSpec(num=args.num, eval_num=0, bench_per_subset=1, seed=args.seed))
        records = data / "train.jsonl"
    stats = pretrain(args.out, records, cfg, resume=args.resume)
    print(f"pocket generator written to {args.out}: VAE held-out PSNR {stats['vae_psnr']:.1f} dB after "
          f"{stats['vae_steps_run']} steps; transformer {stats['sft_steps_run']} steps, held-out loss "
          f"{stats.get('held_out_fixed_loss', float('nan')):.4f}; {stats['total_seconds'] / 60:.1f} min")
    return 0
