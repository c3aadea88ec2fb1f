"""``psrl train``: Flow-GRPO training from a run config; without one, the pocket-world demo
(``psrl/configs/pocket_world.yaml``: GRPO on psrl's pretrained pocket generator, about a minute on 2 CPU cores).

Every run with eval records prints the held-out reward at step 0 and at the end (mean, std, n per reward) and writes
``runs/<name>/samples/before_after.png``: each eval record's references, its step-0 sample and its final sample
(same seeds), upscaled without smoothing so a person can judge the change by eye."""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

_SPARK = "▁▂▃▄▅▆▇█"
DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "pocket_world.yaml"
VIEW_SIDE = 128  # before_after.png cells: every image is scaled (nearest neighbour) to this side


# alike on purpose: every command module opens with its docstring and add_parser (psrl.cli.main's contract)
def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="GRPO-train a policy's LoRA (default: the pocket-world demo on the CPU)",
        description="Flow-GRPO training. Without --config runs the pocket-world demo (the pretrained pocket "
                    "generator, about a minute on 2 CPU cores), prints the held-out reward before and after and "
                    "writes runs/pocket_world/samples/before_after.png. Multi-process: accelerate launch -m psrl "
                    "train --config ...",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  psrl train\n  psrl train --set train.max_steps=20\n"
               "  psrl train --config configs/flux_grpo.yaml --run-name exp1\n"
               "  psrl train --config configs/flux_grpo.yaml --run-name exp1 --resume")
    p.add_argument("--config", help="run config YAML (default: the packaged pocket_world.yaml demo)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.lr=1e-5 (repeatable)")
    p.add_argument("--run-name", help="run folder name under run.output_dir (overrides run.name)")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint of the run")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config, each key with its one-line help, and exit")
    p.set_defaults(func=run)


def sparkline(values: list[float], lo: float, hi: float) -> str:
    """One block per value on the fixed axis ``[lo, hi]`` (not rescaled to the values' own range, so a flat curve
    draws flat); a non-finite value is a space."""
    span = hi - lo if hi > lo else 1.0
    return "".join(" " if v is None or not math.isfinite(v)
                   else _SPARK[min(len(_SPARK) - 1, max(0, int((v - lo) / span * (len(_SPARK) - 1) + 0.5)))]
                   for v in values)


def curve_summary(history: list[dict], first_step: int) -> str:
    """The reward curve on an absolute axis: the sparkline, the axis range it is drawn on (the lowest mean - std
    to the highest mean + std of the run), and the first and last steps' mean +- std over their images."""
    means = [m["reward/total/mean"] for m in history]
    stds = [m.get("reward/total/std", 0.0) for m in history]
    ok = [(m, s) for m, s in zip(means, stds) if math.isfinite(m)]
    if not ok:
        return "reward curve: no finite reward"
    lo = min(m - (s if math.isfinite(s) else 0.0) for m, s in ok)
    hi = max(m + (s if math.isfinite(s) else 0.0) for m, s in ok)
    last = first_step + len(history)
    return (f"reward curve (axis {lo:.4f} .. {hi:.4f}): {sparkline(means, lo, hi)}\n"
            f"  step {first_step + 1}: {means[0]:.4f} +- {stds[0]:.4f}  ->  step {last}: {means[-1]:.4f} +- "
            f"{stds[-1]:.4f}  (training rollouts, mean +- std over the step's images)")


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


def run_overrides(args, overrides: list[str], section: str) -> list[str]:
    """``overrides`` (the ``--set`` pairs) then ``--run-name`` as ``run.name`` and, where the command has it,
    ``--max-steps`` as ``<section>.max_steps``: how psrl train, sft and reward-model train read those flags."""
    out = list(overrides)
    if args.run_name:
        out.append(f"run.name={args.run_name}")
    if getattr(args, "max_steps", None) is not None:
        out.append(f"{section}.max_steps={args.max_steps}")
    return out


