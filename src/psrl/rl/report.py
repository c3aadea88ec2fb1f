"""``psrl report RUN_DIR``: one page of a training run, as self-contained HTML (inline SVG curves, eval grids
embedded as base64) and Markdown (tables, grids linked by relative path).

It reads only what the trainer writes into the run folder: ``metrics.jsonl`` (:class:`psrl.rl.tracking.Tracker`),
``alarms.jsonl`` (:class:`psrl.rl.monitor.TrainingMonitor`) and ``samples/step-<N>.png`` (the eval grids).
Sections: the trained reward curve per step; the eval curves of the trained and held-out rewards; the eval image
statistics; KL and clip fraction (alarm steps marked by dashed red lines); the alarms; the eval grids over time
side by side, step 0 (the untrained policy) first.
"""
from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from psrl.errors import PsrlError
from psrl.fileio import write_text_atomic
from psrl.images import ImageLoadError, load_image
from psrl.rl.monitor import HELDOUT_PREFIX, STAT_PREFIX, heldout_eval_rewards, trained_eval_rewards
from psrl.rl.tracking import read_metrics

logger = logging.getLogger(__name__)

_GRID = re.compile(r"step-(\d+)\.png")
_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
GRID_SIDE = 384  # an eval grid is shown at most this many pixels wide (small grids are scaled up, pixelated)


@dataclass
class RunData:
    """What a report shows: ``steps`` (metrics rows of training steps), ``evals`` (rows with ``eval/*`` keys, step 0
    first when the run evaluated before training), ``alarms`` (rows of ``alarms.jsonl``), ``grids`` ([(step, path)]
    ascending) and the run's ``name``."""

    run_dir: Path
    name: str
    steps: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    alarms: list[dict] = field(default_factory=list)
    grids: list[tuple[int, Path]] = field(default_factory=list)


def load_run(run_dir: str | Path) -> RunData:
    """Read a run folder.

    Raises:
        PsrlError: ``run_dir`` is not a folder or has no ``metrics.jsonl`` (one line naming the path).
    """
    root = Path(run_dir)
    metrics = root / "metrics.jsonl"
    if not root.is_dir():
        raise PsrlError(f"psrl report: {root} is not a run folder")
    if not metrics.is_file():
        raise PsrlError(f"psrl report: {metrics} not found (is {root} a psrl train run folder?)")
    rows = read_metrics(metrics)
    data = RunData(run_dir=root, name=root.resolve().name)
    data.steps = [r for r in rows if "reward/total/mean" in r]
    data.evals = [r for r in rows if any(k.startswith("eval/") for k in r)]
    alarms = root / "alarms.jsonl"
    if alarms.is_file():
        data.alarms = [json.loads(x) for x in alarms.read_text().splitlines() if x.strip()]
    samples = root / "samples"
    if samples.is_dir():
        found = [(int(m.group(1)), p) for p in samples.iterdir() if (m := _GRID.fullmatch(p.name)) and p.is_file()]
        data.grids = sorted(found)
    return data


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _fmt(v) -> str:
    return f"{v:.4g}" if _finite(v) else "n/a"


def series(rows: list[dict], keys: list[str]) -> dict[str, list[tuple[float, float]]]:
    """``{key: [(step, value)]}`` of the finite values of ``keys`` in ``rows``."""
    return {k: [(r["step"], r[k]) for r in rows if _finite(r.get(k))] for k in keys}


