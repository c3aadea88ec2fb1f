"""DreamBench (the DreamBooth dataset) as benchmark items: 30 subjects x 25 prompts = 750 entries per seed.

Folder layout (``google/dreambooth`` ``dataset/``): ``<root>/<subject>/<NN>.jpg``, 3-6 real images per subject.
Prompts and classes ship as data (``assets/dreambench.json``): objects get 20 recontextualisations + 5 property
edits, live subjects (cats and dogs) 10 recontextualisations + 10 accessorisations + 5 property edits. Prompts use
the class noun in place of DreamBooth's identifier + class ("a backpack in the jungle"), the zero-shot variant that
UNO / OmniGen / Customized-GRPO evaluate, with one fixed reference image per subject (``reference_index`` into the
sorted image list, default the first). Original protocol: 4 images per prompt -> ``--seeds 0 1 2 3``.

The entries are PSRBench-shaped (``instruction``, ``input_path``, ``category1``, plus ``subject`` and
``prompt_index``) and grouped in two subsets, ``object`` and ``live``; result files are ``object.json`` /
``live.json``, so generation, evaluation and reports are shared with PSRBench. The folder is read by
:func:`psrl.bench.loading.read_dreambench` (``load_benchmark("dreambench", root)``).
"""
from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources


@lru_cache(maxsize=1)
def dreambench_spec() -> dict:
    """Classes, live subjects and the prompt templates (``{}`` = class noun)."""
    return json.loads(resources.files("psrl.bench").joinpath("assets/dreambench.json").read_text())


def dreambench_prompts(subject: str) -> list[str]:
    spec = dreambench_spec()
    cls = spec["classes"][subject]
    templates = spec["live_prompts"] if subject in spec["live_subjects"] else spec["object_prompts"]
    return [t.format(cls) for t in templates]


def dreambench_entries(subject: str, refs: list[str]) -> list[dict]:
    """The subject's 25 (or 20) entries in PSRBench's shape, ``refs`` its reference paths relative to the root
    (one, or every image with ``reference_index="all"``: DINO / CLIP-I are then the mean cosine to all real images,
    the original DreamBooth protocol, and policies get all of them as references)."""
    cls = dreambench_spec()["classes"][subject]
    return [{"instruction": prompt, "input_path": list(refs), **{f"category{i}": cls for i in range(1, len(refs) + 1)},
             "subject": subject, "prompt_index": k} for k, prompt in enumerate(dreambench_prompts(subject))]
