"""GEdit-Bench (Step1X-Edit, arXiv 2504.17761) as ``psrl bench --benchmark gedit`` (English instructions) and
``gedit-cn`` (Chinese): editing instructions + source images, scored VIEScore-style (arXiv 2312.14867) by a VLM.

Data root (what :func:`export_gedit` writes from the HF dataset ``stepfun-ai/GEdit-Bench``, whose rows hold
``task_type``, ``key``, ``instruction``, ``instruction_language``, ``input_image``, ``Intersection_exist``)::

    <root>/gedit_bench.json                                 list of {key, task_type, instruction,
                                                            instruction_language, Intersection_exist, input_image}
    <root>/fullset/<task_type>/<language>/<key>_SRCIMG.png  source images (``input_image`` is this path)

Subsets are the eleven task groups (:data:`GEDIT_GROUPS`); one benchmark holds one instruction language. The
metadata is read by :func:`psrl.bench.loading.read_gedit_en` / ``read_gedit_cn``.

Scoring (stepfun-ai/Step1X-Edit ``GEdit-Bench/test_gedit_score.py`` and ``calculate_statistics.py``, read at the
fork svjack/Step1X-Edit@eda7f42; VIEScore ``task="tie"``, TIGER-AI-Lab/VIEScore@2cbea4e ``viescore/__init__.py``,
prompts ``viescore/vie_prompts.py``@a35f13f):

* the edited image is resized to the source image's size;
* SC: the judge sees (source, edited) with context + two-image-edit rule + tie SC rule (instruction substituted)
  and returns ``{"score": [editing success, over-editing], ...}``; SC = the minimum of the list;
* PQ: the judge sees the edited image alone with context + PQ rule (``[naturalness, artifacts]``); PQ = minimum;
* O = sqrt(SC * PQ) per sample; a group's mean over its samples; the benchmark's "Average" the mean of the eleven
  group means (psrl's Overall row: the mean of the subset means).

Upstream retries a reply it cannot parse once and then draws a random score (``mllm_output_to_dict(...,
give_up_parsing=True)``); psrl records the sample as NaN with the reply kept (:func:`parse_viescore`). The
published numbers used GPT-4.1 or Qwen2.5-VL-72B-Instruct-AWQ as judge.
"""
from __future__ import annotations

import math
from pathlib import Path

from psrl.bench.items import ValidationIssue
from psrl.bench.tasks import DimensionSpec, MetricSpec, judge_args
from psrl.data.records import Record, SubjectRef, resolve_under
from psrl.errors import PsrlError
from psrl.fileio import write_json_atomic
from psrl.images import save_image

GEDIT_GROUPS: tuple[str, ...] = ("background_change", "color_alter", "material_alter", "motion_change", "ps_human",
                                 "style_change", "subject-add", "subject-remove", "subject-replace", "text_change",
                                 "tone_transfer")
GEDIT_DIMENSIONS: tuple[str, ...] = ("semantic_consistency", "perceptual_quality", "overall")
METADATA = "gedit_bench.json"
GEDIT_JUDGE = "Qwen/Qwen2.5-VL-72B-Instruct-AWQ"


def source_image_path(task_type: str, language: str, key: str) -> str:
    """Where upstream's ``generate_image_example.py`` puts a source image, relative to the root."""
    return f"fullset/{task_type}/{language}/{key}_SRCIMG.png"


def export_gedit(rows, root: str | Path) -> Path:
    """Write a GEdit-Bench data root from the HF dataset's rows (``load_dataset("stepfun-ai/GEdit-Bench",
    split="train")`` or any iterable of such dicts with a PIL ``input_image``); returns the metadata path.
    Raises ``RecordError`` for a row whose key or task type would put its image outside ``root``."""
    root = Path(root)
    entries = []
    for row in rows:
        rel = source_image_path(row["task_type"], row["instruction_language"], row["key"])
        # a key or task name with "../" cannot write outside the root (RecordError names the value)
        save_image(row["input_image"].convert("RGB"), resolve_under(root, rel, what="GEdit-Bench source image"))
        entries.append({"key": row["key"], "task_type": row["task_type"], "instruction": row["instruction"],
                        "instruction_language": row["instruction_language"],
                        "Intersection_exist": bool(row["Intersection_exist"]), "input_image": rel})
    write_json_atomic(root / METADATA, entries)
    return root / METADATA


