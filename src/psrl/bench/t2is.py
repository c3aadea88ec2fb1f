"""T2IS-Bench (Text-to-ImageSet, arXiv 2506.23275) as ``psrl bench --benchmark t2is``: an image set per entry,
generated as one grid image from a grid prompt (PaCo-RL's evaluation, arXiv 2512.04784), cut into its cells and scored.

Data root::

    <root>/test_metadata.jsonl     one grid prompt per line: PaCo's T2IS split of T2IS-Bench
                                   (X-GenGroup/PaCo-RL@cd3c428 PaCo-GRPO/dataset/T2IS/half_2by2/test_metadata.jsonl)
    <root>/prompt_alignment.json   optional, T2IS-Bench's per-image criteria (HF dataset ChengyouJia/T2IS-Bench):
                                   {case id: {sub id: {"Entity": [...], "Attribute": [...], "Relation": [...]}}}

A line holds ``prompt`` (the grid prompt), ``layout`` (``"2x2"``), ``theme``, ``category`` (one of T2IS-Bench's
five), ``criteria`` (``{"Identity"|"Style"|"Logic": {name: criterion text}}``) and ``original_idx`` (the T2IS-Bench
case id, ``"0001_0002"``). Subsets are the categories (:data:`CATEGORY_SLUGS`); result files ``<subset>.json`` hold
the lines with ``result_path`` (the grid image). An entry without a grid size (``layout`` or ``RxC`` in the prompt)
is invalid, named by its case id.

Scoring rules (chengyou-jia/T2IS@ab4974a ``T2IS_Eval/``):

* identity / style / logic (``test_prompt_consistency.py``): for each criterion text of the dimension, every
  unordered cell pair (i < j, one order) is asked ``Do images meet the following criteria? {criterion} Please
  answer Yes or No.`` with both cells resized to 512x512; the score is softmax over the first-token logits of
  ``No`` / ``Yes`` (= psrl's P(Yes), :mod:`psrl.rewards.vlm.judge`), averaged over pairs, then over the criteria.
  Judge Qwen2.5-VL-7B-Instruct. Upstream scores a dimension without criteria 0.0 and leaves zeros out of its final
  mean; psrl records NaN with the reason, which the summary leaves out the same way.
* prompt alignment (``vqa_alignment.py``): VQAScore (CLIP-FlanT5-XXL) of each image against each question of its
  Entity / Attribute / Relation lists, averaged per list, then over the images. psrl asks its VLM judge the
  VQAScore question (:data:`VQASCORE_QUESTION`, linzhiqiu/t2v_metrics@8b7a7b2
  ``t2v_metrics/models/vqascore_models/clip_t5_model.py``, answer ``Yes``) and takes P(Yes): the same rule on
  another model, so these numbers are not comparable with the published ones.
* aesthetics: the released toolkit has no aesthetics script; psrl averages an aesthetic reward over the cells
  (default LAION aesthetic predictor / 10; change it with ``--set``).

Image sets of another model saved one file per image (T2IS-Eval's ``<case id>_<NNNN>.png``) become a result folder
with :func:`import_image_sets` (each set tiled into its grid). The files are read by
:func:`psrl.bench.loading.read_t2is` and :func:`~psrl.bench.loading.t2is_context`.

Per-cell sub-prompts follow PaCo's ``divide_prompt`` (:func:`psrl.data.grid_prompt.divide_prompt`: split at
``[TOP-LEFT]:``-style markers, the first chunk is the theme); cells are cut in row-major order
(:func:`psrl.data.grid_prompt.cut_grid`), rows from the first number of the layout.
"""
from __future__ import annotations

from pathlib import Path

from psrl.bench.items import ValidationIssue
from psrl.bench.results import MANIFEST, image_path, read_manifest, result_manifest
from psrl.bench.tasks import DimensionSpec, MetricSpec, judge_args
from psrl.data.grid_prompt import divide_prompt, find_grid_size
from psrl.data.records import Record
from psrl.errors import PsrlError
from psrl.fileio import write_json_atomic
from psrl.images import IMAGE_SUFFIXES, load_image, save_image

