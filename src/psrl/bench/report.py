"""Reports of one evaluation: markdown / CSV / JSON tables, a radar chart PNG and a self-contained HTML page with a
gallery (references, result, per-sample scores and judge text, images embedded as base64)."""
from __future__ import annotations

import base64
import csv
import html
import io
import logging
import math
from collections.abc import Sequence
from pathlib import Path

from psrl.bench.tasks import DIMENSION_LABELS
from psrl.fileio import write_bytes_atomic, write_json_atomic, write_text_atomic
from psrl.images import ImageLoadError, load_image

log = logging.getLogger(__name__)


def _fmt(v, digits: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}f}"


def _cell(c: dict) -> str:
    text = _fmt(c["mean"])
    return f"{text} ({c['failed']} failed)" if c.get("failed") else text


def markdown_table(summary: dict) -> str:
    dims = summary["dimensions"]
    head = "| subset | " + " | ".join(DIMENSION_LABELS.get(d, d) for d in dims) + " | samples |"
    lines = [head, "|" + "---|" * (len(dims) + 2)]
    for subset in summary["subsets"]:
        cells = [_cell(summary["table"][subset][d]) for d in dims]
        total = max(summary["table"][subset][d]["total"] for d in dims)
        lines.append(f"| {subset} | " + " | ".join(cells) + f" | {total} |")
    overall = [_cell(summary["overall"][d]) for d in dims]
    lines.append("| **Overall** | " + " | ".join(overall) + f" | {summary['num_samples']} |")
    rule = ("mean over every scored sample" if summary.get("overall_rule") == "sample_mean"
            else "mean of the subset means")
    notes = ["", (f"Overall = {rule}. Benchmark {summary['benchmark']}, seeds {summary['seeds']}, "
                  f"config hash {summary.get('config_hash', 'n/a')}.")]
    for dim in dims:
        if not summary["overall"][dim].get("n"):
            notes.append(f"- {DIMENSION_LABELS.get(dim, dim)}: no scored sample (the column is n/a, not 0).")
    for dim, reasons in summary.get("failure_reasons", {}).items():
        notes.append(f"- {DIMENSION_LABELS.get(dim, dim)} failures: " +
                     ", ".join(f"{k} x{v}" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1])))
    return "\n".join(lines + notes) + "\n"


def write_csv(summary: dict, path: Path) -> None:
    buf = io.StringIO(newline="")  # built in memory, then written atomically
    w = csv.writer(buf)
    w.writerow(["subset", "dimension", "mean", "scored", "failed", "total"])
    dims = summary["dimensions"]
    cells = [(s, d, summary["table"][s][d]) for s in summary["subsets"] for d in dims]
    for subset, d, c in cells + [("Overall", d, summary["overall"][d]) for d in dims]:
        w.writerow([subset, d, "" if c["mean"] is None else f"{c['mean']:.6f}", c["n"], c["failed"],
                    c["n"] + c["failed"]])
    write_text_atomic(path, buf.getvalue())


def radar_chart(series: Sequence[tuple[str, dict]], subsets: Sequence[str], dimensions: Sequence[str],
                path: Path | None = None, *, note: str | None = None) -> bytes:
    """:func:`score_figure` as PNG bytes (also written to ``path``)."""
    import matplotlib.pyplot as plt

    fig = score_figure(series, subsets, dimensions, note=note)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    data = buf.getvalue()
    if path is not None:
        write_bytes_atomic(path, data)
    return data