def run(args) -> int:
    from psrl.config import dump_with_help
    from psrl.rl.run_config import load_run_config

    cfg = load_run_config(args.config or DEMO_CONFIG, run_overrides(args, args.overrides, "train"))
    if args.print_config:
        print(dump_with_help(cfg), end="")
        return 0

    from psrl.rl.evaluation import eval_snapshot
    from psrl.rl.grpo_trainer import GRPOTrainer

    trainer = GRPOTrainer(cfg, resume=args.resume, progress=sys.stderr.isatty())
    before = None
    if trainer.is_main and trainer.eval_records and trainer.start_step == 0:
        before = eval_snapshot(trainer, 0)  # with eval.at_start, the trainer's step-0 evaluation (run once)
        print(eval_line(before, "held-out eval reward at step 0"))
    history = trainer.train()
    if history:
        from psrl.push import push_finished_run

        push_finished_run(trainer)  # run.push_to_hub
    if trainer.is_main:
        if history:
            print(reward_table(history, trainer.start_step))
            print(curve_summary(history, trainer.start_step))
            if cfg.monitor.enabled:
                from psrl.rl.monitor import alarm_lines

                print("\n".join(alarm_lines(trainer.monitor.alarms, cfg.monitor)))
            if trainer.eval_records:
                done = trainer.start_step + len(history)
                after = eval_snapshot(trainer, done)  # the trainer's final evaluation when it ran at this step
                print(eval_line(after, f"held-out eval reward at step {done}"))
                if before is not None:
                    path = trainer.run_dir / "samples" / "before_after.png"
                    save_before_after(trainer, before, after, done, path)
                    print(f"before/after samples: {path}")
        else:
            print(f"nothing to do: the run is already at step {trainer.start_step} of {cfg.train.max_steps} "
                  "(raise train.max_steps to continue it)", file=sys.stderr)
        print(f"run directory: {trainer.run_dir}")
    return 0 if history else 1  # a run that did nothing does not report success


def eval_line(snapshot: dict, label: str) -> str:
    """``label: name mean +- std (n scored of N)`` per reward; NaN (unscorable) samples are counted, not averaged."""
    parts = []
    for name, scores in snapshot["scores"].items():
        ok = scores[scores.isfinite()]
        n, total = int(ok.numel()), int(scores.numel())
        if n:
            std = float(ok.std()) if n > 1 else 0.0
            parts.append(f"{name} {float(ok.mean()):.4f} +- {std:.4f} (n={n}{'' if n == total else f' of {total}'})")
        else:
            parts.append(f"{name}: no sample could be scored (n=0 of {total})")
    return f"{label}: " + "; ".join(parts)


def save_before_after(trainer, before: dict, after: dict, step: int, path) -> Path:
    """``path``: one row per eval record: its references, its step-0 sample, its sample at ``step``; every cell
    scaled to :data:`VIEW_SIDE` with nearest-neighbour (pixels stay visible), a header row names the columns."""
    from PIL import Image, ImageDraw

    from psrl.images import load_image, save_image, tensor_to_pil

    records = trainer.eval_records
    n_refs = max((len(r.subjects) for r in records), default=0)
    side, gap, header = VIEW_SIDE, 4, 16
    cols = n_refs + 2
    canvas = Image.new("RGB", (cols * (side + gap) - gap, header + len(records) * (side + gap) - gap), "white")
    draw = ImageDraw.Draw(canvas)
    titles = [f"reference {k + 1}" for k in range(n_refs)] + ["step 0", f"step {step}"]
    for c, title in enumerate(titles):
        draw.text((c * (side + gap) + 2, 2), title, fill="black")
    for row, rec in enumerate(records):
        y = header + row * (side + gap)
        cells = [load_image(s.image) if s.image else None for s in rec.subjects]  # resolved where loaded
        cells += [None] * (n_refs - len(cells))
        cells += [tensor_to_pil(before["images"][row]), tensor_to_pil(after["images"][row])]
        for c, img in enumerate(cells):
            if img is not None:
                canvas.paste(img.resize((side, side), Image.NEAREST), (c * (side + gap), y))
    return save_image(canvas, path)
