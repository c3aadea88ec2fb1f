"""``psrl bench``: PSRBench / DreamBench / T2IS-Bench / GEdit-Bench validate, records, generate, eval, report, compare.

Every step runs under ``accelerate launch -m psrl bench ...`` (or torchrun) too: samples are sharded across the
processes and rank 0 merges the results.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)

EXAMPLES = """examples:
  psrl bench validate --data-root PSRBench
  psrl bench records --benchmark dreambench --data-root data/dreambench --out data/dreambench/eval.jsonl
  psrl bench records --benchmark dreambench --data-root hf://google/dreambooth/dataset --out eval.jsonl
  psrl bench generate --config configs/psr_kontext.yaml --data-root PSRBench --out runs/bench/psr --seeds 0 1
  psrl bench eval --results runs/bench/psr                      # honest scorer, local models
  psrl bench eval --results runs/bench/psr --psrbench-compat    # reproduces the released scorer
  psrl bench eval --results other_model/ --data-root PSRBench --judge-endpoint http://127.0.0.1:17140/v1 \
      --set aesthetics.default.args.path=/models/HPSv3.safetensors
  psrl bench compare runs/bench/psr/eval runs/bench/base/eval --published --out runs/bench/compare
  accelerate launch -m psrl bench eval --results runs/bench/psr
  psrl bench generate --benchmark t2is --config configs/paco_t2is.yaml --data-root data/t2is --out runs/bench/t2is
  psrl bench eval --results runs/bench/t2is --judge-endpoint http://127.0.0.1:8000/v1
  psrl bench compare runs/bench/t2is/eval --published --out runs/bench/t2is_compare
  psrl bench eval --results data/pocket/pocketbench_truth      # PocketBench (psrl world make): ground truth
