"""``psrl reward score``: score generated images against their records with any registered reward, write one JSON
line per sample (score, failure, details) and print a summary. ``psrl reward list`` shows each registered reward
with its arguments (type, default, help), score range and NaN policy, read from the reward class's docstring.

Generated images are looked up as ``<images>/<record id>.{png,jpg,jpeg,webp}`` and decoded by
:func:`psrl.images.load_image`; a missing or unreadable image is a counted failure of that sample, not an abort.
The command exits 1 when no sample was scored, or more than ``--max-failure-rate`` of them failed, with the failure
reasons printed whole.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from psrl.cli.bench import fraction_arg
from psrl.images import IMAGE_SUFFIXES, group_by_size


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("reward", help="score images with a reward, list rewards")
    sub = p.add_subparsers(dest="reward_cmd", metavar="CMD")
    s = sub.add_parser("score", help="score <images>/<id>.png for every record; write per-sample JSONL")
    s.add_argument("--reward", required=True, help="registered reward name (see `psrl reward list`) or module:attr")
    s.add_argument("--args", default="{}", help='reward args as a JSON object, e.g. \'{"path": "tiny"}\'')
    s.add_argument("--records", required=True, help="records JSONL")
    s.add_argument("--images", required=True, help="directory of generated images named <record id>.png")
    s.add_argument("--data-root", help="root of the records' reference paths (default: the records file's folder)")
    s.add_argument("--out", help="output JSONL (default: <images>/scores_<reward>.jsonl)")
    s.add_argument("--device", default="cpu")
    s.add_argument("--batch-size", type=int, default=8)
    s.add_argument("--max-failure-rate", type=fraction_arg, default=1.0, metavar="F",
                   help="exit 1 when more than this fraction of the samples failed (default 1.0: only when no "
                        "sample was scored)")
    s.set_defaults(func=_score)
    ls = sub.add_parser("list", help="list the registered rewards with their arguments, score range and NaN policy")
    ls.add_argument("--names", action="store_true", help="only the names, one per line")
    ls.add_argument("name", nargs="*", help="show only these rewards")
    ls.set_defaults(func=_list)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def _list(args) -> int:
    from psrl.errors import PsrlError
    from psrl.rewards.base import REWARDS

    names = list(getattr(args, "name", None) or REWARDS.names())
    unknown = [n for n in names if n not in REWARDS]
    if unknown:
        raise PsrlError(f"psrl reward list: unknown reward {unknown[0]!r}; registered: {', '.join(REWARDS.names())}")
    if getattr(args, "names", False):
        print("\n".join(names))
        return 0
    blocks = []
    for name in names:
        doc = reward_doc(REWARDS.get(name))
        lines = [f"{name}  ({doc['target']})", f"  {doc['summary']}",
                 f"  score range: {(doc['score_range'] or '').replace('``', '')}",
                 f"  NaN policy: {(doc['nan_policy'] or '').replace('``', '')}", "  args:"]
        for arg in doc["args"]:
            default = "" if arg["default"] is None else f" = {arg['default']}"
            lines.append(f"    {arg['name']}: {arg['type']}{default}  # {(arg['help'] or '').replace('``', '')}")
        blocks.append("\n".join(lines))
    print("\n\n".join(blocks))
    return 0


def reward_doc(cls) -> dict:
    """What ``psrl reward list`` shows of a reward class: ``target`` (module:qualname), ``summary`` (the
    docstring's first sentence), ``score_range`` and ``nan_policy`` (its ``Score range:`` and ``NaN policy:``
    paragraphs, None when missing), and ``args``: one ``{name, type, default, help}`` per constructor parameter,
    the type and default from the signature (``default`` None when required; ``**kw`` parameters shown as such)
    and the help from the ``Args:`` entries of the class docstring or of a base class (None when missing)."""
    import inspect

    from psrl.config import doc_entries, doc_paragraph

    doc = inspect.cleandoc(cls.__doc__ or "")
    entries: dict[str, str] = {}
    for klass in reversed(cls.__mro__):  # a subclass's entries override its base's
        entries.update(doc_entries(inspect.cleandoc(klass.__doc__ or ""), "Args"))
    args = []
    for p in inspect.signature(cls).parameters.values():
        if p.kind is p.VAR_POSITIONAL:
            continue
        annotation = p.annotation if p.annotation is not p.empty else None
        if isinstance(annotation, type):
            annotation = annotation.__name__
        if p.kind is p.VAR_KEYWORD:
            type_name, default = "options", None
        else:
            type_name = str(annotation) if annotation is not None else (
                type(p.default).__name__ if p.default not in (p.empty, None) else "any")
            default = None if p.default is p.empty else repr(p.default)
        args.append({"name": ("**" if p.kind is p.VAR_KEYWORD else "") + p.name, "type": type_name,
                     "default": default, "help": entries.get(p.name)})
    summary = " ".join(doc.split("\n\n", 1)[0].split()).replace("``", "") if doc else None
    return {"target": f"{cls.__module__}:{cls.__qualname__}", "summary": summary, "args": args,
            "score_range": doc_paragraph(doc, "Score range"), "nan_policy": doc_paragraph(doc, "NaN policy")}


def reward_from_args(args):
    """The reward ``--reward`` built with ``--args`` (a JSON object) on ``--device`` (here and in ``psrl
    reward-model eval``).

    Raises:
        PsrlError: ``--args`` is not a JSON object, or the reward cannot be built (unknown name or argument, a bad
            value).
        ConfigError: ``--args`` holds ``data_root`` (image paths are resolved where the records are loaded).
    """
    from psrl.config import ConfigError
    from psrl.data.records import misplaced_data_root
    from psrl.errors import PsrlError
    from psrl.rewards.base import build_reward

    try:
        reward_args = json.loads(args.args)
    except json.JSONDecodeError as e:
        raise PsrlError(f"--args is not valid JSON: {e}") from e
    if not isinstance(reward_args, dict):
        raise PsrlError(f"--args must be a JSON object, got {args.args!r}")
    if why := misplaced_data_root(reward_args, "--args"):
        raise ConfigError(why)
    try:
        return build_reward(args.reward, reward_args, device=args.device)
    except (KeyError, TypeError, ValueError) as e:  # unknown name, unknown or bad arg: a user error, no traceback
        raise PsrlError(f"cannot build reward {args.reward!r} with args {reward_args}: {e}") from e


def _load_image(images_dir: Path, rid: str):
    """``(image tensor [3, H, W] in [0, 1], None)`` or ``(None, reason)``, decoded by psrl's one loader."""
    from psrl.data.records import image_filename
    from psrl.images import ImageLoadError, load_image, pil_to_tensor

    for suffix in IMAGE_SUFFIXES:
        p = images_dir / image_filename(rid, suffix)  # the name psrl generate wrote; never outside images_dir
        if p.is_file():
            try:
                return pil_to_tensor(load_image(p)), None
            except ImageLoadError as e:
                return None, f"generated image {e}"
    return None, f"generated image not found: {images_dir / image_filename(rid)}"


