"""``psrl reward-model``: train, evaluate and export a PaCo-style pairwise consistency reward model.

* ``pairs``: grids -> cells -> pairs labelled by a teacher VLM server or a human labels file (resumable, sharded
  under ``accelerate launch``), or ShareGPT / PaCo-Dataset JSON -> pairs; writes train.jsonl / heldout.jsonl.
* ``train``: LoRA SFT of a Qwen2.5-VL judge with the weighted first-token loss; writes adapter/ and merged/.
* ``eval``: any reward on a ConsistencyRank-style ranking or EditReward-style pairwise benchmark, with a report
  beside the published numbers.
* ``merge``: merge a LoRA adapter into its base (what vLLM / sglang serve).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXAMPLES = """examples:
  psrl reward-model pairs --dir data/rm --grids grids.jsonl --teacher-url http://127.0.0.1:8000/v1 \\
      --teacher-model Qwen2.5-VL-72B-Instruct
  psrl reward-model pairs --dir data/rm --grids grids/ --grid 2x2          # writes to_label.csv to fill in
  psrl reward-model pairs --dir data/rm --labels data/rm/to_label.csv      # then: the human labels
  psrl reward-model pairs --dir /data/PaCo-Dataset --sharegpt /data/PaCo-Dataset/consistency_train.json
  accelerate launch -m psrl reward-model train --config configs/paco_reward.yaml --run-name rm1
  psrl reward-model eval --bench ConsistencyRank-Bench --reward vlm_consistency \\
      --args '{"path": "Qwen/Qwen2.5-VL-7B-Instruct", "adapter_path": "runs/rm1/adapter", "template": "v3"}'
  psrl reward-model merge --base Qwen/Qwen2.5-VL-7B-Instruct --adapter runs/rm1/adapter --out rm1-merged