def parse_entry(subset: str, index: int, entry, **_):
    """Validate one entry and build its record: the instruction as prompt, the source image as the one subject
    (what editing policies condition on), as ``input_image`` writes it (:mod:`psrl.bench.loading` resolves it
    under the data root). Fatal: not an object, no instruction, no source path."""
    if not isinstance(entry, dict):
        return None, [ValidationIssue(subset, index, "entry", f"expected a JSON object, got {type(entry).__name__}")]
    issues: list[ValidationIssue] = []
    key = entry.get("key")

    def bad(field: str, message: str) -> None:
        issues.append(ValidationIssue(subset, index, field, f"key {key}: {message}"))

    instruction = entry.get("instruction")
    if not isinstance(instruction, str) or not instruction.strip():
        bad("instruction", f"must be a non-empty string, got {instruction!r}")
    src = entry.get("input_image")
    if not isinstance(src, str) or not src:
        bad("input_image", f"must be a path relative to the data root, got {src!r}")
    if not isinstance(entry.get("Intersection_exist"), bool):
        bad("Intersection_exist", f"must be true or false, got {entry.get('Intersection_exist')!r}")
    if any(i.field in ("instruction", "input_image") for i in issues):
        return None, issues
    lang = entry.get("instruction_language")
    tags = {"benchmark": "gedit" if lang == "en" else "gedit-cn", "subset": subset, "index": index, "key": key,
            "language": lang, "intersection": entry.get("Intersection_exist")}
    return Record(id=f"{subset}/{index}", prompt=instruction, subjects=(SubjectRef(image=src, phrase="source image"),),
                  tags=tags), issues


def intersection_summary(rows, dimensions=GEDIT_DIMENSIONS) -> dict:
    """The published "-I" columns: per dimension, the mean over the samples with ``Intersection_exist`` of each
    task group, and ``average`` = the mean of those group means (``calculate_statistics.py``'s intersection
    rows). Reads the flag from the rows' ``details[dim]["intersection"]`` (:class:`VIEScoreMetric` writes it);
    rows without it are left out and counted in ``unflagged``. Pure function of the per-sample rows."""
    out: dict = {}
    for dim in dimensions:
        groups: dict[str, list[float]] = {}
        unflagged = 0
        for r in rows:
            flag = ((r.get("details") or {}).get(dim) or {}).get("intersection")
            value = (r.get("scores") or {}).get(dim)
            if flag is None:
                unflagged += 1
            elif flag and isinstance(value, (int, float)) and math.isfinite(value):
                groups.setdefault(r["subset"], []).append(float(value))
        means = {g: sum(v) / len(v) for g, v in groups.items()}
        out[dim] = {"groups": means, "average": sum(means.values()) / len(means) if means else None,
                    "n": sum(len(v) for v in groups.values()), "unflagged": unflagged}
    return out


def summary_extras(rows) -> dict:
    """What the GEdit summary adds to the generic one (``summary.json`` key ``intersection``)."""
    return {"intersection": intersection_summary(rows)}


def default_metrics(*, compat=False, judge_endpoint=None, judge_model=None, tiny=False):
    """SC / PQ / O from one VIEScore judge (two requests per sample, shared by the three dimensions through the
    reply cache of :class:`psrl.bench.gedit_metrics.VIEScoreMetric`); the local judge is upstream's
    Qwen2.5-VL-72B-Instruct-AWQ, or the OpenAI-compatible server at ``judge_endpoint`` (the released setup serves
    GPT-4.1 or Qwen through such an API)."""
    if compat:
        raise PsrlError("--psrbench-compat applies to PSRBench only")
    judge = judge_args({"path": "tiny", "max_new_tokens": 16} if tiny else {"path": GEDIT_JUDGE}, judge_endpoint,
                       judge_model)
    return {dim: DimensionSpec(MetricSpec("psrl.bench.gedit_metrics:VIEScoreMetric", {"output": dim, **judge}))
            for dim in GEDIT_DIMENSIONS}
