"""Compare evaluation runs side by side (and with the published PSR table): markdown/CSV/JSON and a radar overlay."""
from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from psrl.bench.benchmarks import get_benchmark
from psrl.bench.report import _fmt, radar_chart, series_of
from psrl.bench.summary import finite_number
from psrl.bench.tasks import DIMENSION_LABELS
from psrl.errors import PsrlError
from psrl.fileio import write_json_atomic, write_text_atomic


def load_published(benchmark: str = "psrbench") -> dict:
    """The published table of ``benchmark`` shipped with psrl (reported numbers, overall per dimension); its file
    is named by the benchmark's registry entry (:mod:`psrl.bench.benchmarks`)."""
    name = get_benchmark(benchmark).published
    if name is None:
        raise PsrlError(f"psrl ships no published table for {benchmark}")
    return json.loads(resources.files("psrl.bench").joinpath(f"assets/{name}").read_text())


def load_summary(run: str | Path) -> dict:
    """A run's ``summary.json`` (``run`` is an eval folder or the file itself)."""
    path = Path(run)
    if path.is_dir():
        path = path / "summary.json"
    if not path.is_file():
        raise PsrlError(f"no summary.json at {run}; run `psrl bench eval` (or `psrl bench report`) first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise PsrlError(f"{path}: not valid JSON: {e}") from e


def _default_label(run: str | Path) -> str:
    """The run folder's name; ``<results>/<eval folder>`` when the eval folder has the default name."""
    path = Path(run).resolve()
    if path.is_file():
        path = path.parent
    return f"{path.parent.name}/{path.name}" if path.name.startswith("eval") else path.name


def compare(runs: Sequence[str | Path], *, labels: Sequence[str] | None = None, published: bool = False,
            benchmark: str | None = None) -> dict:
    """``{benchmark, dimensions, subsets, rows, mixed_subsets}``; each row is ``{label, kind: measured|reported,
    overall: {dim: mean}, failed: {dim: count}, subsets: {dim: {subset: mean}}, overall_subsets: {dim: [subset,
    ...]}}``, the last naming the subsets each overall mean averages (a measured row: those with a scored sample;
    a reported row: the published table's ``overall_subsets``). ``mixed_subsets``: the dimensions whose rows'
    overall means average different subset sets (such means are not comparable; the table and radar flag them).

    Raises:
        PsrlError: nothing to compare, labels not matching the runs, runs of different benchmarks, or
            ``published`` for another benchmark.
    """
    if not runs and not published:
        raise PsrlError("nothing to compare: give run folders and/or --published")
    if labels and len(labels) != len(runs):
        raise PsrlError(f"{len(labels)} labels for {len(runs)} runs")
    summaries = [load_summary(r) for r in runs]
    benchmarks = {s["benchmark"] for s in summaries}
    if len(benchmarks) > 1:
        raise PsrlError(f"cannot compare runs of different benchmarks: {sorted(benchmarks)}")
    if benchmark and benchmarks and benchmarks != {benchmark}:
        raise PsrlError(f"--benchmark {benchmark} but the runs are {sorted(benchmarks)}")
    benchmark = benchmarks.pop() if benchmarks else (benchmark or "psrbench")
    dims: list[str] = []
    subsets: list[str] = []
    for s in summaries:
        dims += [d for d in s["dimensions"] if d not in dims]
        subsets += [x for x in s["subsets"] if x not in subsets]
    rows = []
    for i, (run, s) in enumerate(zip(runs, summaries)):
        rows.append({
            "label": labels[i] if labels else _default_label(run),
            "kind": "measured", "source": str(run), "config_hash": s.get("config_hash"),
            "overall": {d: s["overall"][d]["mean"] for d in s["dimensions"]},
            "failed": {d: s["overall"][d]["failed"] for d in s["dimensions"]},
            "subsets": series_of(s),
            "overall_subsets": {d: [x for x in s["subsets"] if s["table"][x][d]["n"]] for d in s["dimensions"]},
        })
    if published:
        table = load_published(benchmark)
        if benchmark != table["benchmark"]:
            raise PsrlError(f"--published holds {table['benchmark']} numbers; these runs are {benchmark}")
        # A published table that does not say which subsets its overall averages was computed on the whole
        # benchmark.
        published_subsets = table.get("overall_subsets") or list(get_benchmark(benchmark).subsets)
        for row in table["rows"]:
            sub = row.get("subsets", {})
            rows.append({
                "label": f"{row['model']} (reported)", "kind": "reported", "source": table["source"],
                "overall": dict(row["overall"]), "failed": {},
                "subsets": {d: {s: v.get(d) for s, v in sub.items()} for d in row["overall"]},
                "overall_subsets": {d: list(row.get("overall_subsets", published_subsets))
                                    for d in row["overall"]},
            })
        dims += [d for r in table["rows"] for d in r["overall"] if d not in dims]
    return {"benchmark": benchmark, "dimensions": dims, "subsets": subsets, "rows": rows,
            "mixed_subsets": mixed_subsets(rows, dims)}


def mixed_subsets(rows: Sequence[dict], dims: Sequence[str]) -> list[str]:
    """The dimensions in which the rows that have an overall mean computed it over different subset sets."""
    mixed = []
    for d in dims:
        sets = {frozenset(r["overall_subsets"].get(d, ())) for r in rows if finite_number(r["overall"].get(d))}
        if len(sets) > 1:
            mixed.append(d)
    return mixed


def _coverage(row: dict, d: str, of: int) -> str:
    """`` [k/n subsets]`` for a row's overall mean in a mixed dimension."""
    return f" [{len(row['overall_subsets'].get(d, ()))}/{of} subsets]"


def _union_size(result: dict, d: str) -> int:
    return len({s for r in result["rows"] for s in r["overall_subsets"].get(d, ())})


def markdown(result: dict) -> str:
    dims, subsets = result["dimensions"], result["subsets"]
    lab = [DIMENSION_LABELS.get(d, d) for d in dims]
    lines = ["| model | kind | " + " | ".join(f"{x} overall" for x in lab) + " |", "|" + "---|" * (len(dims) + 2)]
    for r in result["rows"]:
        cells = []
        for d in dims:
            v = r["overall"].get(d)
            failed = r["failed"].get(d)
            mixed = d in result.get("mixed_subsets", ()) and finite_number(v)
            flag = _coverage(r, d, _union_size(result, d)) if mixed else ""
            cells.append(_fmt(v) + flag + (f" ({failed} failed)" if failed else ""))
        lines.append(f"| {r['label']} | {r['kind']} | " + " | ".join(cells) + " |")
    for d in result.get("mixed_subsets", ()):
        groups: dict[tuple, list[str]] = {}  # rows grouped by the subsets they average
        for r in result["rows"]:
            if finite_number(r["overall"].get(d)):
                groups.setdefault(tuple(r["overall_subsets"].get(d, ())), []).append(r["label"])
        covered = "; ".join(f"{', '.join(labels)}: {', '.join(subs) or 'none'}" for subs, labels in groups.items())
        lines += ["", f"**Warning: the {DIMENSION_LABELS.get(d, d)} overall means average different subsets** "
                      f"(marked [k/n subsets]) and are not directly comparable: {covered}."]
    for d in dims:
        lines += ["", f"**{DIMENSION_LABELS.get(d, d)} per subset**", "",
                  "| model | " + " | ".join(subsets) + " |", "|" + "---|" * (len(subsets) + 1)]
        for r in result["rows"]:
            vals = [_fmt(r["subsets"].get(d, {}).get(s)) for s in subsets]
            lines.append(f"| {r['label']} | " + " | ".join(vals) + " |")
    if any(r["kind"] == "reported" for r in result["rows"]):
        lines += ["", "Rows marked *reported* are published numbers (their source is in compare.json), not measured "
                      "by psrl."]
    return "\n".join(lines) + "\n"


def compare_series(result: dict) -> tuple[list[tuple[str, dict]], str | None]:
    """The radar overlay's series and its note. Only measured rows are drawn: the published table has overall
    numbers (two subset values at most), and drawing its missing subsets as 0 would misrepresent it. In a dimension
    whose overall means average different subsets each label says how many it covers (``[SC overall: 2/7
    subsets]``) and the note warns that they are not comparable."""
    drawn = [r for r in result["rows"] if r["kind"] == "measured"
             and any(finite_number(v) for d in r["subsets"].values() for v in d.values())]
    mixed = result.get("mixed_subsets") or []
    series = [(r["label"] + "".join(f" [{DIMENSION_LABELS.get(d, d)} overall: "
                                    f"{len(r['overall_subsets'].get(d, ()))}/{_union_size(result, d)} subsets]"
                                    for d in mixed if finite_number(r["overall"].get(d))), r["subsets"])
              for r in drawn]
    note = None
    if mixed:
        note = (f"Warning: the overall {', '.join(DIMENSION_LABELS.get(d, d) for d in mixed)} means of the compared "
                "rows average different subsets and are not directly comparable (see compare.md)")
    return series, note


def write_compare(result: dict, out_dir: str | Path) -> dict[str, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {n: out_dir / n for n in ("compare.md", "compare.csv", "compare.json", "compare_radar.png")}
    write_text_atomic(paths["compare.md"], markdown(result))
    write_json_atomic(paths["compare.json"], result)
    buf = io.StringIO(newline="")  # the csv is built in memory, then written atomically
    w = csv.writer(buf)
    w.writerow(["model", "kind", "subset", "dimension", "value"])
    for r in result["rows"]:
        for d in result["dimensions"]:
            v = r["overall"].get(d)
            w.writerow([r["label"], r["kind"], "Overall", d, "" if v is None else f"{v:.6f}"])
            for s in result["subsets"]:
                v = r["subsets"].get(d, {}).get(s)
                if v is not None:
                    w.writerow([r["label"], r["kind"], s, d, f"{v:.6f}"])
    write_text_atomic(paths["compare.csv"], buf.getvalue())
    series, note = compare_series(result)
    radar_chart(series, result["subsets"], result["dimensions"], paths["compare_radar.png"], note=note)
    return paths