"""


def add_parser(sub) -> None:
    p = sub.add_parser("reward-model", help="train, evaluate and export a pairwise consistency reward model "
                                            "(PaCo-Reward)",
                       description=__doc__, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    rs = p.add_subparsers(dest="reward_model_command", metavar="CMD")

    s = rs.add_parser("pairs", help="grids or ShareGPT JSON -> labelled pairwise examples (train/heldout JSONL)")
    s.add_argument("--dir", required=True, help="dataset folder (manifests, cells/, pairs.jsonl, train.jsonl, ...)")
    src = s.add_mutually_exclusive_group()
    src.add_argument("--grids", help="grids JSONL ({id, image, prompt, theme?, grid?}) or a folder of images with "
                                     "<stem>.txt prompts")
    src.add_argument("--sharegpt", help="ShareGPT-style JSON of pairwise examples (LLaMA-Factory, PaCo-Dataset); "
                                        "its images must lie under --dir")
    s.add_argument("--grid", help="grid size of every image, e.g. 2x2 (default: parsed from each prompt)")
    s.add_argument("--template", help="PaCo prompt: v1 (with the theme, default), v3, or a custom text")
    s.add_argument("--teacher-url", help="OpenAI-compatible VLM server that labels the pairs (= teacher.url)")
    s.add_argument("--teacher-model", help="model name on that server (= teacher.model)")
    s.add_argument("--teacher-key-env", help="environment variable holding its API key (= teacher.api_key_env)")
    s.add_argument("--labels", help="human labels CSV/JSONL (id,label[,reason]); joined when exporting")
    s.add_argument("--heldout", type=float, help="share of grids (or items) written to heldout.jsonl (default 0.1)")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="PairsConfig override, e.g. teacher.max_new_tokens=256 (repeatable)")
    s.add_argument("--redo", action="store_true", help="forget the cells and labels done so far and start over")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_pairs)

    t = rs.add_parser("train", help="LoRA SFT of a Qwen2.5-VL judge with the weighted first-token loss")
    t.add_argument("--config", required=True, help="reward-model config YAML (model, train, data, run)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override, repeatable (e.g. --set train.lr=1e-4)")
    t.add_argument("--run-name", help="= --set run.name=NAME")
    t.add_argument("--max-steps", type=int, help="= --set train.max_steps=N")
    t.add_argument("--resume", action="store_true", help="continue from the newest checkpoint of the run")
    t.add_argument("--print-config", action="store_true",
                   help="print the resolved config, each key with its one-line help, and exit")
    t.set_defaults(func=cmd_train)

    e = rs.add_parser("eval", help="rank / pairwise agreement of any reward with human judgements")
    e.add_argument("--bench", required=True, help="ConsistencyRank-Bench folder, or a ranking / pairwise JSONL")
    e.add_argument("--reward", required=True, help="registered reward name (psrl reward list) or module:attr")
    e.add_argument("--args", default="{}", help='reward args as a JSON object, e.g. \'{"path": "tiny"}\'')
    e.add_argument("--name", help="this reward's row name in the report (default: the reward name)")
    e.add_argument("--out", help="output folder (default: rm_eval/<benchmark>/<name>)")
    e.add_argument("--limit", type=int, help="only the first N items")
    e.add_argument("--device", default="cpu")
    e.set_defaults(func=cmd_eval)

    m = rs.add_parser("merge", help="merge a LoRA adapter into its base judge (a folder vLLM / sglang serve)")
    m.add_argument("--base", required=True, help="the base model folder or hub id (or tiny)")
    m.add_argument("--adapter", required=True, help="the adapter folder (a run's adapter/ or a checkpoint's lora/)")
    m.add_argument("--out", required=True, help="output folder")
    m.add_argument("--dtype", default="auto", help="dtype of the merged weights (auto: bf16 on CUDA, else fp32)")
    m.set_defaults(func=cmd_merge)
    p.set_defaults(func=lambda args: p.print_help() or 2)


# ---------------------------------------------------------------------------------------------- pairs
CONFIG_FILE = "pairs_config.json"


def resolve_pairs_config(args, dataset: Path):
    """The saved ``<dir>/pairs_config.json`` (or the defaults), then the flags and ``--set`` on top."""
    import copy

    from psrl.config import apply_overrides, from_dict
    from psrl.reward_model.pair_stages import PairsConfig

    saved = dataset / CONFIG_FILE
    before = json.loads(saved.read_text()) if saved.is_file() and not args.redo else None
    data = copy.deepcopy(before) if before is not None else {}
    flags = {"grids": args.grids, "grid": args.grid, "template": args.template, "teacher.url": args.teacher_url,
             "teacher.model": args.teacher_model, "teacher.api_key_env": args.teacher_key_env,
             "labels": args.labels, "heldout_fraction": args.heldout}
    for key, value in flags.items():
        if value is not None:  # set as given (not through --set's YAML reading: a template text stays text)
            node = data.setdefault("teacher", {}) if key.startswith("teacher.") else data
            node[key.removeprefix("teacher.")] = str(Path(value).resolve()) if key in ("grids", "labels") else value
    apply_overrides(data, args.set)
    cfg = from_dict(PairsConfig, data, source=str(saved) if saved.is_file() else "flags")
    if before is not None:
        changed = [k for k in ("grids", "grid", "template") if before.get(k, "") != (getattr(cfg, k) or "")]
        if changed:
            from psrl.errors import PsrlError

            raise PsrlError(f"--dir {dataset}: {', '.join(changed)} changed since the first run (saved in {saved}); "
                            "finished samples would mix both settings: add --redo to start over")
    return cfg


def cmd_pairs(args) -> int:
    from psrl.cli.data import progress_bars
    from psrl.errors import PsrlError

    dataset = Path(args.dir)
    if args.sharegpt:
        return _import_sharegpt(args, dataset)
    from psrl.config import to_dict
    from psrl.datagen.manifest import manifest_path, read_manifest, remove_manifests
    from psrl.datagen.runner import run_stage
    from psrl.sharding import shard_from_env, shutdown
    from psrl.fileio import write_json_atomic
    from psrl.reward_model.pair_stages import CELLS_STAGE, LABELS_STAGE, CellsStage, LabelsStage, export_pairs

    cfg = resolve_pairs_config(args, dataset)
    if not cfg.grids:
        raise PsrlError("pairs: give --grids (grid images with prompts) or --sharegpt (pairwise JSON) on the first "
                        f"run in {dataset}")
    shard = shard_from_env()
    try:
        if shard.is_main:
            dataset.mkdir(parents=True, exist_ok=True)
            if args.redo:
                remove_manifests(dataset, (CELLS_STAGE, LABELS_STAGE))
            write_json_atomic(dataset / CONFIG_FILE, to_dict(cfg))
        shard.barrier()
        progress = progress_bars(not args.no_progress and shard.is_main, "item")
        cells = run_stage(CellsStage(cfg, dataset), dataset, shard, progress=progress)
        labels = None
        if cfg.has_teacher:
            labels = run_stage(LabelsStage(cfg, dataset, shard.device("auto")), dataset, shard, progress=progress)
        code = 0
        if shard.is_main:
            for stats, stage in ((cells, CELLS_STAGE), (labels, LABELS_STAGE)):
                if stats is not None:
                    print(stats.summary())
                    bad = [e for e in read_manifest(dataset, stage) if e["status"] == "rejected"]
                    for e in bad[:10]:
                        print(f"  {e['reason']}: {e.get('detail', '')}")
                    if len(bad) > 10:
                        print(f"  ... and {len(bad) - 10} more (see {manifest_path(dataset, stage)})")
            counts = export_pairs(dataset, cfg)
            problems = counts.pop("label_problems")
            for line in problems[:20]:
                print(f"  labels: {line}")
            print("export: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
            print(f"wrote {dataset / 'train.jsonl'}, {dataset / 'heldout.jsonl'}"
                  + (f"; {counts['unlabelled']} pair(s) still unlabelled: fill {dataset / 'to_label.csv'} and pass "
                     "it as --labels" if counts["unlabelled"] else ""))
            if cells.kept == 0 or (labels is not None and labels.kept == 0 and not cfg.labels):
                code = 1  # nothing usable came out
        shard.barrier()
        return code
    finally:
        shutdown(shard)


def _import_sharegpt(args, dataset: Path) -> int:
    from dataclasses import replace

    from psrl.errors import PsrlError, RecordError
    from psrl.reward_model.pairs import relative_to, split_heldout, write_pairs
    from psrl.reward_model.sharegpt import read_sharegpt

    source = Path(args.sharegpt)
    examples, problems = read_sharegpt(source)
    out = []
    for e in examples:
        try:
            images = tuple(relative_to(source.parent / p, dataset) for p in e.images)
        except RecordError as err:  # an image outside --dir
            raise PsrlError(f"{e.where}: {err} (pass the folder that holds the images as --dir)") from err
        out.append(replace(e, images=images))
    for line in problems[:20]:
        print(f"  skipped: {line}")
    if len(problems) > 20:
        print(f"  ... and {len(problems) - 20} more")
    if not out:
        print(f"error: {source}: no usable pairwise example ({len(problems)} problem(s))", file=sys.stderr)
        return 1
    train, held = split_heldout(out, 0.1 if args.heldout is None else args.heldout)
    write_pairs(out, dataset / "pairs.jsonl")
    write_pairs(train, dataset / "train.jsonl")
    write_pairs(held, dataset / "heldout.jsonl")
    yes = sum(e.label == "Yes" for e in out)
    print(f"imported {len(out)} pair(s) ({yes} Yes, {len(out) - yes} No), skipped {len(problems)}; train "
          f"{len(train)}, heldout {len(held)}; wrote {dataset / 'train.jsonl'}, {dataset / 'heldout.jsonl'}")
    return 0


# ---------------------------------------------------------------------------------------------- train
def cmd_train(args) -> int:
    from psrl.cli.train import run_overrides
    from psrl.reward_model.reward_model_config import load_reward_model_config

    cfg = load_reward_model_config(args.config, run_overrides(args, args.set, "train"))
    if args.print_config:
        from psrl.config import dump_with_help

        print(dump_with_help(cfg), end="")
        return 0
    from psrl.reward_model.reward_model_trainer import RewardModelTrainer

    trainer = RewardModelTrainer(cfg, resume=args.resume, progress=sys.stderr.isatty())
    history = trainer.train()
    paths = trainer.export()
    if trainer.is_main:
        last = history[-1] if history else {}
        held = (f", held-out Yes/No accuracy {last['eval/yes_no_accuracy']:.3f}"
                if "eval/yes_no_accuracy" in last else "")
        loss = f", last loss {last['loss']:.4f}" if "loss" in last else ""
        print(f"done: {len(history)} steps{loss}{held}; run dir {trainer.run_dir}")
        if "adapter" in paths:
            print(f"adapter: {paths['adapter']}  (reward args: {{\"path\": \"{cfg.model.path}\", "
                  f"\"adapter_path\": \"{paths['adapter']}\"}})")
        if "merged" in paths:
            print(f"merged model: {paths['merged']}  (vllm serve {paths['merged']})")
    return 0


# ---------------------------------------------------------------------------------------------- eval
def cmd_eval(args) -> int:
    from psrl.cli.reward import reward_from_args
    from psrl.cli.data import progress_bars
    from psrl.errors import PsrlError
    from psrl.reward_model.eval import evaluate, load_benchmark

    if args.limit is not None and args.limit < 1:
        raise PsrlError(f"--limit must be >= 1, got {args.limit}")
    bench = load_benchmark(args.bench)  # its images and references resolve under its own folder
    reward = reward_from_args(args)
    name = args.name or args.reward
    out = Path(args.out) if args.out else Path("rm_eval") / bench.name / name.replace(":", "_").replace("/", "_")
    for line in bench.problems[:10]:
        print(f"  skipped item: {line}")
    progress = progress_bars(sys.stderr.isatty(), "item")
    summary = evaluate(bench, reward, out, name=name, limit=args.limit,
                       progress=(lambda total: progress(total, "eval")) if progress else None)
    scored = summary["items"] - summary["unscorable"]
    if bench.kind == "ranking" and scored:
        for conv in ("paco", "ranks"):
            m = summary[conv]
            print(f"{name} [{conv}]: accuracy {m['accuracy']:.4f}  tau {m['kendall_tau']:.4f}  rho "
                  f"{m['spearman_rho']:.4f}  T1-B1 {m['t1b1']:.4f}")
    elif scored:
        print(f"{name}: pairwise accuracy {summary['strict']['accuracy']:.4f} (>), {summary['geq']['accuracy']:.4f} "
              "(>=)")
    print(f"{scored}/{summary['items']} items scored, {summary['unscorable']} unscorable"
          + (f" {summary['unscorable_reasons']}" if summary["unscorable"] else "") + f"; report {out / 'report.md'}")
    return 0 if scored else 1


# ---------------------------------------------------------------------------------------------- merge
def cmd_merge(args) -> int:
    from psrl.reward_model.judge_model import merge_adapter

    out = merge_adapter(args.base, args.adapter, args.out, dtype=args.dtype)
    print(f"merged {args.adapter} into {args.base}: {out}")
    return 0
