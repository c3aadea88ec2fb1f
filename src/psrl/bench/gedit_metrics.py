"""VIEScore for GEdit-Bench (rules and sources in :mod:`psrl.bench.gedit`): the prompts, the reply parser and the
metric ``psrl bench eval`` builds by dotted path (``psrl.bench.gedit_metrics:VIEScoreMetric``).

The prompt texts are TIGER-AI-Lab/VIEScore@a35f13f ``viescore/vie_prompts.py`` (``_context_no_delimit``,
``_prompts_0shot_two_image_edit_rule``, ``_prompts_0shot_tie_rule_SC``, ``_prompts_0shot_rule_PQ``) joined with
newlines as ``VIEScore(task="tie")`` joins them; tests/test_bench_gedit.py pins their SHA-256.
"""
from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Sequence

import torch

from psrl.rewards.base import RewardOutput
from psrl.rewards.images import ReferenceImageError, ReferenceImages, to_pil_images
from psrl.rewards.isolation import Failed
from psrl.rewards.vlm.cache import AnswerCache, request_key
from psrl.rewards.vlm.transports import JudgeRequest
from psrl.rewards.vlm_rewards import _judge

_CONTEXT = "\n".join((
    "You are a professional digital artist. You will have to evaluate the effectiveness of the AI-generated image(s) "
    "based on given rules.",
    "All the input images are AI-generated. All human in the images are AI-generated too. so you need not worry "
    "about the privacy confidentials.",
    "",
    "You will have to give your output in this way (Keep your reasoning concise and short.):",
    "{", '"score" : [...],', '"reasoning" : "..."', "}"))
_TWO_IMAGE_EDIT_RULE = "\n".join((
    "RULES:", "",
    "Two images will be provided: The first being the original AI-generated image and the second being an edited "
    "version of the first.",
    "The objective is to evaluate how successfully the editing instruction has been executed in the second image.",
    "",
    "Note that sometimes the two images might look identical due to the failure of image edit.", ""))
_TIE_RULE_SC = "\n".join((
    "", "From scale 0 to 10: ",
    "A score from 0 to 10 will be given based on the success of the editing. (0 indicates that the scene in the "
    "edited image does not follow the editing instruction at all. 10 indicates that the scene in the edited image "
    "follow the editing instruction text perfectly.)",
    "A second score from 0 to 10 will rate the degree of overediting in the second image. (0 indicates that the "
    "scene in the edited image is completely different from the original. 10 indicates that the edited image can "
    "be recognized as a minimal edited yet effective version of original.)",
    "Put the score in a list such that output score = [score1, score2], where 'score1' evaluates the editing "
    "success and 'score2' evaluates the degree of overediting.",
    "", "Editing instruction: <instruction>", ""))
_RULE_PQ = "\n".join((
    "RULES:", "", "The image is an AI-generated image.",
    "The objective is to evaluate how successfully the image has been generated.", "",
    "From scale 0 to 10: ", "A score from 0 to 10 will be given based on image naturalness. ", "(",
    "    0 indicates that the scene in the image does not look natural at all or give a unnatural feeling such as "
    "wrong sense of distance, or wrong shadow, or wrong lighting. ",
    "    10 indicates that the image looks natural.", ")",
    "A second score from 0 to 10 will rate the image artifacts. ", "(",
    "    0 indicates that the image contains a large portion of distortion, or watermark, or scratches, or blurred "
    "faces, or unusual body parts, or subjects not harmonized. ",
    "    10 indicates the image has no artifacts.", ")",
    "Put the score in a list such that output score = [naturalness, artifacts]", ""))
SC_PROMPT = "\n".join((_CONTEXT, _TWO_IMAGE_EDIT_RULE, _TIE_RULE_SC))  # "<instruction>" is replaced per sample
PQ_PROMPT = "\n".join((_CONTEXT, _RULE_PQ))
DELIMITER = "||V^=^V||"
OUTPUTS = ("semantic_consistency", "perceptual_quality", "overall")


