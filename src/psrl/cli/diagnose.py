"""``psrl diagnose``: a few rollout batches of a run config, measured without training: reward spread and zero-std
groups, gradient signal against a shuffled-advantage control, the log-prob recompute check, and the time and memory
of each phase extrapolated to the run (the embedded tiny-FLUX demo when no --config is given, like ``psrl train``)."""
from __future__ import annotations

import argparse


# alike on purpose: every command module opens with its docstring and add_parser (psrl.cli.main's contract)
def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "diagnose", help="before a long run: is there gradient signal, are log-probs exact, what will it cost",
        description="Roll out a few batches of a run config and report, without training and without a run folder: "
                    "the zero-std group ratio and spread of each reward; the cosine between the policy gradients of "
                    "independent batches against a shuffled-advantage control, with an exact swap-test p-value and a "
                    "verdict line containing 'signal' or 'noise'; the log-prob recompute check (ratio exactly 1 "
                    "before an update); seconds and peak memory per phase, extrapolated to train.max_steps. "
                    "Exit code 0 after a diagnosis (whatever the verdict), 1 when no batch had a group to learn "
                    "from, 2 for a bad config.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  psrl diagnose\n  psrl diagnose --config configs/flux_grpo.yaml --batches 16\n"
               "  psrl diagnose --config configs/flux_grpo.yaml --set train.group_size=24 --json diag.json")
    p.add_argument("--config", help="run config YAML (default: the embedded tiny_flux.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.group_size=16 (repeatable)")
    p.add_argument("--batches", type=int, default=12,
                   help="rollout batches, each one training step's images (default 12; at least 7 can show signal at "
                        "p <= 0.01, more resolve weaker signals; 2 x batches LoRA-sized gradients are held in memory)")
    p.add_argument("--json", dest="json_path", metavar="PATH", help="also write the measurements as JSON to PATH")
    p.set_defaults(func=run)


def run(args) -> int:
    from psrl.errors import ConfigError
    from psrl.rl.run_config import load_run_config

    if args.batches < 2:
        raise ConfigError(f"--batches must be at least 2 (the signal test compares batches), got {args.batches}")
    cfg = load_run_config(args.config, list(args.overrides))

    from psrl.fileio import write_json_atomic
    from psrl.rl.diagnose import diagnose, format_report

    result = diagnose(cfg, batches=args.batches)
    print(format_report(result))
    if args.json_path:
        write_json_atomic(args.json_path, result.to_dict())
    return 0 if result.measured else 1  # nothing measured is not a success