def score_records(reward, records, images_dir: Path, batch_size: int):
    """Yield ``(record, score, failure, details)`` per record, batching same-size images."""
    import torch

    from psrl.rewards.base import to_jsonable
    from psrl.serve.wire import slice_output

    for start in range(0, len(records), batch_size):
        chunk = records[start:start + batch_size]
        loaded = [_load_image(images_dir, r.id) for r in chunk]
        results: dict[int, tuple] = {i: (float("nan"), why, {}) for i, (img, why) in enumerate(loaded) if img is None}
        scorable = [i for i, (img, _) in enumerate(loaded) if img is not None]
        for idx in group_by_size(scorable, lambda i: tuple(loaded[i][0].shape)):
            out = reward(torch.stack([loaded[i][0] for i in idx]), [chunk[i] for i in idx])
            for row, i in enumerate(idx):
                one = slice_output(out, row, row + 1)
                details = {k: (v[0] if isinstance(v, list) and len(v) == 1 else v)
                           for k, v in to_jsonable(one.details).items()}
                results[i] = (float(one.scores[0]), one.failures[0], details)
        for i, rec in enumerate(chunk):
            yield (rec, *results[i])


def _score(args) -> int:
    from psrl.bench.summary import dimension_outcomes, failure_problems
    from psrl.data.records import load_records
    from psrl.errors import PsrlError
    from psrl.fileio import atomic_path

    records = load_records(args.records, args.data_root)  # reference paths resolved once, here
    images_dir = Path(args.images)
    if not images_dir.is_dir():
        raise PsrlError(f"--images: not a directory: {images_dir}")
    if args.batch_size < 1:
        raise PsrlError(f"--batch-size must be >= 1, got {args.batch_size}")
    reward = reward_from_args(args)
    out_path = Path(args.out) if args.out else images_dir / f"scores_{args.reward.replace(':', '_')}.jsonl"
    scores, rows = [], []
    with atomic_path(out_path) as tmp, tmp.open("w") as f:
        for rec, score, failure, details in score_records(reward, records, images_dir, args.batch_size):
            ok = math.isfinite(score)
            f.write(json.dumps({"id": rec.id, "score": score if ok else None, "failure": failure,
                                "details": details}) + "\n")
            if ok:
                scores.append(score)
            rows.append({"scores": {args.reward: score if ok else None}, "failures": {args.reward: failure}})
    n, k = len(records), len(scores)
    mean = sum(scores) / k if k else float("nan")
    std = math.sqrt(sum((s - mean) ** 2 for s in scores) / k) if k else float("nan")
    print(f"{args.reward}: {k}/{n} scored, {n - k} failed; mean {mean:.4f} std {std:.4f}"
          + (f" min {min(scores):.4f} max {max(scores):.4f}" if k else ""))
    outcome = dimension_outcomes(rows, [args.reward])
    for count, reason in outcome[args.reward]["reasons"][:5]:
        print(f"  {count} x {reason}")
    print(f"wrote {out_path}")
    problems = failure_problems(outcome, args.max_failure_rate)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems else 0
