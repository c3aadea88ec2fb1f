"""The ``psrl`` command. Each subcommand lives in its own module ``psrl.cli.<name>`` exposing
``add_parser(subparsers)``; heavy imports happen inside the command functions so ``psrl --help`` stays fast."""
from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import sys

from psrl.errors import ConfigError, PsrlError, RecordError

USER_ERRORS = (ConfigError, RecordError, PsrlError)

# subcommand -> module; the order is the order shown in --help
COMMANDS = {
    "train": "psrl.cli.train",
    "diagnose": "psrl.cli.diagnose",
    "report": "psrl.cli.report",
    "sft": "psrl.cli.sft",
    "generate": "psrl.cli.generate",
    "reward": "psrl.cli.reward",
    "reward-model": "psrl.cli.reward_model",
    "bench": "psrl.cli.bench",
    "data": "psrl.cli.data",
    "world": "psrl.cli.world",
    "lora": "psrl.cli.lora",
    "push": "psrl.cli.push",
    "serve": "psrl.cli.serve",
    "env": "psrl.cli.env",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="psrl",
        description="RL post-training, rewards, benchmarks and data for consistent multi-subject image generation.",
        epilog="Examples:\n  psrl train                      # tiny FLUX GRPO demo on the CPU\n"
               "  psrl train --config configs/psr_kontext.yaml --set train.lr=1e-5\n"
               "  accelerate launch -m psrl train --config ...\n  psrl env",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name == module_name:  # command not part of this build
                continue
            raise
        module.add_parser(sub)
    return parser


def _close_process_group(*, wait: bool) -> None:
    """Leave a launcher's process group: a gloo group left to interpreter shutdown can abort a rank ("terminate
    called without an active exception") and fail the launch. ``wait``: once every rank is done, after a barrier;
    else after an error every rank raised alike (a stop, a bad config), best effort without waiting on ranks that
    may be gone."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return
    if wait:
        dist.barrier()
        dist.destroy_process_group()
        return
    with contextlib.suppress(Exception):
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code = int(args.func(args) or 0)
        _close_process_group(wait=True)
        return code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as e:
        # one line, no traceback; a run stopped by a signal exits 130/143 as the shell expects
        print(f"error: {e}", file=sys.stderr)
        _close_process_group(wait=False)
        return int(getattr(e, "exit_code", 2))


if __name__ == "__main__":
    sys.exit(main())