def score_figure(series: Sequence[tuple[str, dict]], subsets: Sequence[str], dimensions: Sequence[str], *,
                 note: str | None = None):
    """A matplotlib figure with one panel per dimension and one polygon (or bar group) per series (``label ->
    {dim: {subset: value}}``), like the PSR paper's radar figure (arXiv 2512.01236).

    With 3 or more subsets each panel is a radar with one axis per subset; with fewer (a radar of 1 or 2 axes is a
    point or a line) each panel is a grouped bar chart, a missing value drawn as no bar and labelled n/a. A panel
    whose dimension has no scored value in any series says "no scored sample" instead of drawing an empty axis.
    ``note`` is printed under the panels (e.g. a warning that overall scores cover different subsets)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    radar = len(subsets) >= 3
    fig, axes = plt.subplots(1, max(len(dimensions), 1), subplot_kw={"polar": True} if radar else {},
                             figsize=(4.2 * max(len(dimensions), 1), 4.6 + (0.4 if note else 0.0)), squeeze=False)
    for ax, dim in zip(axes[0], dimensions):
        values = [[_finite(vals.get(dim, {}).get(s)) for s in subsets] for _, vals in series]
        ax.set_title(DIMENSION_LABELS.get(dim, dim), fontsize=11, pad=14)
        if not any(v is not None for row in values for v in row):
            ax.set_xticks([])
            ax.set_yticks([])
            ax.text(0.5, 0.5, "no scored sample", transform=ax.transAxes, ha="center", va="center", fontsize=10,
                    color="#b00")
            continue
        (_radar_panel if radar else _bar_panel)(ax, [label for label, _ in series], values, subsets)
        ax.set_xticklabels(list(subsets), fontsize=8)
        finite = [v for row in values for v in row if v is not None]
        top, low = max(finite), min(finite)
        # all scored values 0: a unit axis, not a 0-0.001 one; a dimension that can go negative (PocketBench's
        # SC gain) keeps its points
        ax.set_ylim(low * 1.1 if low < 0 else 0.0, top * 1.1 if top > 0 else 1.0)
        ax.tick_params(axis="y", labelsize=7)
    handles, labels = [], []
    for ax in axes[0]:
        handles, labels = ax.get_legend_handles_labels()
        if handles:
            break
    if handles:
        fig.legend(handles, labels, loc="upper left", fontsize=8, frameon=False)
    if note:
        fig.text(0.5, 0.01, note, ha="center", va="bottom", fontsize=8, color="#b00", wrap=True)
    fig.tight_layout(rect=(0, 0.06 if note else 0, 1, 0.9))
    return fig


def _finite(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def _radar_panel(ax, labels: list[str], values: list[list[float | None]], subsets: Sequence[str]) -> None:
    import numpy as np

    angles = np.linspace(0, 2 * np.pi, len(subsets), endpoint=False).tolist()
    for label, row in zip(labels, values):
        vals = [0.0 if v is None else v for v in row]  # a radar needs every axis; the tables show n/a
        ax.plot(angles + angles[:1], vals + vals[:1], linewidth=1.6, label=label)
        ax.fill(angles + angles[:1], vals + vals[:1], alpha=0.12)
    ax.set_xticks(angles)


def _bar_panel(ax, labels: list[str], values: list[list[float | None]], subsets: Sequence[str]) -> None:
    width = 0.8 / max(len(labels), 1)
    for i, (label, row) in enumerate(zip(labels, values)):
        xs = [j + (i - (len(labels) - 1) / 2) * width for j in range(len(subsets))]
        bars = ax.bar([x for x, v in zip(xs, row) if v is not None], [v for v in row if v is not None], width,
                      label=label)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
        for x, v in zip(xs, row):
            if v is None:
                ax.text(x, 0, "n/a", ha="center", va="bottom", fontsize=7, color="#777")
    ax.set_xticks(range(len(subsets)))


def series_of(summary: dict) -> dict:
    """``{dim: {subset: mean}}`` of a summary (for radar charts)."""
    return {d: {s: summary["table"][s][d]["mean"] for s in summary["subsets"]} for d in summary["dimensions"]}


def _thumb_b64(path: str | Path | None, size: int = 192) -> str | None:
    if not path:
        return None
    try:
        im = load_image(path)
    except ImageLoadError as e:  # a missing or unreadable image is shown as missing in the gallery
        log.debug("gallery: cannot read %s: %s", path, e)
        return None
    im.thumbnail((size, size))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _img_tag(src: str | None, caption: str, css: str = "") -> str:
    cap = html.escape(caption)
    if src is None:
        return f'<figure class="missing"><div>missing</div><figcaption>{cap}</figcaption></figure>'
    return f'<figure class="{css}"><img src="{src}" alt="{cap}"><figcaption>{cap}</figcaption></figure>'


def _details_html(details: dict) -> str:
    parts = []
    for name, value in (details or {}).items():
        if isinstance(value, str):
            parts.append(f"<details><summary>{html.escape(name)}</summary><pre>{html.escape(value)}</pre></details>")
        elif isinstance(value, (int, float)) or value is None:
            parts.append(f"<span class=kv>{html.escape(name)}={_fmt(value) if isinstance(value, float) else value}"
                         "</span>")
        else:
            text = str(value)
            parts.append(f"<span class=kv>{html.escape(name)}={html.escape(text[:160])}</span>")
    return " ".join(parts)


_CSS = """
body{font-family:system-ui,sans-serif;margin:24px;background:#fafafa;color:#222}
h1{font-size:22px} table{border-collapse:collapse;margin:12px 0;background:#fff}
td,th{border:1px solid #ccc;padding:4px 10px;text-align:right} th:first-child,td:first-child{text-align:left}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:10px;margin:10px 0}
.row{display:flex;gap:8px;flex-wrap:wrap;align-items:flex-start}
figure{margin:0;text-align:center} figure img{width:128px;height:auto;border:1px solid #bbb;image-rendering:pixelated}
figure.result img{width:192px} img.radar{max-width:100%}
figure.missing div{width:128px;height:128px;background:#eee;display:flex;align-items:center;justify-content:center}
figcaption{font-size:11px;color:#555} .fail{color:#b00} .kv{font-size:11px;color:#444;margin-right:6px}
pre{white-space:pre-wrap;font-size:11px;max-width:900px} .score{font-size:13px;margin:2px 0}
"""


def html_report(summary: dict, rows: Sequence[dict], radar_png: bytes | None, *, title: str,
                gallery_per_subset: int = 12) -> str:
    """The self-contained HTML page: tables, radar chart and a gallery of up to ``gallery_per_subset`` rows a
    subset, the thumbnails read from each row's ``reference_images`` (absolute paths, resolved when the records
    were loaded) and ``image``; a missing or unreadable image is drawn as "missing"."""
    dims = summary["dimensions"]
    out = [(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>")]
    out.append(f"<p>benchmark {html.escape(summary['benchmark'])} &middot; {summary['num_samples']} samples &middot; "
               f"seeds {summary['seeds']} &middot; config hash {html.escape(str(summary.get('config_hash')))}</p>")
    out.append("<table><tr><th>subset</th>" + "".join(f"<th>{DIMENSION_LABELS.get(d, d)}</th>" for d in dims) +
               "</tr>")
    for s in summary["subsets"]:
        out.append(f"<tr><td>{html.escape(s)}</td>" +
                   "".join(f"<td>{html.escape(_cell(summary['table'][s][d]))}</td>" for d in dims) + "</tr>")
    out.append("<tr><th>Overall</th>" + "".join(f"<th>{html.escape(_cell(summary['overall'][d]))}</th>"
                                                for d in dims) + "</tr></table>")
    if radar_png:
        b64 = base64.b64encode(radar_png).decode()
        out.append(f"<img class=radar alt='radar chart' src='data:image/png;base64,{b64}'>")
    out.append("<h2>Gallery</h2>")
    shown: dict[str, int] = {}
    for row in rows:
        if shown.get(row["subset"], 0) >= gallery_per_subset:
            continue
        shown[row["subset"]] = shown.get(row["subset"], 0) + 1
        refs = row.get("references") or []
        phrases = row.get("phrases") or [""] * len(refs)
        images = row.get("reference_images") or [None] * len(refs)
        figs = [_img_tag(_thumb_b64(image), f"reference: {phrase or ref}")
                for ref, phrase, image in zip(refs, phrases, images)]
        figs.append(_img_tag(_thumb_b64(row.get("image"), 256), "result", "result"))
        scores = []
        for d in dims:
            failure = (row.get("failures") or {}).get(d)
            value = (row.get("scores") or {}).get(d)
            line = f"<div class=score><b>{DIMENSION_LABELS.get(d, d)}</b> {_fmt(value)}"
            if failure:
                line += f" <span class=fail>failed: {html.escape(str(failure))}</span>"
            line += " " + _details_html((row.get("details") or {}).get(d, {})) + "</div>"
            scores.append(line)
        out.append(f"<div class=card><div><b>{html.escape(row['key'])}</b> &mdash; "
                   f"{html.escape(str(row.get('prompt') or ''))}</div><div class=row>{''.join(figs)}</div>"
                   f"{''.join(scores)}</div>")
    out.append("</body></html>")
    return "\n".join(out)


def write_report(summary: dict, rows: Sequence[dict], out_dir: str | Path, *, title: str = "psrl benchmark report",
                 gallery_per_subset: int = 12) -> dict[str, Path]:
    """Write ``summary.json``, ``table.md``, ``table.csv``, ``radar.png`` and ``report.html`` into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / name for name in ("summary.json", "table.md", "table.csv", "radar.png", "report.html")}
    write_json_atomic(paths["summary.json"], summary)
    write_text_atomic(paths["table.md"], markdown_table(summary))
    write_csv(summary, paths["table.csv"])
    png = radar_chart([(title, series_of(summary))], summary["subsets"], summary["dimensions"], paths["radar.png"])
    write_text_atomic(paths["report.html"], html_report(summary, rows, png, title=title,
                                                        gallery_per_subset=gallery_per_subset))
    return paths