def svg_chart(title: str, lines: dict[str, list[tuple[float, float]]], marks: tuple[float, ...] = (),
              width: int = 460, height: int = 220) -> str:
    """A line chart as inline SVG (no plotting library, renders in any browser): one polyline and legend entry per
    series, axes labelled with the step and value ranges, a dashed red line at each step in ``marks`` (alarms).
    An empty chart says so."""
    lines = {k: v for k, v in lines.items() if v}
    head = f"<figure class=chart><figcaption>{html.escape(title)}</figcaption>"
    if not lines:
        return head + "<p class=empty>no data</p></figure>"
    xs = [x for pts in lines.values() for x, _ in pts]
    ys = [y for pts in lines.values() for _, y in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if y1 - y0 < 1e-12:
        y0, y1 = y0 - 0.5 * (abs(y0) or 1.0) * 0.01, y1 + 0.5 * (abs(y1) or 1.0) * 0.01
    pad_l, pad_r, pad_t, pad_b = 56, 10, 10, 26
    w, h = width - pad_l - pad_r, height - pad_t - pad_b

    def px(x, y):
        fx = (x - x0) / (x1 - x0) if x1 > x0 else 0.5
        return pad_l + fx * w, pad_t + (1 - (y - y0) / (y1 - y0)) * h

    out = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height + 18 * len(lines)}'>",
           f"<rect x='{pad_l}' y='{pad_t}' width='{w}' height='{h}' fill='#fafafa' stroke='#999'/>",
           f"<text x='{pad_l - 4}' y='{pad_t + 10}' text-anchor='end' font-size='10'>{y1:.4g}</text>",
           f"<text x='{pad_l - 4}' y='{pad_t + h}' text-anchor='end' font-size='10'>{y0:.4g}</text>",
           f"<text x='{pad_l}' y='{pad_t + h + 14}' font-size='10'>step {x0:g}</text>",
           f"<text x='{pad_l + w}' y='{pad_t + h + 14}' text-anchor='end' font-size='10'>step {x1:g}</text>"]
    for m in marks:
        if x0 <= m <= x1:
            a, _ = px(m, y0)
            out.append(f"<line class=mark x1='{a:.1f}' x2='{a:.1f}' y1='{pad_t}' y2='{pad_t + h}' stroke='#d00' "
                       "stroke-dasharray='4 3'/>")
    for i, (name, pts) in enumerate(lines.items()):
        color = _COLORS[i % len(_COLORS)]
        xy = [px(x, y) for x, y in pts]
        coords = " ".join(f"{a:.1f},{b:.1f}" for a, b in xy)
        out.append(f"<polyline fill='none' stroke='{color}' stroke-width='2' points='{coords}'/>")
        out.extend(f"<circle cx='{a:.1f}' cy='{b:.1f}' r='2.5' fill='{color}'/>" for a, b in xy)
        ly = height + 14 + 18 * i - 4
        out.append(f"<rect x='{pad_l}' y='{ly - 9}' width='12' height='4' fill='{color}'/>"
                   f"<text x='{pad_l + 18}' y='{ly - 4}' font-size='11'>{html.escape(name)}</text>")
    out.append("</svg>")
    return head + "".join(out) + "</figure>"


def _eval_keys(data: RunData) -> tuple[list[str], list[str], list[str]]:
    trained = sorted({f"eval/{n}/mean" for r in data.evals for n in trained_eval_rewards(r)})
    heldout = sorted({HELDOUT_PREFIX + n for r in data.evals for n in heldout_eval_rewards(r)})
    stats = sorted({k for r in data.evals for k in r if k.startswith(STAT_PREFIX)})
    return trained, heldout, stats


def _grid_b64(path: Path) -> str | None:
    try:
        im = load_image(path)
    except ImageLoadError as e:  # shown as missing; the other grids still render
        logger.warning("report: cannot read %s: %s", path, e)
        return None
    im.thumbnail((1024, 1024))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _table_html(rows: list[dict], keys: list[str]) -> str:
    if not rows or not keys:
        return "<p class=empty>no evaluation</p>"
    head = "<tr><th>step</th>" + "".join(f"<th>{html.escape(k)}</th>" for k in keys) + "</tr>"
    body = "".join("<tr><td>" + str(r["step"]) + "</td>" + "".join(f"<td>{_fmt(r.get(k))}</td>" for k in keys)
                   + "</tr>" for r in rows)
    return f"<table>{head}{body}</table>"


_CSS = """body{font-family:sans-serif;margin:20px;color:#222} h2{margin-top:28px}
table{border-collapse:collapse;font-size:12px} td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}
.charts{display:flex;flex-wrap:wrap;gap:16px} figure{margin:0} figcaption{font-size:12px;color:#444}
.grids{display:flex;gap:12px;overflow-x:auto;align-items:flex-start}
.grids img{image-rendering:pixelated;border:1px solid #ccc} .alarm{color:#b00} .ok{color:#070} .empty{color:#888}"""


