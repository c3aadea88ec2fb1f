"""The data pipeline's config: one typed dataclass per stage, loaded from YAML with ``--set`` overrides.

Defaults follow the data pipeline of PSR (arXiv 2512.01236; the figure ``assets/dataconstruction.jpeg`` of
wang-shulei/PSR@c719168) where the paper pins something (Objects365 categories,
2/3/4 subjects at 0.9/0.05/0.05, a FLUX text-to-image renderer, a Kontext single-subject reference model, 512 px
training resolution); everything else is our choice and says so.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from psrl.config import check_range
from psrl.data.records import misplaced_data_root
from psrl.models.config import ModelConfig

TASKS = ("Attribute", "Action", "Background", "Position", "Complex", "Three", "Four")
TWO_SUBJECT_TASKS = ("Attribute", "Action", "Background", "Position", "Complex")
REEDITABLE_TASKS = ("Attribute", "Action", "Background")


# alike on purpose: typed field lists, one per stage section
@dataclass
class EndpointConfig:
    """An OpenAI-compatible chat-completions server (vLLM, sglang, llama.cpp, OpenAI).

    Attributes:
        url: base URL such as ``http://127.0.0.1:8000/v1`` (``/chat/completions`` is appended); ``None`` = unused.
        model: the ``model`` field sent.
        api_key_env: name of the environment variable holding the key (sent as a bearer token when set).
        timeout: per-request timeout in seconds. retries: extra attempts after a failed request (backoff 1, 2,
            4 s ...).
        temperature: sampling temperature sent with each request.
        max_new_tokens: longest reply (sent as the request's ``max_tokens``).
        max_concurrency: requests in flight at once (one thread each).

    The endpoint keys are those of the pair stages' teacher (:class:`psrl.reward_model.pair_stages.TeacherConfig`)
    and of the VLM judges' ``args``. Their old names here (``timeout_s``, ``max_tokens``, ``concurrency``, written
    in the ``config.yaml`` of every earlier dataset folder) still load, with a warning.
    """

    RENAMED_KEYS: ClassVar[dict[str, str]] = {"timeout_s": "timeout", "max_tokens": "max_new_tokens",
                                              "concurrency": "max_concurrency"}

    # alike on purpose: the endpoint fields of pair_stages.TeacherConfig, under this stage's own defaults
    url: str | None = None
    model: str = "default"
    api_key_env: str = "PSRL_LLM_API_KEY"
    timeout: float = 60.0
    retries: int = 2
    temperature: float = 0.7
    max_new_tokens: int = 300
    max_concurrency: int = 8

    def __post_init__(self):
        check_range(self, "max_concurrency", 1)
        check_range(self, "timeout", 0, lo_open=True)
        check_range(self, "retries", 0)


@dataclass
class SubjectsConfig:
    """Attributes:
        num_samples: how many samples to plan (raising it later adds samples, existing ones are kept).
        vocab: a text file of category names (one per line, ``#`` comments); ``None`` = the shipped Objects365 list.
        counts / count_weights: subjects per sample and their probabilities (PSR: 2/3/4 at 0.9/0.05/0.05).
        two_subject_tasks: the tasks a 2-subject sample is drawn from, uniformly (3 -> Three, 4 -> Four).
    """

    num_samples: int = 1000
    vocab: str | None = None
    counts: list[int] = field(default_factory=lambda: [2, 3, 4])
    count_weights: list[float] = field(default_factory=lambda: [0.9, 0.05, 0.05])
    two_subject_tasks: list[str] = field(default_factory=lambda: list(TWO_SUBJECT_TASKS))

    def __post_init__(self):
        check_range(self, "num_samples", 1, section="subjects")
        if len(self.counts) != len(self.count_weights) or not self.counts:
            raise ValueError("subjects.counts and subjects.count_weights must be non-empty and of equal length")
        if any(c not in (2, 3, 4) for c in self.counts):
            raise ValueError(f"subjects.counts must be among 2, 3, 4 (the PSRBench tasks), got {self.counts}")
        if any(w < 0 for w in self.count_weights) or sum(self.count_weights) <= 0:
            raise ValueError(f"subjects.count_weights must be >= 0 with a positive sum, got {self.count_weights}")
        bad = [t for t in self.two_subject_tasks if t not in TWO_SUBJECT_TASKS]
        if bad or not self.two_subject_tasks:
            raise ValueError(f"subjects.two_subject_tasks must be among {TWO_SUBJECT_TASKS}, got {bad or '[]'}")


@dataclass
class PromptsConfig:
    """``llm.url`` unset: template prompts; set: the LLM writes each prompt (strictly parsed)."""

    llm: EndpointConfig = field(default_factory=EndpointConfig)


@dataclass
class GenerationConfig:
    """A generator and how it samples. ``model`` is any policy config (``path: tiny`` for tests)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    # alike on purpose: the sampling keys of psrl.sampling / psrl train, under this stage's own defaults
    num_steps: int = 28
    height: int = 512
    width: int = 512
    guidance_scale: float = 3.5
    batch_size: int = 4

    def __post_init__(self):
        check_range(self, ("num_steps", "batch_size"), 1)
        check_range(self, ("height", "width"), 16)


@dataclass
class GroundConfig:
    """Attributes:
        detector: the detector spec of :func:`psrl.rewards.detection.build_detector` (``{kind: grounding_dino |
            owlv2, path, box_threshold, ...}``; ``path: tiny`` in tests).
        min_box_area: smallest box area as a fraction of the image area (our choice: 2%).
        min_box_side: smallest box side in pixels (our choice).
        max_pair_iou: two subjects whose boxes overlap more than this are "on one box" and the sample is rejected.
        crop_padding: crops extend each box by this fraction of its size on every side (clamped to the image).
        batch_size: samples per detector call.
    """

    detector: dict = field(default_factory=lambda: {"kind": "grounding_dino"})
    min_box_area: float = 0.02
    min_box_side: int = 32
    max_pair_iou: float = 0.5
    crop_padding: float = 0.05
    batch_size: int = 8

    def __post_init__(self):
        check_range(self, "max_pair_iou", 0, 1, section="ground")
        check_range(self, "min_box_area", 0, 1, hi_open=True, section="ground")
        check_range(self, "batch_size", 1, section="ground")


@dataclass
class ReferencesConfig(GenerationConfig):
    """Single-subject reference model (FLUX.1 Kontext) re-rendering each crop. ``white_background_prob``: the
    share of references asked for "on a plain white background" instead of a new scene (our choice: 0.5)."""

    model: ModelConfig = field(default_factory=lambda: ModelConfig(name="flux_kontext"))
    guidance_scale: float = 2.5
    white_background_prob: float = 0.5


@dataclass
class ReeditConfig(GenerationConfig):
    """PSR's re-editing step (arXiv 2512.01236, data pipeline): an image-editing model edits each eligible target after
    its references were made (see :mod:`psrl.datagen.reedit`).

    Attributes:
        enabled: edit (``false``: every sample passes through unchanged).
        tasks: tasks whose targets are edited, among Attribute (a new accessory on one subject), Action (a new
            action) and Background (a new scene); PSR names attribute and action edits "etc." (our choice: all 3).
        prob: the share of eligible samples edited (our choice: 1.0).
        model, num_steps, height, width, guidance_scale, batch_size: the editor (FLUX.1 Kontext by default) and its
            sampling; keep ``height``/``width`` equal to ``render``'s so edited and unedited targets match.
    """

    model: ModelConfig = field(default_factory=lambda: ModelConfig(name="flux_kontext"))
    guidance_scale: float = 2.5
    enabled: bool = True
    tasks: list[str] = field(default_factory=lambda: list(REEDITABLE_TASKS))
    prob: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        bad = [t for t in self.tasks if t not in REEDITABLE_TASKS]
        if bad:
            raise ValueError(f"reedit.tasks: {bad} cannot be re-edited (Position is measured on the unedited "
                             f"target's boxes); choose among {list(REEDITABLE_TASKS)}")
        check_range(self, "prob", 0, 1, section="reedit")


@dataclass
class InstructionsConfig:
    """``vlm.url`` unset: template instructions; set: a VLM sees the target and references and writes it.
    ``appearance_words``: extra words an instruction may not use to describe a subject (added to the built-in
    list, see :mod:`psrl.datagen.instructions`)."""

    vlm: EndpointConfig = field(default_factory=EndpointConfig)
    appearance_words: list[str] = field(default_factory=list)


@dataclass
class FilterConfig:
    """Attributes:
        reward / reward_args: the subject-consistency reward (``psrl.rewards.build_reward``) scoring each target
            against its references (resolved under the dataset directory before scoring).
        min_consistency: keep a sample whose consistency score is at least this (our choice: 0.5).
        min_subject_consistency: ... and, when set, whose every subject scores at least this.
        embedder: the image embedder spec of :func:`psrl.rewards.embedding.build_embedder` used for near-duplicate
            targets.
        max_duplicate_cosine: a target whose embedding cosine to an earlier kept target exceeds this is dropped.
        batch_size: samples per reward call.
    """

    reward: str = "subject_consistency"
    reward_args: dict = field(default_factory=dict)
    min_consistency: float = 0.5
    min_subject_consistency: float | None = None
    embedder: dict = field(default_factory=lambda: {"kind": "dinov2"})
    max_duplicate_cosine: float = 0.95
    batch_size: int = 8

    def __post_init__(self):
        check_range(self, "batch_size", 1, section="filter")
        check_range(self, "max_duplicate_cosine", -1, 1, section="filter")
        if why := misplaced_data_root(self.reward_args, "filter.reward_args"):
            raise ValueError(why)


@dataclass
class ExportConfig:
    """``heldout_fraction`` of the kept samples (chosen with ``seed``) go to the held-out split, exported as
    ``eval.jsonl`` records (what recipes' ``eval.records`` read) and as PSRBench JSON per task (``psrbench/``);
    the rest are ``train.jsonl`` training records."""

    heldout_fraction: float = 0.02
    seed: int = 0

    def __post_init__(self):
        check_range(self, "heldout_fraction", 0, 1, section="export")


@dataclass
class DataPipelineConfig:
    """Everything the nine stages need. ``seed`` seeds every random choice (each sample derives its own seed from
    it and its index, so results do not depend on sharding or batching). ``device``: ``auto`` = this rank's GPU or
    the CPU."""

    seed: int = 0
    device: str = "auto"
    subjects: SubjectsConfig = field(default_factory=SubjectsConfig)
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    render: GenerationConfig = field(default_factory=GenerationConfig)
    ground: GroundConfig = field(default_factory=GroundConfig)
    references: ReferencesConfig = field(default_factory=ReferencesConfig)
    reedit: ReeditConfig = field(default_factory=ReeditConfig)
    instructions: InstructionsConfig = field(default_factory=InstructionsConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    export: ExportConfig = field(default_factory=ExportConfig)


# Tiny random-weight components and permissive thresholds: the whole pipeline runs on a CPU in seconds. The images
# are noise, so the thresholds only exercise the plumbing (manifests, resume, sharding, statistics).
TINY_PRESET = {
    "subjects": {"num_samples": 8, "count_weights": [0.6, 0.2, 0.2]},
    # 96 px targets: the tiny detector's boxes are ~10% of the side, so crops reach psrl.images.MIN_SIDE (8 px), the
    # smallest reference the policies and rewards accept
    "render": {"model": {"name": "flux", "path": "tiny", "max_sequence_length": 32}, "num_steps": 2,
               "height": 96, "width": 96, "batch_size": 4},
    "ground": {"detector": {"kind": "grounding_dino", "path": "tiny", "box_threshold": 0.0},
               "min_box_area": 0.0, "min_box_side": 8, "max_pair_iou": 1.0},
    "references": {"model": {"name": "flux_kontext", "path": "tiny", "max_sequence_length": 32,
                             "args": {"reference_long_side_single": 32, "reference_long_side_multi": 32}},
                   "num_steps": 2, "height": 32, "width": 32, "batch_size": 4},
    "reedit": {"model": {"name": "flux_kontext", "path": "tiny", "max_sequence_length": 32,
                         "args": {"reference_long_side_single": 32, "reference_long_side_multi": 32}},
               "num_steps": 2, "height": 32, "width": 32, "batch_size": 4},
    "filter": {"reward_args": {"path": "tiny", "detector": {"kind": "grounding_dino", "box_threshold": 0.0}},
               "min_consistency": -1.0,
               "embedder": {"kind": "dinov2", "path": "tiny"}, "max_duplicate_cosine": 0.99999},
    "export": {"heldout_fraction": 0.3},
}
