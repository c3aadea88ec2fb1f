"""Rewards built on the VLM judge (:mod:`psrl.rewards.vlm`).

Every reward takes the judge options ``transport`` (``local`` | ``remote``; ``endpoint: URL`` is shorthand for
``transport: remote, url: URL``); for ``local``: ``path`` (a Qwen2.5-VL
directory or hub id, or ``tiny``), ``adapter_path`` (peft LoRA, e.g. PaCo-Reward-7B-Lora), ``dtype``,
``batch_size``; for ``remote``: ``url`` (``http://host:port/v1``), ``model``, ``api_key`` / ``api_key_env``,
``timeout``, ``retries``, ``backoff``, ``max_concurrency``, ``image_format``; for both: ``top_logprobs`` (20: how
many most probable first tokens to request; lower it for servers that cap it). Rewards that read references take
``background`` (the colour transparent reference pixels are composited onto; white) and get records whose
reference paths are resolved where the records were loaded (they take no data root, see
:class:`psrl.rewards.images.ReferenceImages`).

* ``vlm_consistency`` (p_yes, PaCo prompt): P(consistent) for each (reference_i, generated) pair, averaged
  (``pairs: all`` scores every unordered pair of {references..., generated}, PaCo's image-set rule).
* ``semantic_alignment`` (rubric): the PSRBench prompt for ``tags["subset"]`` (attribute, action, background,
  complex, three, four; others use ``default_subset``), only the generated image is shown, score / 10 in [0, 1].
  ``mode: honest`` (default) reads the score with the tolerant parser (``**[Score]:** 8``, ``[score]: 6``,
  ``[Score]：8``), ``mode: psrbench_compat`` with the released strict regex. PSRBench's Position subset is scored
  by geometry: use the ``position`` reward.
* ``edit_consistency`` (p_yes): ``sqrt(P(consistent) * P(follows instruction))`` for (original, edited), the original
  being the record's first subject image.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from psrl.data.records import Record
from psrl.rewards.base import RewardOutput
from psrl.rewards.images import ReferenceImageError, ReferenceImages, scorable_images
from psrl.rewards.vlm.judge import VLMJudge
from psrl.rewards.vlm.prompts import EDIT_CONSISTENCY_PROMPT, EDIT_FOLLOW_PROMPT, paco_prompt, rubric_prompt
from psrl.rewards.vlm.transports import JudgeRequest, build_transport

JUDGE_KEYS = ("transport", "path", "adapter_path", "batch_size", "url", "model", "api_key", "api_key_env",
              "timeout", "retries", "backoff", "max_concurrency", "image_format", "dtype", "top_logprobs")
# the rubric parser of each mode (the same mode names as subject_consistency and position)
RUBRIC_PARSER_OF_MODE = {"honest": "tolerant", "psrbench_compat": "strict"}


def _judge(device, judge_kwargs: dict, **judge_opts) -> VLMJudge:
    judge_kwargs = dict(judge_kwargs)
    if "endpoint" in judge_kwargs:  # shorthand: endpoint=URL means the remote transport at that URL
        judge_kwargs["url"] = judge_kwargs.pop("endpoint")
        judge_kwargs.setdefault("transport", "remote")
    unknown = set(judge_kwargs) - set(JUDGE_KEYS)
    if unknown:
        raise TypeError(f"unknown judge option(s) {sorted(unknown)}; allowed: {list(JUDGE_KEYS)}")
    return VLMJudge(build_transport(device=device, **judge_kwargs), **judge_opts)


def score_pairs(answers: Sequence, spans: dict[int, tuple[int, int]], failures: list, combine,
                reason=lambda bad, got: bad[0]) -> tuple[Tensor, list[list[float]], list[bool]]:
    """The judge's answers to a batch's concatenated pair requests, split back per sample: ``spans[b] = (start,
    end)`` are sample ``b``'s requests. Returns ``(scores [len(failures)] float32, per-pair P(Yes) per sample, whether
    any of a sample's answers was bounded)``; a sample with an unanswered pair keeps NaN and gets
    ``failures[b] = reason(reasons, answers of b)`` (in place), otherwise ``combine(per_pair[b])``. Samples not in
    ``spans`` stay NaN with the failure they already have. Shared by the reference-pair and the T2IS cell-pair
    rewards."""
    scores = torch.full((len(failures),), float("nan"))
    per_pair: list[list[float]] = [[] for _ in failures]
    bounded = [False] * len(failures)
    for b, (s, e) in spans.items():
        got = answers[s:e]
        per_pair[b] = [p for p, _, _ in got]
        bounded[b] = any(x for _, _, x in got)
        bad = [why for _, why, _ in got if why]
        if bad:
            failures[b] = reason(bad, got)
        else:
            scores[b] = combine(per_pair[b])
    return scores, per_pair, bounded


class _PairwiseBase:
    def __init__(self, device, canonicalize, judge_kwargs, background="white"):
        self.judge = _judge(device, judge_kwargs, canonicalize=canonicalize)
        self.refs = ReferenceImages(background=background)

    def _score_pairs(self, images, records, make_requests, combine, reason=lambda bad, got: bad[0]):
        """``make_requests(b, generated, record) -> list[JudgeRequest]`` (a ``ReferenceImageError`` or ``ValueError``
        it raises is sample ``b``'s failure); ``combine`` and ``reason`` as :func:`score_pairs`."""
        pils, failures, _ = scorable_images(images, records, self.name)
        spans, requests = {}, []
        for b, rec in enumerate(records):
            if failures[b]:
                continue
            try:
                reqs = make_requests(b, pils[b], rec)
            except (ReferenceImageError, ValueError) as e:
                failures[b] = str(e)
                continue
            spans[b] = (len(requests), len(requests) + len(reqs))
            requests += reqs
        scores, per_pair, bounded = score_pairs(self.judge.p_yes(requests), spans, failures, combine, reason)
        return scores, failures, per_pair, bounded


class VlmConsistencyReward(_PairwiseBase):
    """PaCo-Reward style consistency (arXiv 2512.04784): the VLM judge's P("Yes") that a reference and the
    generated image show the same subject, averaged over the pairs.

    Args:
        device: torch device of a local judge.
        pairs: ``references`` (each reference with the generated image) or ``all`` (every unordered pair of the
            references and the generated image, PaCo's image-set rule).
        template: a PaCo prompt template name (``v1``, ``v3``) or a custom string with an optional ``{theme}``.
        canonicalize: sum the probabilities of every case/whitespace variant of Yes and No.
        background: colour transparent reference pixels are composited onto.
        judge_kwargs: the judge options (``transport``, ``path``, ``adapter_path``, ``url``, ``model``,
            ``api_key_env``, ``top_logprobs``, ...; see psrl.rewards.vlm_rewards).

    Score range: [0, 1], a probability.
    NaN policy: a sample whose image has NaN pixels or breaks the shared size rule (psrl.rewards.images); a record
        without subjects or a reference that cannot be loaded; a judge reply with neither answer among its top
        tokens, or a transport error, for that sample.
    """

    name = "vlm_consistency"

    def __init__(self, device="cpu", *, pairs: str = "references",
                 template: str = "v1", canonicalize: bool = False, background: str | tuple = "white",
                 **judge_kwargs):
        if pairs not in ("references", "all"):
            raise ValueError(f"vlm_consistency: pairs must be 'references' or 'all', got {pairs!r}")
        super().__init__(device, canonicalize, judge_kwargs, background)
        self.pairs, self.template = pairs, template

    def __call__(self, images: Tensor | Sequence, records: Sequence[Record]) -> RewardOutput:
        def make(_, gen, rec: Record):
            if not rec.subjects:
                raise ReferenceImageError("record has no subjects")
            refs = [self.refs.load(s.image) for s in rec.subjects]
            text = paco_prompt(self.template, rec.prompt)
            if self.pairs == "references":
                return [JudgeRequest([r, gen], text) for r in refs]
            return [JudgeRequest([a, b], text) for a, b in itertools.combinations([*refs, gen], 2)]

        scores, failures, per_pair, bounded = self._score_pairs(images, records, make, lambda p: sum(p) / len(p))
        return RewardOutput(scores=scores, failures=failures,
                            details={"p_yes_pairs": per_pair, "p_yes_bounded": bounded})


class EditConsistencyReward(_PairwiseBase):
    """Edit consistency for an (original, edited) pair: ``sqrt(P(consistent) * P(follows the instruction))`` from
    the VLM judge's P("Yes") answers; the original is the record's first subject image.

    Args:
        device: torch device of a local judge.
        canonicalize: sum the probabilities of every case/whitespace variant of Yes and No.
        background: colour transparent pixels of the original are composited onto.
        judge_kwargs: the judge options (``transport``, ``path``, ``url``, ...; see psrl.rewards.vlm_rewards).

    Score range: [0, 1], a geometric mean of two probabilities.
    NaN policy: a sample whose image has NaN pixels or breaks the shared size rule (psrl.rewards.images); a record
        without an original image or one that cannot be loaded; a judge reply without a readable answer, or a
        transport error, for that sample.
    """

    name = "edit_consistency"

    def __init__(self, device="cpu", *, canonicalize: bool = False,
                 background: str | tuple = "white", **judge_kwargs):
        super().__init__(device, canonicalize, judge_kwargs, background)

    def __call__(self, images: Tensor | Sequence, records: Sequence[Record]) -> RewardOutput:
        def make(_, gen, rec: Record):
            if not rec.subjects:
                raise ReferenceImageError("edit_consistency needs the original image as the record's first subject")
            orig = self.refs.load(rec.subjects[0].image)
            return [JudgeRequest([orig, gen], EDIT_CONSISTENCY_PROMPT.format(instruction=rec.prompt)),
                    JudgeRequest([orig, gen], EDIT_FOLLOW_PROMPT.format(instruction=rec.prompt))]

        scores, failures, per_pair, bounded = self._score_pairs(images, records, make,
                                                                lambda p: math.sqrt(p[0] * p[1]))
        nan = float("nan")
        details = {"p_consistent": torch.tensor([p[0] if p else nan for p in per_pair]),
                   "p_follow": torch.tensor([p[1] if p else nan for p in per_pair]), "p_yes_bounded": bounded}
        return RewardOutput(scores=scores, failures=failures, details=details)


class SemanticAlignmentReward:
    """PSRBench semantic alignment: the VLM judge grades the generated image alone with the rubric prompt of the
    record's subset (``tags["subset"]``), and the reward is the grade / 10 (PSR, arXiv 2512.01236).

    Args:
        device: torch device of a local judge.
        default_subset: the rubric for records without a known subset (attribute, action, background, complex,
            three, four).
        max_new_tokens: length limit of the judge's reply.
        temperature: sampling temperature of the judge (default: 0.2 for a remote judge, as PSRBench; greedy
            locally).
        mode: ``honest`` (a tolerant score parser) or ``psrbench_compat`` (the released strict regex).
        judge_kwargs: the judge options (``transport``, ``path``, ``url``, ...; see psrl.rewards.vlm_rewards).

    Score range: [0, 1] (the judge's 0-10 grade / 10); the raw grade is in details["raw_score"].
    NaN policy: a sample whose image has NaN pixels or breaks the shared size rule (psrl.rewards.images); a reply in
        which no score can be read (the reply is kept in details["raw_text"]), or a transport error, for that
        sample.
    """

    name = "semantic_alignment"

    def __init__(self, device="cpu", *, default_subset: str = "complex", max_new_tokens: int = 512,
                 temperature: float | None = None, mode: str = "honest", **judge_kwargs):
        if mode not in RUBRIC_PARSER_OF_MODE:
            raise ValueError(f"semantic_alignment: mode must be one of {sorted(RUBRIC_PARSER_OF_MODE)}, got {mode!r}")
        if temperature is None and (judge_kwargs.get("transport") == "remote" or "endpoint" in judge_kwargs):
            temperature = 0.2  # the PSRBench request; local generation is greedy unless asked
        self.mode = mode
        self.judge = _judge(device, judge_kwargs, max_new_tokens=max_new_tokens, temperature=temperature,
                            rubric_parser=RUBRIC_PARSER_OF_MODE[mode])
        self.default_subset = default_subset
        rubric_prompt(None, "", default_subset)  # validates the name early

    def __call__(self, images: Tensor | Sequence, records: Sequence[Record]) -> RewardOutput:
        pils, failures, _ = scorable_images(images, records, self.name)
        subsets: list[str | None] = [None] * len(records)
        requests, index = [], []
        for b, rec in enumerate(records):
            text, subsets[b] = rubric_prompt(rec.tags.get("subset"), rec.prompt, self.default_subset)
            if failures[b]:
                continue
            requests.append(JudgeRequest([pils[b]], text))
            index.append(b)
        scores = torch.full((len(records),), float("nan"))
        raw_scores = torch.full((len(records),), float("nan"))
        texts: list[str | None] = [None] * len(records)
        for b, (score, why, text) in zip(index, self.judge.rubric(requests)):
            texts[b] = text
            if why:
                failures[b] = why
            else:
                raw_scores[b] = score
                scores[b] = score / 10.0
        return RewardOutput(scores=scores, failures=failures,
                            details={"raw_score": raw_scores, "raw_text": texts, "subset": subsets})
