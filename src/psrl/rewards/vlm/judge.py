"""The VLM judge: two scoring modes over any transport.

* ``p_yes``: ``sigmoid(logp("Yes") - logp("No"))`` of the first answer token (PaCo-Reward). With
  ``canonicalize`` the probabilities of every case/whitespace variant of yes/no are summed. When only one of the two
  tokens is among a remote endpoint's top logprobs, the absent one is bounded by the smallest listed logprob (it
  is below all of them); ``details`` flags this. Neither present -> NaN with the reason (PaCo returns 0.0).
* ``rubric``: the reply text is parsed by :func:`psrl.rewards.vlm.prompts.parse_rubric_score`; no parsable score ->
  NaN with the raw text kept (the PSRBench scorer substitutes 5).
"""
from __future__ import annotations

import math
from typing import Sequence

from psrl.rewards.vlm.prompts import parse_rubric_score
from psrl.rewards.vlm.transports import Failed, JudgeRequest, Transport


def p_yes_from_logprobs(logprobs: dict[str, float], canonicalize: bool = False,
                        yes: str = "Yes", no: str = "No") -> tuple[float, str | None, bool]:
    """``(P(yes) / (P(yes) + P(no)), failure reason, bounded)`` from a first-token ``{token: logprob}`` map."""
    if canonicalize:
        p_y = sum(math.exp(v) for t, v in logprobs.items() if t.strip().lower() == yes.lower())
        p_n = sum(math.exp(v) for t, v in logprobs.items() if t.strip().lower() == no.lower())
        if p_y + p_n <= 0:
            return float("nan"), f"neither {yes!r} nor {no!r} (any case) among the first-token logprobs", False
        return p_y / (p_y + p_n), None, False
    lp_y, lp_n = logprobs.get(yes), logprobs.get(no)
    if lp_y is None and lp_n is None:
        return float("nan"), f"neither {yes!r} nor {no!r} among the first-token logprobs", False
    bounded = lp_y is None or lp_n is None
    floor = min(logprobs.values())
    lp_y = floor if lp_y is None else lp_y
    lp_n = floor if lp_n is None else lp_n
    d = lp_y - lp_n
    if math.isnan(d):  # both -inf (or a NaN slipped through): the judge gave neither answer any mass
        return float("nan"), f"{yes!r} and {no!r} both have log-probability {lp_y} / {lp_n}", False
    return 1.0 / (1.0 + math.exp(-d)) if d > -700 else 0.0, None, bounded


class VLMJudge:
    def __init__(self, transport: Transport, *, canonicalize: bool = False, max_new_tokens: int = 512,
                 temperature: float | None = None):
        self.transport, self.canonicalize = transport, canonicalize
        self.max_new_tokens, self.temperature = max_new_tokens, temperature

    def p_yes(self, requests: Sequence[JudgeRequest]) -> list[tuple[float, str | None, bool]]:
        if not requests:
            return []
        replies = self.transport.first_token_logprobs(list(requests), ("Yes", "No"))
        out = []
        for r in replies:
            if isinstance(r, Failed):
                out.append((float("nan"), r.reason, False))
            else:
                out.append(p_yes_from_logprobs(r, self.canonicalize))
        return out

    def rubric(self, requests: Sequence[JudgeRequest], max_score: float = 10.0
               ) -> list[tuple[float, str | None, str | None]]:
        """``(raw score in [0, max_score] or NaN, failure reason, reply text)`` per request."""
        if not requests:
            return []
        replies = self.transport.generate(list(requests), self.max_new_tokens, self.temperature)
        out = []
        for r in replies:
            if isinstance(r, Failed):
                out.append((float("nan"), r.reason, None))
                continue
            score = parse_rubric_score(r, max_score)
            if score is None:
                out.append((float("nan"), "judge reply has no parsable '[Score]: <0-10>'", r))
            else:
                out.append((score, None, r))
        return out
