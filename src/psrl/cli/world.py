"""``psrl world``: the pocket world (issue #18), procedurally drawn subjects and scenes small enough to run the
whole PSR loop on a CPU. Each step is one entry of :data:`STEPS` (step name -> ``"module:function"`` that adds its
parser), so a step is added with one line."""
from __future__ import annotations

import argparse
import importlib

EXAMPLES = """examples:
  psrl world make --out data/pocket                       # records, references, PocketBench (seed 0)
  psrl world make --out data/pocket --num 8000 --seed 1
  psrl bench eval --results data/pocket/pocketbench_truth  # PocketBench's ceiling: the ground-truth scenes
"""

STEPS: dict[str, str] = {
    "make": "psrl.cli.world:add_make",
}


def add_parser(sub) -> None:
    p = sub.add_parser("world", help="the pocket world: make its data and PocketBench",
                       description=__doc__, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    ws = p.add_subparsers(dest="world_command", metavar="STEP")
    for target in STEPS.values():
        module, _, function = target.partition(":")
        getattr(importlib.import_module(module), function)(ws)
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
