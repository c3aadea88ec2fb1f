"""Running the stages by name: the order, the object behind each name, and the extra passes of filter/export."""
from __future__ import annotations

from pathlib import Path

from psrl.datagen.config import DataPipelineConfig
from psrl.datagen.manifest import part_paths
from psrl.datagen.runner import ProgressFactory, run_stage
from psrl.sharding import Shard
from psrl.datagen.stats import StageStats, write_stage_stats

STAGES = ("subjects", "prompts", "render", "ground", "references", "reedit", "instructions", "filter", "export")

# alike on purpose: a (module, class) table, like the component tables of psrl.models
# name -> (module, class) of the per-sample stages; export is a whole-dataset step (run_export)
STAGE_CLASSES: dict[str, tuple[str, str]] = {
    "subjects": ("psrl.datagen.subjects", "SubjectsStage"),
    "prompts": ("psrl.datagen.prompts", "PromptsStage"),
    "render": ("psrl.datagen.render", "RenderStage"),
    "ground": ("psrl.datagen.ground", "GroundStage"),
    "references": ("psrl.datagen.references", "ReferencesStage"),
    "reedit": ("psrl.datagen.reedit", "ReeditStage"),
    "instructions": ("psrl.datagen.instructions", "InstructionsStage"),
    "filter": ("psrl.datagen.filter", "FilterScoresStage"),
}


def build_stage(name: str, cfg: DataPipelineConfig, dataset: Path, device, **injected):
    """The stage object for ``name``; ``injected`` replaces its model access (tests, custom backends)."""
    import importlib

    if name not in STAGE_CLASSES:
        raise ValueError(f"unknown stage {name!r}; per-sample stages: {', '.join(STAGE_CLASSES)}")
    module, cls = STAGE_CLASSES[name]
    return getattr(importlib.import_module(module), cls)(cfg, dataset, device, **injected)


def run_named_stage(name: str, cfg: DataPipelineConfig, dataset: str | Path, shard: Shard = Shard(), *,  # noqa: B008 - frozen
                    progress: ProgressFactory | None = None, **injected) -> StageStats | None:
    """Run one stage (sharded over ``shard``). Returns its statistics on the main process, else ``None``."""
    dataset = Path(dataset)
    dataset.mkdir(parents=True, exist_ok=True)
    if name == "export":
        if not shard.is_main:  # a whole-dataset step: rank 0 does it, the others wait
            shard.barrier()
            return None
        from psrl.datagen.export import run_export
        stats = run_export(dataset, cfg)
        shard.barrier()
        return stats
    device = shard.device(cfg.device)
    stage = build_stage(name, cfg, dataset, device, **injected)
    stats = run_stage(stage, dataset, shard, progress=progress)
    if name != "filter":
        return stats
    stats_final = None
    if shard.is_main:
        from psrl.datagen.filter import dedup_pass
        entries = dedup_pass(dataset, cfg)
        stats_final = StageStats.from_entries("filter", stats.inputs, entries, new=stats.new, extra=stats.extra)
        write_stage_stats(dataset, stats_final)
    shard.barrier()
    return stats_final


def reset_from(dataset: str | Path, name: str) -> list[Path]:
    """Forget stage ``name`` and every stage after it: their manifests (and part files) and statistics are removed,
    so they run again from scratch (images are overwritten as they are remade). Returns the removed files."""
    from psrl.datagen.manifest import remove_manifests
    from psrl.datagen.stats import STATS_FILE, read_stats
    from psrl.fileio import write_json_atomic

    dataset = Path(dataset)
    later = list(STAGES[STAGES.index(name):])
    if "filter" in later:
        later.insert(later.index("filter"), "filter_scores")
    removed = remove_manifests(dataset, later)
    stats = read_stats(dataset)
    if stats:
        write_json_atomic(dataset / STATS_FILE, {k: v for k, v in stats.items() if k not in later})
    return removed


def pending_parts(dataset: str | Path) -> dict[str, int]:
    """Stages with part files left by an interrupted sharded run (stage -> number of parts)."""
    counts = {name: len(part_paths(dataset, name)) for name in (*STAGES, "filter_scores")}
    return {name: n for name, n in counts.items() if n}
