"""``psrl sft``: flow-matching SFT of a LoRA on records with target images (PSR stage 1)."""
from __future__ import annotations

import argparse


# alike on purpose: every command module opens with its docstring and add_parser (psrl.cli.main's contract)
def add_parser(sub) -> None:
    p = sub.add_parser(
        "sft", help="supervised flow-matching LoRA fine-tuning on records with target images (PSR stage 1)",
        description="Supervised flow-matching fine-tuning of a policy's LoRA. The checkpoints' lora/ folders are "
                    "diffusers-format LoRAs. The next stage (PSR stage 2, psrl train) fuses the SFT LoRA into the "
                    "base and trains a fresh GRPO LoRA on top: --set 'model.lora.fuse=[runs/<run>/checkpoints/"
                    "step-N/lora]' (any rank; the fused model is also the KL reference). model.lora.path instead "
                    "continues this same LoRA, and needs the GRPO config's rank and alpha to equal the SFT's.",
        epilog="Examples:\n  psrl sft --config configs/tiny/psr_kontext_sft.yaml\n"
               "  psrl sft --config configs/psr_kontext_sft.yaml --run-name psr_sft\n"
               "  psrl train --config configs/psr_kontext.yaml --run-name psr \\\n"
               "      --set 'model.lora.fuse=[runs/psr_sft/checkpoints/step-20000/lora]'\n"
               "  psrl sft --config ... --run-name psr_sft --resume",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="SFT config YAML (model, sft, data, run sections)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override, repeatable (e.g. --set sft.lr=1e-4)")
    p.add_argument("--run-name", help="= --set run.name=NAME")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint of the run")
    p.add_argument("--max-steps", type=int, help="= --set sft.max_steps=N")
    p.set_defaults(func=cmd_sft)


def cmd_sft(args) -> int:
    from psrl.cli.train import run_overrides
    from psrl.rl.sft_trainer import SFTTrainer
    from psrl.rl.sft_config import load_sft_config

    cfg = load_sft_config(args.config, run_overrides(args, args.set, "sft"))
    trainer = SFTTrainer(cfg, resume=args.resume, progress=None)  # None: a bar only on a terminal
    history = trainer.train()
    if history:
        from psrl.push import push_finished_run

        push_finished_run(trainer)  # run.push_to_hub
    if trainer.is_main and history:
        last = history[-1]
        fixed = f", fixed-sigma loss {last['loss/fixed']:.4f}" if "loss/fixed" in last else ""
        print(f"done: {len(history)} steps, last loss {last['loss']:.4f}{fixed}; run dir {trainer.run_dir}")
        _print_next_stage(trainer.run_dir)
    return 0


def _print_next_stage(run_dir) -> None:
    """Name the checkpoint the next stage fuses, exactly as `psrl train` takes it."""
    from psrl.errors import ModelLoadError
    from psrl.models.lora import resolve_lora_path

    try:
        lora = resolve_lora_path(run_dir).parent
    except ModelLoadError:  # no checkpoint was saved (e.g. sft.max_steps 0): nothing to hand over
        return
    print(f"next stage: psrl train --config <grpo config> --set 'model.lora.fuse=[{lora}]'")