def html_report(data: RunData) -> str:
    """The self-contained HTML page of a run."""
    trained, heldout, stats = _eval_keys(data)
    last = data.steps[-1]["step"] if data.steps else 0
    marks = tuple(a["step"] for a in data.alarms if _finite(a.get("step")))
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>psrl run {html.escape(data.name)}</title>"
           f"<style>{_CSS}</style></head><body><h1>psrl run {html.escape(data.name)}</h1>",
           f"<p>{len(data.steps)} training step(s) logged (last: {last}); {len(data.evals)} evaluation(s); "
           f"{len(data.alarms)} alarm(s).</p>", "<h2>Curves</h2><div class=charts>",
           svg_chart("trained reward (per step, all rollouts)", series(data.steps, ["reward/total/mean"]), marks),
           svg_chart("eval: trained rewards", series(data.evals, trained), marks),
           svg_chart("eval: held-out rewards", series(data.evals, heldout), marks),
           svg_chart("KL and clip fraction", series(data.steps, ["approx_kl", "clipfrac"]), marks)]
    out += [svg_chart(k[len(STAT_PREFIX):], series(data.evals, [k]), marks) for k in stats]
    out.append("</div><h2>Alarms</h2>")
    if data.alarms:
        out.append("<table><tr><th>step</th><th>alarm</th><th>message</th></tr>" + "".join(
            f"<tr class=alarm><td>{a.get('step')}</td><td>{html.escape(str(a.get('name')))}</td>"
            f"<td style='text-align:left'>{html.escape(str(a.get('message')))}</td></tr>" for a in data.alarms)
            + "</table>")
    else:
        out.append("<p class=ok>no alarm</p>")
    out += ["<h2>Evaluation</h2>", _table_html(data.evals, trained + heldout + stats), "<h2>Eval grids</h2>",
            "<div class=grids>"]
    for step, path in data.grids:
        src = _grid_b64(path)
        label = f"step {step}" + (" (before training)" if step == 0 else "")
        img = f"<img src='{src}' alt='{html.escape(label)}' width='{GRID_SIDE}'>" if src else "<p>unreadable</p>"
        out.append(f"<figure>{img}<figcaption>{html.escape(label)}</figcaption></figure>")
    if not data.grids:
        out.append("<p class=empty>no eval grid (eval.every was 0)</p>")
    out.append("</div></body></html>")
    return "\n".join(out)


def markdown_report(data: RunData, out_dir: Path) -> str:
    """The Markdown page of a run; grids are linked relative to ``out_dir`` (where the page is written)."""
    trained, heldout, stats = _eval_keys(data)
    lines = [f"# psrl run {data.name}", "",
             f"{len(data.steps)} training step(s) logged; {len(data.evals)} evaluation(s); {len(data.alarms)} "
             "alarm(s).", "", "## Trained reward", "", "| step | reward/total/mean | approx_kl | clipfrac |",
             "|---|---|---|---|"]
    lines += [f"| {r['step']} | {_fmt(r.get('reward/total/mean'))} | {_fmt(r.get('approx_kl'))} | "
              f"{_fmt(r.get('clipfrac'))} |" for r in data.steps]
    keys = trained + heldout + stats
    lines += ["", "## Evaluation", ""]
    if data.evals and keys:
        lines += ["| step | " + " | ".join(f"`{k}`" for k in keys) + " |", "|---|" + "---|" * len(keys)]
        lines += [f"| {r['step']} | " + " | ".join(_fmt(r.get(k)) for k in keys) + " |" for r in data.evals]
    else:
        lines.append("No evaluation (eval.every was 0).")
    lines += ["", "## Alarms", ""]
    lines += [f"- step {a.get('step')}: **{a.get('name')}**: {a.get('message')}" for a in data.alarms] or \
        ["No alarm."]
    lines += ["", "## Eval grids", ""]
    if data.grids:
        rel = [Path(os.path.relpath(p, out_dir)).as_posix() for _, p in data.grids]
        lines += ["| " + " | ".join(f"step {s}" for s, _ in data.grids) + " |", "|" + "---|" * len(data.grids),
                  "| " + " | ".join(f"![step {s}]({r})" for (s, _), r in zip(data.grids, rel)) + " |"]
    else:
        lines.append("No eval grid (eval.every was 0).")
    return "\n".join(lines) + "\n"


def write_run_report(run_dir: str | Path, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Write ``report.html`` and ``report.md`` for ``run_dir`` into ``out_dir`` (default: the run folder).

    Raises:
        PsrlError: not a run folder (see :func:`load_run`).
    """
    data = load_run(run_dir)
    out = Path(out_dir) if out_dir is not None else data.run_dir
    out.mkdir(parents=True, exist_ok=True)
    paths = {"html": out / "report.html", "md": out / "report.md"}
    write_text_atomic(paths["html"], html_report(data))
    write_text_atomic(paths["md"], markdown_report(data, out))
    return paths


__all__ = ["RunData", "html_report", "load_run", "markdown_report", "series", "svg_chart", "write_run_report"]
