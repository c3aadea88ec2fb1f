"""``psrl lora``: inspect saved LoRA files and combine the stages of a run into one diffusers-loadable file."""
from __future__ import annotations

import argparse

EXAMPLES = """examples:
  psrl lora info runs/psr/checkpoints/step-300
  # PSR's two stages (SFT rank 512, RL rank 64 trained on the fused SFT model) as one rank-576 LoRA:
  psrl lora combine runs/psr_sft runs/psr --out runs/psr_lora

A LoRA argument is a .safetensors file, a folder holding pytorch_lora_weights.safetensors, a checkpoint
runs/<run>/checkpoints/step-N (its lora_ema/ when the run kept an EMA, else lora/) or a run folder runs/<run>
(its newest complete checkpoint); every psrl command reads LoRAs by this one rule.
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("lora", help="inspect and combine saved LoRA files (diffusers format)",
                              description=__doc__, epilog=EXAMPLES,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="lora_command", metavar="ACTION")
    info = sub.add_parser("info", help="rank, alpha, adapted layers, parameters and what was fused under it")
    info.add_argument("path", help="a LoRA file, LoRA folder, checkpoint step-N or run folder")
    info.add_argument("--prefix", default="transformer")
    info.set_defaults(func=cmd_info)
    comb = sub.add_parser("combine", help="one LoRA equal to the sum of several (ranks stack; exact)")
    comb.add_argument("paths", nargs="+", help="LoRAs (files, folders, checkpoints or run folders), e.g. the SFT "
                                               "LoRA then the RL LoRA trained on it")
    comb.add_argument("--out", required=True, help="output folder (or .safetensors path)")
    comb.add_argument("--scale", type=float, action="append", help="per-input scale, once per input (default 1)")
    comb.add_argument("--prefix", default="transformer")
    comb.add_argument("--force", action="store_true",
                      help="combine even when an input was trained on a fused base (e.g. another SFT LoRA) that is "
                           "not among the inputs; the result is then not the trained policy")
    comb.set_defaults(func=cmd_combine)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def cmd_info(args) -> int:
    from psrl.models.lora import FUSED_METADATA_KEY, describe_fused, read_lora_file
    from psrl.models.lora_merge import file_scale

    file, tensors, meta = read_lora_file(args.path)
    a = {k: v for k, v in tensors.items() if k.startswith(args.prefix + ".") and ".lora_A." in k}
    ranks = sorted({v.shape[0] for v in a.values()})
    print(f"file         {file}")
    print(f"layers       {len(a)} ({args.prefix})")
    print(f"rank         {', '.join(map(str, ranks)) or '-'}")
    alpha = meta.get(f"{args.prefix}.lora_alpha")
    scale = file_scale(meta, args.prefix, file, ranks[-1]) if ranks else None
    print(f"alpha        {alpha if alpha is not None else 'not recorded (acts as alpha = rank)'}"
          + (f"  (scale {scale:g})" if scale is not None else ""))
    print(f"parameters   {sum(v.numel() for v in tensors.values()):,}")
    others = sorted({k.split(".")[0] for k in tensors} - {args.prefix})
    if others:
        print(f"other parts  {', '.join(others)}")
    fused = meta.get(FUSED_METADATA_KEY, [])
    print("fused under  " + describe_fused(fused))
    return 0


def cmd_combine(args) -> int:
    from psrl.errors import PsrlError
    from psrl.models.lora_merge import combine_lora_files

    if len(args.paths) < 2:
        raise PsrlError("psrl lora combine needs at least two LoRA files")
    if args.scale is not None and len(args.scale) != len(args.paths):
        raise PsrlError(f"--scale given {len(args.scale)} times for {len(args.paths)} inputs; give it once per input")
    out = combine_lora_files(args.paths, args.out, prefix=args.prefix, scales=args.scale, force=args.force)
    print(f"wrote {out}")
    return 0
