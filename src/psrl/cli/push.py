"""``psrl push``: upload a finished run's LoRA with a model card to the Hugging Face Hub."""
from __future__ import annotations

import argparse

EXAMPLES = """examples:
  hf auth login                     # or export HF_TOKEN=...
  psrl push runs/psr --repo-id me/psr-kontext-lora --private
  psrl push runs/psr --repo-id me/psr-kontext-lora --out hub_folder   # write the folder only, upload nothing

The newest complete checkpoint is pushed (its EMA weights when the run kept an EMA). A run trained on a fused SFT
LoRA (model.lora.fuse) is pushed as one combined LoRA that loads on the plain base model, plus the RL stage alone.
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("push", help="upload a run's LoRA and a model card to the Hugging Face Hub",
                              description=__doc__, epilog=EXAMPLES,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run folder, runs/<name>")
    p.add_argument("--repo-id", required=True,
                   help="the model repository, <user or org>/<name> (a bare name: your namespace); created if missing")
    p.add_argument("--private", action="store_true",
                   help="create the repository private (an existing one keeps its visibility)")
    p.add_argument("--license", help="license id for the card's metadata, e.g. other, apache-2.0 (default: none)")
    p.add_argument("--fused-lora", action="append", metavar="PATH",
                   help="where a LoRA fused under the run's LoRA is now, once per fused LoRA in order, when it "
                        "moved since training (checked by content)")
    p.add_argument("--commit-message")
    p.add_argument("--out", metavar="DIR",
                   help="write the repository folder here and stop: no upload, no token needed")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from psrl.errors import PsrlError
    from psrl.hub import HubError, check_repo_id
    from psrl.push import push_run, summarize_run, write_repo_folder

    if args.out:
        try:
            check_repo_id(args.repo_id)  # it goes into the card's snippet
        except HubError as e:
            raise PsrlError(f"--repo-id: {e}") from None
        out = Path(args.out)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise PsrlError(f"--out {out} exists and is not an empty folder; give a new folder")
        files = summarize_run(args.run_dir, fused_loras=args.fused_lora)
        written = write_repo_folder(files, out, args.repo_id, license=args.license)
        print(f"wrote {len(written)} files to {out}: {', '.join(written)}")
        return 0
    repo_id, url, written = push_run(args.run_dir, args.repo_id, private=args.private, license=args.license,
                                     fused_loras=args.fused_lora, commit_message=args.commit_message)
    print(f"pushed {len(written)} files to {repo_id}: {', '.join(written)}")
    print(f"commit: {url}")
    return 0
