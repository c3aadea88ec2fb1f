"""The benchmarks as data: PSRBench subsets, DreamBench subject kinds, and the metric each dimension uses.

A metric is always a registered psrl reward (the benchmark never re-implements one); :class:`MetricSpec` says which
reward, with which args, and how its score is scaled for the report.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from psrl.data.records import misplaced_data_root
from psrl.errors import PsrlError


@dataclass(frozen=True)
class Subset:
    """One PSRBench subset: its file stem, how many references each entry has, which semantic-alignment scorer."""

    name: str
    num_refs: int
    semantic: str  # "position" (geometry rule) or "rubric" (VLM judge with the subset's prompt)
    description: str


PSRBENCH_SUBSETS: tuple[Subset, ...] = (
    Subset("Attribute", 2, "rubric", "attribute binding across two animals"),
    Subset("Action", 2, "rubric", "two animals performing distinct actions"),
    Subset("Background", 2, "rubric", "two subjects placed in a described background"),
    Subset("Position", 2, "position", "spatial relation between two subjects"),
    Subset("Complex", 2, "rubric", "long prompts combining background, actions and details"),
    Subset("Three", 3, "rubric", "three subjects"),
    Subset("Four", 4, "rubric", "four subjects"),
)
PSRBENCH_SUBSET_NAMES: tuple[str, ...] = tuple(s.name for s in PSRBENCH_SUBSETS)
SUBSETS_BY_NAME: dict[str, Subset] = {s.name: s for s in PSRBENCH_SUBSETS}

PSRBENCH_DIMENSIONS: tuple[str, ...] = ("subject_consistency", "semantic_alignment", "aesthetics")
DREAMBENCH_DIMENSIONS: tuple[str, ...] = ("dino", "clip_i", "clip_t")
DREAMBENCH_SUBSETS: tuple[str, ...] = ("object", "live")
# PocketBench (psrl world make): PSRBench's subsets and format on the pocket world's held-out subjects, plus the
# reference-swap control of subject consistency (what the references carry beyond chance matches)
POCKET_DIMENSIONS: tuple[str, ...] = ("subject_consistency", "semantic_alignment", "fidelity",
                                      "subject_consistency_gain")

# Short labels used in tables and radar charts.
DIMENSION_LABELS = {
    "subject_consistency": "SC",
    "semantic_alignment": "SA",
    "aesthetics": "HPS",
    "dino": "DINO",
    "clip_i": "CLIP-I",
    "clip_t": "CLIP-T",
    "fidelity": "Fidelity",
    "subject_consistency_gain": "SC gain",
}


PSRBENCH_JUDGE = "Qwen/Qwen2.5-VL-32B-Instruct"


@dataclass(frozen=True)
class MetricSpec:
    """A reward used as a metric. ``scale`` multiplies the reward's score for the report (the PSR paper reports
    HPSv3 / 10); the raw score is kept next to the scaled one in the per-sample file."""

    reward: str
    args: dict = field(default_factory=dict, hash=False)
    scale: float = 1.0

    def to_json(self) -> dict:
        return {"reward": self.reward, "args": dict(self.args), "scale": self.scale}


@dataclass(frozen=True)
class DimensionSpec:
    """The metric of one dimension: ``default`` for every subset, ``per_subset`` overriding it by subset name."""

    default: MetricSpec | None
    per_subset: dict = field(default_factory=dict, hash=False)

    def metric_for(self, subset: str) -> MetricSpec | None:
        return self.per_subset.get(subset, self.default)

    def to_json(self) -> dict:
        return {"default": self.default.to_json() if self.default else None,
                "per_subset": {k: v.to_json() for k, v in sorted(self.per_subset.items())}}


def judge_args(local: dict, judge_endpoint: str | None, judge_model: str | None) -> dict:
    """A judge metric's options: ``local`` (a local model), or the OpenAI-compatible server at ``judge_endpoint``
    (serving ``judge_model``, or its default model).

    Raises:
        PsrlError: ``judge_model`` without ``judge_endpoint``.
    """
    if judge_model and not judge_endpoint:
        raise PsrlError("--judge-model needs --judge-endpoint")
    if not judge_endpoint:
        return local
    return {"transport": "remote", "url": judge_endpoint, **({"model": judge_model} if judge_model else {})}


def psrbench_metrics(*, compat: bool = False, judge_endpoint: str | None = None, judge_model: str | None = None,
                     tiny: bool = False) -> dict[str, DimensionSpec]:
    """The PSRBench metric set.

    Subject consistency: ``subject_consistency`` with DINO ViT-S/16, honest mode by default (best box, one-to-one
    assignment for same-category subjects, missing subject recorded); ``compat=True`` selects the reward's
    ``psrbench_compat`` mode, which reproduces the released scorer (first box over threshold, whole-image fallback).
    Semantic alignment: ``position`` on the Position subset (same mode: ``psrbench_compat`` takes box 0 in detector
    order), the ``semantic_alignment`` rubric elsewhere (the reward reads the subset from ``record.tags["subset"]``
    and scales 0-10 to [0, 1]; a reply without a parsable score is a failure, where the released parser says 5),
    judged locally by Qwen2.5-VL-32B-Instruct or by the OpenAI-compatible server at ``judge_endpoint`` serving
    ``judge_model`` (the released setup: sglang, temperature 0.2). Aesthetics: ``hpsv3`` mu (HPSv3, arXiv
    2508.03789), reported / 10 as the PSR paper does (arXiv 2512.01236; inferred from its tables' range).
    ``tiny=True`` builds every reward on tiny random-weight models (tests, CPU demos). Models and thresholds can be
    changed with ``--metrics``/``--set``.
    """
    tiny_args = {"path": "tiny"} if tiny else {}
    sc_args = {"mode": "psrbench_compat" if compat else "honest", **tiny_args}
    # a random-weight judge never writes a score: 16 new tokens bound its cost (tests)
    judge = judge_args({"path": "tiny", "max_new_tokens": 16} if tiny else {"path": PSRBENCH_JUDGE}, judge_endpoint,
                       judge_model)
    return {
        "subject_consistency": DimensionSpec(MetricSpec("subject_consistency", sc_args)),
        "semantic_alignment": DimensionSpec(
            MetricSpec("semantic_alignment", judge),
            {"Position": MetricSpec("position", {"mode": sc_args["mode"], **tiny_args})},
        ),
        "aesthetics": DimensionSpec(MetricSpec("hpsv3", dict(tiny_args), scale=0.1)),
    }


def dreambench_metrics(*, compat: bool = False, judge_endpoint: str | None = None, judge_model: str | None = None,
                       tiny: bool = False) -> dict[str, DimensionSpec]:
    """DreamBench: DINO ViT-S/16 and CLIP-I (image-image cosine to the reference image(s), averaged over them),
    CLIP-T (text-image cosine with the prompt), CLIP ViT-B/32 (DreamBooth's protocol, arXiv 2208.12242 and
    google/dreambooth ``dataset/prompts_and_classes.txt``).
    ``tiny=True`` uses tiny random-weight models. The judge options raise ``PsrlError`` (DreamBench has no judge)."""
    if compat or judge_endpoint or judge_model:
        raise PsrlError("--psrbench-compat, --judge-endpoint and --judge-model do not apply to DreamBench")
    args = {"path": "tiny"} if tiny else {}
    return {
        "dino": DimensionSpec(MetricSpec("dino", dict(args))),
        "clip_i": DimensionSpec(MetricSpec("clip_i", dict(args))),
        "clip_t": DimensionSpec(MetricSpec("clip_t", dict(args))),
    }


def pocket_metrics(*, compat: bool = False, judge_endpoint: str | None = None, judge_model: str | None = None,
                   tiny: bool = False) -> dict[str, DimensionSpec]:
    """PocketBench: the three parts of the ``pocket_subjects`` reward (:mod:`psrl.world.reward`), read from the
    world's known rendering. Subject consistency: identity (shape, colour, texture of each subject, one-to-one
    assignment); semantic alignment: the instruction's constraints (relation, size, action, background, order);
    fidelity, in place of aesthetics: the share of pixels the world's palette explains; SC gain: subject
    consistency minus the same image's against other subjects' references (``identity_gain``, in [-1, 1]: ~0 for a
    generator that ignores its references, ~0.7 on ground-truth scenes). No model (``tiny`` changes nothing); the
    judge options raise ``PsrlError``."""
    if compat or judge_endpoint or judge_model:
        raise PsrlError("--psrbench-compat, --judge-endpoint and --judge-model do not apply to PocketBench")
    return {dim: DimensionSpec(MetricSpec("pocket_subjects", {"score": score}))
            for dim, score in zip(POCKET_DIMENSIONS, ("identity", "semantic", "fidelity", "identity_gain"))}


def parse_metrics(data: dict, *, where: str = "metrics") -> dict[str, DimensionSpec]:
    """Build a metric set from plain data (YAML)::

        subject_consistency: {reward: subject_consistency, args: {mode: honest}}
        semantic_alignment:
          default: {reward: semantic_alignment}
          per_subset: {Position: {reward: position}}
        aesthetics: {reward: hpsv3, scale: 0.1}

    Every problem raises ``ValueError`` (also for a wrong type), which the CLI reports as a one-line config error.
    """
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{where}: expected a non-empty mapping of dimension -> metric, got {data!r}")
    out = {}
    for dim, spec in data.items():
        if not isinstance(spec, dict):
            raise ValueError(f"{where}.{dim}: expected a mapping, got {spec!r}")  # noqa: TRY004 - see parse_metrics
        if "default" in spec or "per_subset" in spec:
            unknown = set(spec) - {"default", "per_subset"}
            if unknown:
                raise ValueError(f"{where}.{dim}: unknown key(s) {sorted(unknown)}")
            default = _parse_metric(spec["default"], f"{where}.{dim}.default") if spec.get("default") else None
            per = {str(k): _parse_metric(v, f"{where}.{dim}.per_subset.{k}")
                   for k, v in (spec.get("per_subset") or {}).items()}
            out[str(dim)] = DimensionSpec(default, per)
        else:
            out[str(dim)] = DimensionSpec(_parse_metric(spec, f"{where}.{dim}"))
    return out


def _parse_metric(d, where: str) -> MetricSpec:
    if not isinstance(d, dict):
        raise ValueError(f"{where}: expected a mapping with 'reward', got {d!r}")  # noqa: TRY004 - see parse_metrics
    unknown = set(d) - {"reward", "args", "scale"}
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}")
    if not isinstance(d.get("reward"), str) or not d["reward"]:
        raise ValueError(f"{where}.reward: must name a reward, got {d.get('reward')!r}")
    args = d.get("args") or {}
    if not isinstance(args, dict):
        raise ValueError(f"{where}.args: must be a mapping, got {args!r}")  # noqa: TRY004 - see parse_metrics
    if why := misplaced_data_root(args, f"{where}.args"):  # the benchmark root is --data-root
        raise ValueError(why)
    try:
        scale = float(d.get("scale", 1.0))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}.scale: must be a number, got {d.get('scale')!r}") from e
    return MetricSpec(d["reward"], dict(args), scale)


def metrics_to_json(metrics: dict[str, DimensionSpec]) -> dict:
    return {dim: spec.to_json() for dim, spec in metrics.items()}
