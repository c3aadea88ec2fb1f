"""Benchmarks: PSRBench (7 subsets x subject consistency / semantic alignment / aesthetics) and DreamBench
(DINO / CLIP-I / CLIP-T), with psrl's rewards as the metrics.

Flow: ``loading`` (the one reader of a data root: entries parsed by ``psrbench``/``dreambench``/``t2is``/``gedit``,
reference paths resolved, validated) -> ``generate`` (any policy, seeds, resumable, sharded) ->
``evaluate`` (per-sample JSONL, resumable, sharded) -> ``summary`` -> ``report`` (md/csv/json, radar, HTML) and
``compare`` (runs side by side, published table). ``pipeline`` strings them together for the CLI (``psrl bench``).
"""
