"""DreamBench (the DreamBooth dataset) as benchmark items: 30 subjects x 25 prompts = 750 entries per seed.

Folder layout (``google/dreambooth`` ``dataset/``): ``<root>/<subject>/<NN>.jpg``, 3-6 real images per subject.
Prompts and classes ship as data (``assets/dreambench.json``): objects get 20 recontextualisations + 5 property
edits, live subjects (cats and dogs) 10 recontextualisations + 10 accessorisations + 5 property edits. Prompts use
the class noun in place of DreamBooth's identifier + class ("a backpack in the jungle"), the zero-shot variant that
UNO / OmniGen / Customized-GRPO evaluate, with one fixed reference image per subject (``reference_index`` into the
sorted image list, default the first). Original protocol: 4 images per prompt -> ``--seeds 0 1 2 3``.

The entries are PSRBench-shaped (``instruction``, ``input_path``, ``category1``, plus ``subject`` and
``prompt_index``) and grouped in two subsets, ``object`` and ``live``; result files are ``object.json`` /
``live.json``, so generation, evaluation and reports are shared with PSRBench.
"""
from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from pathlib import Path

from psrl.bench.items import ValidationIssue
from psrl.bench.psrbench import LoadedSubsets, add_entries, open_root

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}


@lru_cache(maxsize=1)
def dreambench_spec() -> dict:
    """Classes, live subjects and the prompt templates (``{}`` = class noun)."""
    return json.loads(resources.files("psrl.bench").joinpath("assets/dreambench.json").read_text())


def dreambench_prompts(subject: str) -> list[str]:
    spec = dreambench_spec()
    cls = spec["classes"][subject]
    templates = spec["live_prompts"] if subject in spec["live_subjects"] else spec["object_prompts"]
    return [t.format(cls) for t in templates]


def load_dreambench(data_root: str | Path, *, subjects: list[str] | None = None, reference_index: int | str = 0,
                    check_files: bool = True) -> LoadedSubsets:
    """Build the DreamBench entries from the dataset folder. Missing subjects, subjects without images, unknown
    subject folders and an out-of-range ``reference_index`` are issues (the entry is kept with its problem).

    ``reference_index="all"`` lists every real image of the subject as a reference: DINO / CLIP-I are then the
    mean cosine to all real images, the original DreamBooth protocol (policies get all of them as references)."""
    root, out = open_root(data_root)
    if out.issues:
        return out
    spec = dreambench_spec()
    wanted = list(subjects) if subjects else list(spec["classes"])
    for name in wanted:
        if name not in spec["classes"]:
            out.issues.append(ValidationIssue(name, None, "subject", "unknown DreamBench subject"))
    if not subjects:
        for child in sorted(root.iterdir()):
            if child.is_dir() and child.name not in spec["classes"] and not child.name.startswith("."):
                out.issues.append(ValidationIssue(child.name, None, "subject",
                                                  f"folder {child} is not a DreamBench subject"))
    entries: dict[str, list] = {"object": [], "live": []}
    for subject in wanted:
        if subject not in spec["classes"]:
            continue
        folder = root / subject
        images = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) \
            if folder.is_dir() else []
        if not images:
            out.issues.append(ValidationIssue(subject, None, "folder", f"no reference images in {folder}"))
        elif reference_index == "all":
            refs = [f"{subject}/{name}" for name in images]
        elif not 0 <= int(reference_index) < len(images):
            out.issues.append(ValidationIssue(subject, None, "reference_index",
                                              f"{reference_index} out of range for {len(images)} image(s)"))
            refs = [f"{subject}/{images[0]}"]
        else:
            refs = [f"{subject}/{images[int(reference_index)]}"]
        if not images:
            refs = [f"{subject}/missing.jpg"]
        subset = "live" if subject in spec["live_subjects"] else "object"
        cls = spec["classes"][subject]
        for k, prompt in enumerate(dreambench_prompts(subject)):
            entry = {"instruction": prompt, "input_path": list(refs)}
            entry.update({f"category{i}": cls for i in range(1, len(refs) + 1)})
            entries[subset].append({**entry, "subject": subject, "prompt_index": k})
    for subset, data in entries.items():
        if data:
            out.raw[subset] = data
            add_entries(out, subset, data, root, check_files=check_files, benchmark="dreambench")
    return out