CATEGORY_SLUGS = {"Character Generation": "character", "Design Style Generation": "design",
                  "Story Generation": "story", "Process Generation": "process",
                  "Instruction Generation": "instruction"}
T2IS_SUBSETS: tuple[str, ...] = tuple(CATEGORY_SLUGS.values())
CONSISTENCY_DIMENSIONS = {"identity": "Identity", "style": "Style", "logic": "Logic"}
ALIGNMENT_DIMENSIONS = {"pa_entity": "Entity", "pa_attribute": "Attribute", "pa_relation": "Relation"}
T2IS_DIMENSIONS: tuple[str, ...] = ("aesthetic", *ALIGNMENT_DIMENSIONS, *CONSISTENCY_DIMENSIONS)
PROMPTS_FILE = "test_metadata.jsonl"
ALIGNMENT_FILE = "prompt_alignment.json"
T2IS_JUDGE = "Qwen/Qwen2.5-VL-7B-Instruct"

CONSISTENCY_QUESTION = "Do images meet the following criteria? {criterion} Please answer Yes or No."
VQASCORE_QUESTION = 'Does this figure show "{text}"? Please answer yes or no.'

def parse_entry(subset: str, index: int, entry, *, alignment: dict | str | None = None, **_):
    """Validate one line and build its record (no subjects: a text-to-image task). ``alignment``: the root's
    ``prompt_alignment.json`` (:func:`psrl.bench.loading.t2is_context`; ``None`` when absent, the problem as a
    string when unreadable). Fatal: no prompt, no grid, no criteria object. Prompt-alignment criteria missing or
    not one list per cell are issues; the record is kept and the alignment dimensions are NaN with the reason."""
    issues: list[ValidationIssue] = []
    if not isinstance(entry, dict):
        return None, [ValidationIssue(subset, index, "entry", f"expected a JSON object, got {type(entry).__name__}")]
    case = str(entry.get("original_idx") or entry.get("idx") or f"{subset}[{index}]")

    def bad(field: str, message: str) -> None:
        issues.append(ValidationIssue(subset, index, field, f"case {case}: {message}"))

    prompt = entry.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        bad("prompt", f"must be a non-empty string, got {prompt!r}")
        return None, issues
    grid = find_grid_size(entry.get("layout")) or find_grid_size(prompt)
    if grid is None:
        bad("layout", f"no grid size ('2x2') in layout {entry.get('layout')!r} nor in the prompt")
        return None, issues
    criteria = entry.get("criteria")
    if not isinstance(criteria, dict) or not all(isinstance(v, dict) for v in criteria.values()):
        bad("criteria", f"must map Identity/Style/Logic to {{name: criterion}}, got {criteria!r}")
        return None, issues
    n = grid[0] * grid[1]
    chunks, _ = divide_prompt(prompt)
    table, alignment = alignment, None
    if isinstance(table, str):
        bad("prompt_alignment", table)
    elif table is not None:
        cells = table.get(case)
        if not isinstance(cells, dict) or len(cells) != n:
            bad("prompt_alignment", f"{ALIGNMENT_FILE} has no {n} per-image criteria for this case "
                                    f"(found {len(cells) if isinstance(cells, dict) else 0})")
        else:
            alignment = list(cells.values())
    theme = entry.get("theme") if isinstance(entry.get("theme"), str) else chunks[0]
    tags = {"benchmark": "t2is", "subset": subset, "index": index, "case": case, "grid": list(grid),
            "theme": theme, "sub_prompts": chunks[1:] if len(chunks) == n + 1 else None, "criteria": criteria,
            "alignment": alignment}
    return Record(id=f"{subset}/{index}", prompt=prompt, tags=tags), issues