"""


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="PSRBench / DreamBench: validate, records, generate, eval, report, compare",
                       description=__doc__, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    bs = p.add_subparsers(dest="bench_command", metavar="STEP")

    v = bs.add_parser("validate", help="check a benchmark data root; every bad entry is listed, exit 1 if any")
    v.add_argument("--data-root", required=True, type=data_root_arg)
    _benchmark_args(v, entries=True)
    v.set_defaults(func=cmd_validate)

    g = bs.add_parser("generate", help="generate the benchmark's images with a psrl policy (resumable)")
    g.add_argument("--config", help="YAML with `model:` (ModelConfig) and `sampling:` (SamplingConfig) sections; "
                                    "other top-level sections (e.g. of a training config) are ignored")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override, e.g. sampling.num_steps=28")
    g.add_argument("--data-root", required=True, type=data_root_arg)
    g.add_argument("--out", required=True)
    g.add_argument("--lora", help="LoRA to generate with: a file, a LoRA folder, a checkpoint "
                                  "runs/<run>/checkpoints/step-N (lora_ema/ when kept, else lora/) or a run folder "
                                  "(its newest complete checkpoint); the same rule as psrl generate --lora")
    g.add_argument("--seeds", type=int, nargs="+", default=[0])
    g.add_argument("--batch-size", type=int, default=4)
    g.add_argument("--device", help="default: cuda:<LOCAL_RANK> when available, else cpu")
    g.add_argument("--skip-invalid", action="store_true", help="generate the valid entries, list the invalid ones")
    g.add_argument("--relative-paths", action="store_true",
                   help="write result_path relative to the result JSON (default: absolute, as released tools open it)")
    _benchmark_args(g, entries=True)
    g.set_defaults(func=cmd_generate)

    rec = bs.add_parser("records", help="write the benchmark's entries as a records JSONL, e.g. a recipe's "
                                        "eval.records (data/dreambench/eval.jsonl for configs/customized_grpo.yaml)")
    rec.add_argument("--data-root", required=True, type=data_root_arg)
    rec.add_argument("--out", required=True, help="records JSONL to write (reference paths stay relative to the "
                                                  "data root: set the recipe's eval.data_root to it)")
    rec.add_argument("--skip-invalid", action="store_true", help="write the valid entries, list the invalid ones")
    _benchmark_args(rec, entries=True)
    rec.set_defaults(func=cmd_records)

    e = bs.add_parser("eval", help="score result images on every dimension (per-sample JSONL, resumable)")
    e.add_argument("--results", required=True, help="result folder (psrl generate output, or result JSON files)")
    e.add_argument("--data-root", type=data_root_arg,
                   help="benchmark data root (default: from the result folder's bench.json)")
    e.add_argument("--out", help="eval folder (default: <results>/eval, or eval_compat with --psrbench-compat)")
    e.add_argument("--psrbench-compat", action="store_true",
                   help="subject consistency and the position rule as the released scorer computes them (first box "
                        "in detector order, whole-image fallback). Unparsable judge replies stay counted failures "
                        "(the released parser's default of 5 is not reproduced)")
    e.add_argument("--judge-endpoint", help="OpenAI-compatible VLM endpoint (e.g. http://127.0.0.1:17140/v1, "
                                            "sglang or vLLM) for the semantic-alignment rubric")
    e.add_argument("--judge-model", help="model name sent to --judge-endpoint (vLLM needs the served name)")
    e.add_argument("--metrics", help="YAML metric set (see psrl.bench.tasks.parse_metrics) instead of the defaults")
    e.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override the metric set, e.g. subject_consistency.default.args.detector=owlv2")
    e.add_argument("--tiny", action="store_true", help="tiny random-weight metric models (tests, CPU demos)")
    e.add_argument("--batch-size", type=int, default=8)
    e.add_argument("--device")
    e.add_argument("--retry-failed", action="store_true", help="re-score samples that failed on some dimension")
    e.add_argument("--no-report", action="store_true")
    e.add_argument("--max-failure-rate", type=fraction_arg, default=1.0, metavar="F",
                   help="exit 1 when more than this fraction of the samples failed on some dimension (default 1.0: "
                        "only a dimension that scored no sample at all is an error)")
    _benchmark_args(e, default=None)
    e.set_defaults(func=cmd_eval)

    r = bs.add_parser("report", help="rebuild tables, radar chart and HTML report of an eval folder")
    r.add_argument("eval_dir")
    r.add_argument("--title")
    r.add_argument("--gallery-per-subset", type=int, default=12)
    r.set_defaults(func=cmd_report)

    c = bs.add_parser("compare", help="side-by-side table and radar overlay of eval folders")
    c.add_argument("runs", nargs="*", help="eval folders (or their summary.json)")
    c.add_argument("--labels", nargs="+")
    c.add_argument("--published", action="store_true", help="add the benchmark's published table (reported "
                                                            "numbers; PSRBench, T2IS-Bench, GEdit-Bench)")
    c.add_argument("--benchmark", help="with --published and no runs: whose table (default psrbench)")
    c.add_argument("--out", required=True)
    c.set_defaults(func=cmd_compare)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def data_root_arg(text: str) -> str:
    """argparse type of ``--data-root``: a folder, or an ``hf://[datasets/]<org>/<name>[@revision][/folder]``
    dataset fetched with ``snapshot_download(allow_patterns=...)`` into the local cache (its local path)."""
    from psrl.data.records import RecordError, local_root

    try:
        return str(local_root(text, what=None))
    except RecordError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def fraction_arg(text: str) -> float:
    """argparse type of ``--max-failure-rate`` (here and in ``psrl reward score``): a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:  # NaN fails too
        raise argparse.ArgumentTypeError(f"must be a fraction in [0, 1], got {text!r}")
    return value


def _ref_index(text: str):
    return text if text == "all" else int(text)


