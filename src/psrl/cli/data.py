"""``psrl data``: the multi-subject data generation pipeline, one subcommand per stage.

Every stage reads and writes JSONL manifests in one dataset directory, skips samples it already finished (a
killed stage continues where it stopped), prints progress and its statistics (also in ``<dir>/stats.json``).
The config comes from ``--config``, else ``<dir>/config.yaml`` (written by the previous stage), else the defaults
(``--tiny``: tiny random-weight models); ``--set`` and the stage flags apply on top, and the result is saved back
to ``<dir>/config.yaml`` so the next stage reuses it. A finished sample is never redone: to rerun a stage with new
settings, pass ``--redo`` (forgets that stage and every later one).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXAMPLES = """examples:
  psrl data all --dir data/tiny --tiny                                # every stage, tiny models, CPU
  psrl data subjects --dir data/ms --config my_data.yaml --num-samples 10000
  psrl data prompts --dir data/ms --llm-endpoint http://127.0.0.1:8000/v1 --set prompts.llm.model=Qwen2.5-7B
  accelerate launch -m psrl data render --dir data/ms                 # sharded over the processes
  psrl data ground --dir data/ms && psrl data references --dir data/ms && psrl data reedit --dir data/ms
  psrl data instructions --dir data/ms && psrl data filter --dir data/ms && psrl data export --dir data/ms
  psrl data stats --dir data/ms
"""

STAGE_HELP = {
    "subjects": "sample 2-4 subject categories per sample (Objects365 or --vocab)",
    "prompts": "a multi-subject text-to-image prompt per sample (templates or --llm-endpoint)",
    "render": "render the target images with the text-to-image policy",
    "ground": "detect each subject in its target; reject missing / overlapping / tiny; save crops",
    "references": "re-render each crop in a new context with the reference model (Kontext)",
    "reedit": "edit Attribute/Action/Background targets with the image editor (PSR's re-editing step)",
    "instructions": "per-task instruction from references to target (templates or --vlm-endpoint)",
    "filter": "keep reference-to-target consistent samples, drop near-duplicates",
    "export": "training records (train.jsonl / heldout.jsonl) and PSRBench JSON (psrbench/)",
}


# alike on purpose: a command with sub-steps (as psrl world): the parser, then one sub-parser per step
def add_parser(sub) -> None:
    p = sub.add_parser("data", help="multi-subject data generation pipeline (9 resumable, shardable stages)",
                       description=__doc__, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    ds = p.add_subparsers(dest="data_command", metavar="STAGE")
    from psrl.datagen.stages import STAGES

    for name in (*STAGES, "all"):
        s = ds.add_parser(name, help=STAGE_HELP.get(name, "run every stage in order"))
        _common_args(s)
        s.set_defaults(func=cmd_stage, stage=name)
    st = ds.add_parser("stats", help="print the per-stage statistics of a dataset")
    st.add_argument("--dir", required=True, help="dataset directory")
    st.add_argument("--json", action="store_true", help="print stats.json as it is")
    st.set_defaults(func=cmd_stats)


def _common_args(s) -> None:
    s.add_argument("--dir", required=True, help="dataset directory (manifests, images, stats.json)")
    s.add_argument("--config", help="DataPipelineConfig YAML (default: <dir>/config.yaml, else built-in defaults)")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. render.num_steps=28 (repeatable)")
    s.add_argument("--tiny", action="store_true", help="start from the tiny random-weight preset (tests, CPU)")
    s.add_argument("--num-samples", type=int, help="= --set subjects.num_samples=N")
    s.add_argument("--vocab", help="category file replacing Objects365 (= --set subjects.vocab=FILE)")
    s.add_argument("--llm-endpoint", help="OpenAI-compatible LLM for prompts (= --set prompts.llm.url=URL)")
    s.add_argument("--vlm-endpoint", help="OpenAI-compatible VLM for instructions (= --set instructions.vlm.url=URL)")
    s.add_argument("--device", help="= --set device=DEV (default auto: this rank's GPU, else CPU)")
    s.add_argument("--seed", type=int, help="= --set seed=N")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.add_argument("--redo", action="store_true",
                   help="forget this stage and all later ones (manifests, statistics) and run it from scratch, "
                        "e.g. after changing its settings; without it, finished samples are never redone")


def resolve_config(args):
    """Config file (or the dataset's saved config, or defaults / the tiny preset) + flags + ``--set``."""
    import copy

    from psrl.config import apply_overrides, from_dict, load_yaml
    from psrl.datagen.config import TINY_PRESET, DataPipelineConfig

    path = Path(args.config) if args.config else Path(args.dir) / "config.yaml"
    if args.config or path.is_file():
        data, source = load_yaml(path), args.config or str(path)
    else:
        data, source = {}, "tiny preset" if args.tiny else "defaults"
    if args.tiny:  # the preset under the file's values (with a config, the file's values win)
        data = _deep_merge(copy.deepcopy(TINY_PRESET), data)
    flags = {"subjects.num_samples": args.num_samples, "subjects.vocab": args.vocab,
             "prompts.llm.url": args.llm_endpoint, "instructions.vlm.url": args.vlm_endpoint,
             "device": args.device, "seed": args.seed}
    overrides = [f"{k}={v}" for k, v in flags.items() if v is not None] + list(args.set)
    apply_overrides(data, overrides)
    return from_dict(DataPipelineConfig, data, source=source)


def _deep_merge(base: dict, top: dict) -> dict:
    for k, v in top.items():
        base[k] = _deep_merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return base


def progress_bars(enabled: bool, unit: str = "sample"):
    """A :data:`psrl.datagen.runner.ProgressFactory` drawing tqdm bars on stderr, or None when not ``enabled``
    (here and in ``psrl reward-model``)."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return lambda total, desc="": tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, file=sys.stderr)


def cmd_stage(args) -> int:
    from psrl.config import dump_yaml
    from psrl.sharding import shard_from_env, shutdown
    from psrl.datagen.stages import STAGES, reset_from, run_named_stage

    cfg = resolve_config(args)
    dataset = Path(args.dir)
    shard = shard_from_env()
    try:
        shard.barrier()  # every rank has read <dir>/config.yaml before rank 0 replaces it
        if shard.is_main:
            dump_yaml(cfg, dataset / "config.yaml")  # atomic: other ranks may be reading the previous one
            if args.redo:
                removed = reset_from(dataset, STAGES[0] if args.stage == "all" else args.stage)
                print(f"--redo: removed {len(removed)} manifest(s): {', '.join(p.name for p in removed) or 'none'}")
        shard.barrier()
        names = STAGES if args.stage == "all" else (args.stage,)
        progress = progress_bars(shard.is_main and not args.no_progress)
        for name in names:
            stats = run_named_stage(name, cfg, dataset, shard, progress=progress)
            if stats is not None:
                print(stats.summary(), flush=True)
        if shard.is_main:
            print(f"statistics: {dataset / 'stats.json'}")
    finally:
        shutdown(shard)
    return 0


def cmd_stats(args) -> int:
    from psrl.datagen.stages import STAGES, pending_parts
    from psrl.datagen.stats import StageStats, read_stats

    data = read_stats(args.dir)
    if not data:
        print(f"no statistics in {args.dir} (no stage has run there)", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    for name in (*STAGES[:STAGES.index("filter")], "filter_scores", "filter", "export"):
        if name in data:
            print(StageStats(stage=name, **data[name]).summary())
    for name, n in pending_parts(args.dir).items():
        print(f"{name}: {n} unmerged part file(s) from an interrupted sharded run; run the stage again")
    return 0

