"""Running the stages by name: the order, the object behind each name, and the extra passes of filter/export."""
from __future__ import annotations

from pathlib import Path

from psrl.data.pipeline.config import DataPipelineConfig
from psrl.data.pipeline.manifest import part_paths
from psrl.data.pipeline.runner import ProgressFactory, run_stage
from psrl.data.pipeline.sharding import Shard
from psrl.data.pipeline.stats import StageStats, write_stage_stats

STAGES = ("subjects", "prompts", "render", "ground", "references", "instructions", "filter", "export")


def build_stage(name: str, cfg: DataPipelineConfig, dataset: Path, device, **injected):
    """The stage object for ``name``; ``injected`` replaces its model access (tests, custom backends)."""
    if name == "subjects":
        from psrl.data.pipeline.subjects import SubjectsStage
        return SubjectsStage(cfg)
    if name == "prompts":
        from psrl.data.pipeline.prompts import PromptsStage
        return PromptsStage(cfg, **injected)
    if name == "render":
        from psrl.data.pipeline.render import RenderStage
        return RenderStage(cfg, dataset, device, **injected)
    if name == "ground":
        from psrl.data.pipeline.ground import GroundStage
        return GroundStage(cfg, dataset, device, **injected)
    if name == "references":
        from psrl.data.pipeline.references import ReferencesStage
        return ReferencesStage(cfg, dataset, device, **injected)
    if name == "instructions":
        from psrl.data.pipeline.instructions import InstructionsStage
        return InstructionsStage(cfg, dataset, **injected)
    if name == "filter":
        from psrl.data.pipeline.filter import FilterScoresStage
        return FilterScoresStage(cfg, dataset, device, **injected)
    raise ValueError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")


def run_named_stage(name: str, cfg: DataPipelineConfig, dataset: str | Path, shard: Shard = Shard(), *,
                    progress: ProgressFactory | None = None, **injected) -> StageStats | None:
    """Run one stage (sharded over ``shard``). Returns its statistics on the main process, else ``None``."""
    dataset = Path(dataset)
    dataset.mkdir(parents=True, exist_ok=True)
    if name == "export":
        if not shard.is_main:  # a whole-dataset step: rank 0 does it, the others wait
            shard.barrier()
            return None
        from psrl.data.pipeline.export import run_export
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
        from psrl.data.pipeline.filter import dedup_pass
        entries = dedup_pass(dataset, cfg)
        stats_final = StageStats.from_entries("filter", stats.inputs, entries, new=stats.new, extra=stats.extra)
        write_stage_stats(dataset, stats_final)
    shard.barrier()
    return stats_final


def pending_parts(dataset: str | Path) -> dict[str, int]:
    """Stages with part files left by an interrupted sharded run (stage -> number of parts)."""
    out = {}
    for name in (*STAGES, "filter_scores"):
        n = len(part_paths(dataset, name))
        if n:
            out[name] = n
    return out