def _benchmark_args(p, default: str | None = "psrbench", *, entries: bool = False) -> None:
    from psrl.bench.benchmarks import BENCHMARKS

    p.add_argument("--benchmark", choices=BENCHMARKS.names(), default=default)
    p.add_argument("--subsets", nargs="+", help="subsets (PSRBench: default all seven; T2IS: categories; GEdit: "
                                                "task groups) or DreamBench subjects")
    if entries:  # the steps that load the benchmark's entries (not eval, which reads results)
        p.add_argument("--reference-index", type=_ref_index, default=0,
                       help="DreamBench: which sorted image of a subject is the reference, or 'all'")


def _load(args, *, warn: bool = False):
    from psrl.bench.loading import load_benchmark

    data = load_benchmark(args.benchmark, args.data_root, args.subsets, reference_index=args.reference_index)
    for issue in data.issues if warn else ():
        if issue.index is None:  # whole-file problems (entry problems are handled by plan_entries)
            print(f"warning: {issue}", file=sys.stderr)
    return data


def cmd_validate(args) -> int:
    """Every entry and every reference image is checked: each image is decoded in full (a truncated file fails)
    and must have a side of at least :data:`psrl.images.MIN_SIDE`, the limit the rewards apply."""
    data = _load(args)
    for issue in data.issues:
        print(f"invalid: {issue}")
    print(f"{len(data.items)} entries in {len(data.raw)} subset(s); {len(data.issues)} issue(s)")
    if not data.items and not data.issues:
        print(f"error: {args.data_root} holds no benchmark entry", file=sys.stderr)
        return 1
    return 1 if data.issues else 0


def cmd_records(args) -> int:
    from psrl.bench.generate import plan_entries
    from psrl.data.records import write_records

    data = _load(args, warn=True)
    valid, skipped = plan_entries(data, skip_invalid=args.skip_invalid, action="write")
    records = [item.record for item in valid]
    write_records(records, args.out)  # reference paths written relative to the root they were resolved against
    print(f"wrote {len(records)} record(s) to {args.out}" + (f"; skipped {len(skipped)} invalid" if skipped else "")
          + f" (reference paths relative to {args.data_root})")
    return 0


def _generate_config(args):
    from psrl.config import ConfigError, apply_overrides, from_dict, load_yaml
    from psrl.data.records import misplaced_data_root
    from psrl.sampling import SamplingConfig
    from psrl.models.config import ModelConfig

    raw = load_yaml(args.config) if args.config else {}
    raw = apply_overrides(raw, args.set)
    model = from_dict(ModelConfig, raw.get("model"), prefix="model", source=args.config)  # a non-mapping: an error
    if why := misplaced_data_root(model.args, "model.args"):  # references come resolved under --data-root
        raise ConfigError(why)
    sampling = from_dict(SamplingConfig, raw.get("sampling"), prefix="sampling", source=args.config)
    return model, sampling


def cmd_generate(args) -> int:
    from psrl.bench.generate import generate_benchmark, plan_entries
    from psrl.bench.provenance import package_versions
    from psrl.bench.results import result_manifest
    from psrl.sharding import shard_from_env
    from psrl.config import to_dict
    from psrl.models.lora import lora_config_for_file

    model_cfg, sampling = _generate_config(args)
    shard = shard_from_env()
    data = _load(args, warn=shard.is_main)
    plan_entries(data, skip_invalid=args.skip_invalid)  # before any model loads: nothing to do is an error
    lora = None
    if args.lora:
        # the one LoRA-path rule (psrl generate's): a checkpoint or run folder works, any rank loads
        model_cfg.lora, lora = lora_config_for_file(model_cfg.lora, args.lora)
    device = shard.device(args.device)
    from psrl.models.factory import build_policy

    policy = build_policy(model_cfg, device)  # the entries' reference paths come resolved by the loader
    if lora is not None:
        policy.load_lora(lora)
    manifest = result_manifest(args.benchmark, data.source, model=to_dict(model_cfg), sampling=to_dict(sampling),
                               lora=str(lora.resolve()) if lora is not None else None,
                               reference_index=args.reference_index if args.benchmark == "dreambench" else None,
                               versions=package_versions())
    bar = _progress(shard, "generate")
    stats = generate_benchmark(policy, data, args.out, seeds=args.seeds, sampling=sampling,
                               batch_size=args.batch_size, shard=shard, skip_invalid=args.skip_invalid,
                               absolute_paths=not args.relative_paths, manifest=manifest, progress=bar)
    if shard.is_main:
        print(f"generated {stats.generated} image(s), {stats.skipped_existing} already there, "
              f"{len(stats.skipped_invalid)} invalid entr(y/ies) skipped -> {args.out}")
    return 0


