"""``psrl report RUN_DIR``: one HTML and Markdown page of a training run (reward and held-out curves, image
statistics, alarms, eval grids over time); see :mod:`psrl.rl.report`."""
from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "report", help="one HTML/Markdown page of a training run: curves, statistics, alarms, eval grids",
        description="Read a psrl train run folder (metrics.jsonl, alarms.jsonl, samples/step-N.png) and write "
                    "report.html (self-contained: inline SVG curves, grids embedded) and report.md (grids linked). "
                    "Exit 0 when written, 2 when RUN_DIR is not a run folder.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  psrl report runs/tiny_flux\n  psrl report runs/my_run --out reports/my_run")
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run folder (run.output_dir/run.name)")
    p.add_argument("--out", help="folder to write report.html and report.md to (default: RUN_DIR)")
    p.set_defaults(func=run)


def run(args) -> int:
    from psrl.rl.report import write_run_report

    paths = write_run_report(args.run_dir, args.out)
    print(f"wrote {paths['html']} and {paths['md']}")
    return 0
