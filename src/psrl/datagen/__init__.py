"""The multi-subject data generation pipeline of PSR (arXiv 2512.01236) as nine resumable, shardable stages.

``subjects -> prompts -> render -> ground -> references -> reedit -> instructions -> filter -> export``, each
reading the previous stage's JSONL manifest in one dataset directory and writing its own (see :mod:`.manifest`),
with statistics in ``stats.json``. Run them with ``psrl data <stage> --dir DATASET`` or
:func:`psrl.datagen.stages.run_named_stage`.
"""