def _progress(shard, desc: str):
    if not shard.is_main or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    bar = {}

    def update(done: int, total: int) -> None:
        if "bar" not in bar:
            bar["bar"] = tqdm(total=total, desc=desc)
        bar["bar"].n = done
        bar["bar"].refresh()
    return update


def _metrics(args, benchmark: str):
    from psrl.bench.pipeline import default_metrics
    from psrl.bench.tasks import metrics_to_json, parse_metrics
    from psrl.config import ConfigError, apply_overrides, load_yaml

    if args.metrics:
        raw = load_yaml(args.metrics)
        raw = raw.get("metrics", raw)
    else:
        raw = metrics_to_json(default_metrics(benchmark, compat=args.psrbench_compat, judge_model=args.judge_model,
                                              judge_endpoint=args.judge_endpoint, tiny=args.tiny))
    raw = apply_overrides(raw, args.set)
    try:
        return parse_metrics(raw, where=args.metrics or "metrics")
    except ValueError as e:
        raise ConfigError(str(e)) from e


def cmd_eval(args) -> int:
    from psrl.bench.loading import load_results
    from psrl.bench.pipeline import eval_and_report
    from psrl.bench.results import read_manifest
    from psrl.sharding import shard_from_env

    benchmark = args.benchmark or read_manifest(args.results).get("benchmark") or "psrbench"
    metrics = _metrics(args, benchmark)
    # records resolved once, here (reference paths absolute from now on); the root defaults to bench.json's
    samples, issues = load_results(args.results, benchmark=benchmark, data_root=args.data_root,
                                   subsets=args.subsets if benchmark != "dreambench" else None)  # (subjects there)
    out = args.out or str(Path(args.results) / ("eval_compat" if args.psrbench_compat else "eval"))
    shard = shard_from_env()
    if shard.is_main:
        for issue in issues:
            log.warning("result file issue: %s", issue)
    stats, summary = eval_and_report(samples, out, metrics, benchmark=benchmark, results_dir=args.results,
                                     batch_size=args.batch_size, device=shard.device(args.device), shard=shard,
                                     retry_failed=args.retry_failed, report=not args.no_report,
                                     progress=_progress(shard, "eval"))
    if not shard.is_main:
        return 0
    from psrl.bench.summary import failure_problems

    failed = ", ".join(f"{d}: {n}" for d, n in stats.failures.items())
    print(f"scored {stats.computed} sample(s) ({stats.resumed} resumed) in {stats.seconds:.1f}s; "
          f"failures this run: {failed} -> {out}")
    if summary:
        from psrl.bench.report import markdown_table

        print(markdown_table(summary))
    problems = failure_problems(stats.outcomes, args.max_failure_rate)
    for problem in problems:  # the report is written anyway: it is where the failures are read
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems else 0


def cmd_report(args) -> int:
    from psrl.bench.pipeline import report_from_dir
    from psrl.bench.report import markdown_table

    summary = report_from_dir(args.eval_dir, title=args.title,
                              gallery_per_subset=args.gallery_per_subset)
    print(markdown_table(summary))
    return 0


def cmd_compare(args) -> int:
    from psrl.bench.compare import compare, markdown, write_compare

    result = compare(args.runs, labels=args.labels, published=args.published, benchmark=args.benchmark)
    paths = write_compare(result, args.out)
    print(markdown(result))
    print(f"written: {', '.join(str(p) for p in paths.values())}")
    return 0