def import_image_sets(images_dir, data, out_dir, *, seed: int = 0, suffixes=IMAGE_SUFFIXES) -> dict:
    """Turn image sets saved one file per image, T2IS-Eval's layout (``<case id>_<NNNN>.<ext>``, ordered by the
    trailing number; chengyou-jia/T2IS@ab4974a ``T2IS_Eval/test_prompt_consistency.py``), into a psrl result
    folder ``psrl bench eval`` reads: each complete set tiled row-major into the entry's grid (every image resized
    to the first one's size) at ``<out>/seed<seed>/<subset>/<index>.png``, the result files and ``bench.json``.

    ``data``: the benchmark as loaded (``load_benchmark("t2is", root)``); ``bench.json`` names its source. A set
    with another number of images than its grid has cells gets no image (evaluation counts it as missing).
    Returns ``{"imported": n, "incomplete": {case: found}, "missing": [case, ...]}``; ``PsrlError`` when ``data``
    was loaded from no folder."""
    from PIL import Image

    from psrl.bench.generate import write_result_files  # torch, and the policies' batching: only when importing

    if data.source is None:
        raise PsrlError("; ".join(str(i) for i in data.issues) or "the T2IS-Bench entries come from no folder")
    images_dir, out_dir = Path(images_dir), Path(out_dir)
    if not images_dir.is_dir():
        raise PsrlError(f"image folder not found: {images_dir}")
    files: dict[str, list[tuple[int, Path]]] = {}
    for f in images_dir.iterdir():
        stem, _, number = f.stem.rpartition("_")
        if f.suffix.lower() in suffixes and stem and number.isdigit():
            files.setdefault(stem, []).append((int(number), f))
    report: dict = {"imported": 0, "incomplete": {}, "missing": []}
    for item in data.items:
        if item.record is None:
            continue
        case, (rows, cols) = item.record.tags["case"], item.record.tags["grid"]
        found = [f for _, f in sorted(files.get(case, []))]
        if not found:
            report["missing"].append(case)
            continue
        if len(found) != rows * cols:
            report["incomplete"][case] = len(found)
            continue
        images = [load_image(f) for f in found]
        w, h = images[0].size
        grid = Image.new("RGB", (w * cols, h * rows))
        for k, im in enumerate(images):
            grid.paste(im.resize((w, h)), ((k % cols) * w, (k // cols) * h))
        save_image(grid, image_path(out_dir, seed, item.subset, item.index))
        report["imported"] += 1
    write_result_files(data, out_dir, [seed], absolute_paths=True)
    manifest = {**read_manifest(out_dir), **result_manifest("t2is", data.source, seeds=[seed],
                                                            imported_from=str(images_dir.resolve()))}
    write_json_atomic(out_dir / MANIFEST, manifest)
    return report


def default_metrics(*, compat=False, judge_endpoint=None, judge_model=None, tiny=False):
    """Aesthetic (cell mean of ``aesthetic`` / 10), pa_entity / pa_attribute / pa_relation (VQAScore question,
    P(Yes)), identity / style / logic (T2IS-Eval pairwise criteria, P(Yes)); judge Qwen2.5-VL-7B-Instruct locally,
    or the OpenAI-compatible server at ``judge_endpoint`` (first-token logprobs needed). The real aesthetic
    predictor needs its LAION head: ``--set aesthetic.default.args.args.head_path=FILE``."""
    if compat:
        raise PsrlError("--psrbench-compat applies to PSRBench only")
    judge = judge_args({"path": "tiny"} if tiny else {"path": T2IS_JUDGE}, judge_endpoint, judge_model)
    aesthetic = {"reward": "aesthetic", "args": {"path": "tiny"} if tiny else {}}
    out = {"aesthetic": DimensionSpec(MetricSpec("psrl.bench.t2is_metrics:CellMean", aesthetic, scale=0.1))}
    for dim, key in ALIGNMENT_DIMENSIONS.items():
        out[dim] = DimensionSpec(MetricSpec("psrl.bench.t2is_metrics:T2ISAlignment", {"dimension": key, **judge}))
    # tiny: 32-pixel cells for the random-weight judge (its cost on CPU grows with the pixels; the rule is the same)
    size = {"judge_size": 32} if tiny else {}
    for dim, key in CONSISTENCY_DIMENSIONS.items():
        out[dim] = DimensionSpec(MetricSpec("psrl.bench.t2is_metrics:T2ISConsistency",
                                            {"dimension": key, **size, **judge}))
    return out