def parse_viescore(text: str | None) -> list[float] | None:
    """The ``score`` list of a VIEScore reply, each in [0, 10]; ``None`` when there is none.

    Looked for as upstream does (``viescore/utils.py`` ``mllm_output_to_dict``): the JSON between two
    ``||V^=^V||`` delimiters, else from the first ``{`` to the last ``}``, else a bare ``[a, b]`` list or a bare
    integer; a scalar ``score`` counts as a one-element list. Upstream's last resorts (a regex that rewrites
    broken JSON, then a random score) are not reproduced: such a reply is unscorable. Pure function."""
    text = (text or "").strip()
    if text.count(DELIMITER) == 2:
        body = text[text.find(DELIMITER) + len(DELIMITER):text.rfind(DELIMITER)]
    elif "{" in text and "}" in text[text.find("{"):]:
        body = text[text.find("{"):text.rfind("}") + 1]
    elif re.fullmatch(r"\[\s*\d+\s*(,\s*\d+\s*)*\]", text):
        body = json.dumps({"score": json.loads(text)})
    elif re.fullmatch(r"\d+", text):
        body = json.dumps({"score": [int(text)]})
    else:
        return None
    try:
        data = json.loads(body.replace("\n", ""))
    except json.JSONDecodeError:
        try:  # single quotes or a trailing comma, as Python literals allow
            data = ast.literal_eval(body.replace("\n", ""))
        except (ValueError, SyntaxError):
            return None
    score = data.get("score") if isinstance(data, dict) else None
    score = score if isinstance(score, list) else [score]
    if not score or not all(isinstance(s, (int, float)) and not isinstance(s, bool) and 0 <= s <= 10 for s in score):
        return None
    return [float(s) for s in score]


def viescore_overall(sc: float, pq: float) -> float:
    """O = sqrt(SC * PQ) (VIEScore's overall, GEdit-Bench's ``calculate_statistics.py``)."""
    return math.sqrt(sc * pq)


class VIEScoreMetric:
    """One of SC / PQ / O (``output``) of an edited image against the record's instruction and source image (its
    first subject). Replies are cached per (judge, request) in a bounded FIFO shared by the three outputs, so SC,
    PQ and O of a sample cost two judge requests. Scores in [0, 10]; ``details``: both score lists and replies,
    and the entry's ``Intersection_exist`` (read by :func:`psrl.bench.gedit.intersection_summary`)."""

    name = "viescore"
    replies = AnswerCache(4096)  # shared by the instances (SC, PQ, O); keys name the judge

    def __init__(self, device="cpu", *, output: str = "overall", max_new_tokens: int = 512,
                 temperature: float | None = None, **judge_kwargs):
        if output not in OUTPUTS:
            raise ValueError(f"viescore: output must be one of {list(OUTPUTS)}, got {output!r}")
        self.output, self.max_new_tokens, self.temperature = output, max_new_tokens, temperature
        self.judge = _judge(device, judge_kwargs)
        self.judge_key = json.dumps([judge_kwargs, max_new_tokens, temperature], sort_keys=True, default=str)
        self.refs = ReferenceImages()  # the loader resolved each record's source image under --data-root

    def _source(self, record):
        if not record.subjects or not record.subjects[0].image:
            raise ReferenceImageError("the record has no source image (its first subject)")
        return self.refs.load(record.subjects[0].image, what="source image")

    def __call__(self, images, records: Sequence) -> RewardOutput:
        pils, failures = to_pil_images(images)
        n = len(records)
        pending = {}
        requests: list[JudgeRequest] = []
        for b, record in enumerate(records):
            if failures[b]:
                continue
            try:
                src = self._source(record)
            except ReferenceImageError as e:
                failures[b] = str(e)
                continue
            edited = pils[b].resize(src.size)
            sc_text = SC_PROMPT.replace("<instruction>", record.prompt)
            pending[b] = (len(requests), len(requests) + 1)
            requests += [JudgeRequest([src, edited], sc_text), JudgeRequest([edited], PQ_PROMPT)]
        replies = self.replies.answers([(self.judge_key, *request_key(r)) for r in requests], requests,
                                       lambda rs: self.judge.transport.generate(rs, self.max_new_tokens,
                                                                                self.temperature))
        scores = torch.full((n,), float("nan"))
        details: dict[str, list] = {k: [None] * n for k in ("sc_scores", "pq_scores", "sc_reply", "pq_reply")}
        details["intersection"] = [r.tags.get("intersection") for r in records]
        needed = {"semantic_consistency": ("sc",), "perceptual_quality": ("pq",), "overall": ("sc", "pq")}[self.output]
        for b, (i_sc, i_pq) in pending.items():
            for which, i in (("sc", i_sc), ("pq", i_pq)):
                reply = replies[i]
                if isinstance(reply, Failed):
                    failures[b] = failures[b] or f"{which.upper()} judge request failed: {reply.reason}"
                    continue
                details[f"{which}_reply"][b] = reply
                details[f"{which}_scores"][b] = parse_viescore(reply)
                if details[f"{which}_scores"][b] is None:
                    failures[b] = failures[b] or f"{which.upper()} reply has no parsable score list: {reply[:200]!r}"
            got = [min(details[f"{w}_scores"][b]) for w in needed if details[f"{w}_scores"][b] is not None]
            if len(got) == len(needed):  # a failure of the half this output does not use leaves it scorable
                failures[b] = None
                scores[b] = viescore_overall(*got) if len(got) == 2 else got[0]
        return RewardOutput(scores=scores, failures=failures, details=details)
