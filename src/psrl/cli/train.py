"""``psrl train``: Flow-GRPO training from a run config (the embedded tiny-FLUX demo when none is given)."""
from __future__ import annotations

import argparse
import math
import sys

_SPARK = "▁▂▃▄▅▆▇█"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="GRPO-train a policy's LoRA (default: tiny FLUX on the CPU)",
        description="Flow-GRPO training. Without --config runs the embedded tiny-FLUX demo (CPU, < 1 min) and prints "
                    "its reward curve. Multi-process: accelerate launch -m psrl train --config ...",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  psrl train\n  psrl train --set train.max_steps=20\n"
               "  psrl train --config configs/flux_grpo.yaml --run-name exp1\n"
               "  psrl train --config configs/flux_grpo.yaml --run-name exp1 --resume")
    p.add_argument("--config", help="run config YAML (default: the embedded tiny_flux.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.lr=1e-5 (repeatable)")
    p.add_argument("--run-name", help="run folder name under run.output_dir (overrides run.name)")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint of the run")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config, each key with its one-line help, and exit")
    p.set_defaults(func=run)


def sparkline(values: list[float]) -> str:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return ""
    lo, hi = min(finite), max(finite)
    span = hi - lo or 1.0
    return "".join(" " if v is None or not math.isfinite(v) else _SPARK[int((v - lo) / span * (len(_SPARK) - 1))]
                   for v in values)


def reward_table(history: list[dict], first_step: int) -> str:
    """A small per-step text table of the reward curve and the training diagnostics."""
    rows = ["  step   reward(mean)   reward(std)   zero-std   approx_kl   clipfrac   sec"]
    idle = 0
    for i, m in enumerate(history):
        note = ""
        if not m.get("adv/num_trained_samples"):
            note, idle = "   no trainable group", idle + 1
        rows.append(f"  {first_step + i + 1:>4}   {m['reward/total/mean']:>12.4f}   {m['reward/total/std']:>11.4f}   "
                    f"{m['zero_std_ratio']:>8.2f}   {m.get('approx_kl', 0.0):>9.2e}   "
                    f"{m.get('clipfrac', 0.0):>8.3f}   "
                    f"{m['time/step']:>4.1f}{note}")
    if idle:
        rows.append(f"  {idle} of {len(history)} step(s) had no trainable group (every group's rewards were equal or "
                    "unscorable): nothing was learned in them")
    return "\n".join(rows)


# alike on purpose: psrl sft / reward-model train map --run-name to --set, print the config, build and run
def run(args) -> int:
    from psrl.config import dump_with_help
    from psrl.rl.run_config import load_run_config

    overrides = list(args.overrides)
    if args.run_name:
        overrides.append(f"run.name={args.run_name}")
    cfg = load_run_config(args.config, overrides)
    if args.print_config:
        print(dump_with_help(cfg), end="")
        return 0

    from psrl.rl.grpo_trainer import GRPOTrainer

    trainer = GRPOTrainer(cfg, resume=args.resume, progress=sys.stderr.isatty())
    history = trainer.train()
    if history:
        from psrl.push import push_finished_run

        push_finished_run(trainer)  # run.push_to_hub
    if trainer.is_main:
        if history:
            curve = [m["reward/total/mean"] for m in history]
            print(reward_table(history, trainer.start_step))
            print(f"reward curve: {sparkline(curve)}  {curve[0]:.4f} -> {curve[-1]:.4f}")
            if cfg.monitor.enabled:
                from psrl.rl.monitor import alarm_lines

                print("\n".join(alarm_lines(trainer.monitor.alarms, cfg.monitor)))
        else:
            print(f"nothing to do: the run is already at step {trainer.start_step} of {cfg.train.max_steps} "
                  "(raise train.max_steps to continue it)", file=sys.stderr)
        print(f"run directory: {trainer.run_dir}")
    return 0 if history else 1  # a run that did nothing does not report success
