"""The VLM judge: two scoring modes over any transport.

* ``p_yes``: P("Yes") / (P("Yes") + P("No")) of the first answer token (PaCo-Reward, arXiv 2512.04784;
  X-GenGroup/PaCo-RL@08caac6; computed as ``sigmoid(logp("Yes") - logp("No"))``). With ``canonicalize`` the
  probabilities of every case/whitespace variant of yes/no are summed. When a remote endpoint lists only one of the
  two answers, the other is bounded by what the listing leaves (:func:`p_yes_from_logprobs`), ``details`` flags it;
  when the listing cannot tell the answer, or lists neither, the sample is NaN with the reason (PaCo returns 0.0).
* ``rubric``: the reply text is parsed by :func:`psrl.rewards.vlm.prompts.parse_rubric_score` (the tolerant parser,
  or the released strict regex under ``psrbench_compat``); no parsable score -> NaN with the raw text kept (the
  PSRBench scorer substitutes 5).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

from psrl.rewards.vlm.prompts import RUBRIC_PARSERS, parse_rubric_score
from psrl.rewards.vlm.transports import Failed, FirstToken, JudgeRequest, Transport


def _logsumexp(values: list[float]) -> float:
    finite = [v for v in values if v != -math.inf]
    if not finite:
        return -math.inf
    m = max(finite)
    return m + math.log(sum(math.exp(v - m) for v in finite))


def p_yes_from_logprobs(logprobs: dict[str, float], canonicalize: bool = False, yes: str = "Yes", no: str = "No",
                        top_k: bool = True) -> tuple[float, str | None, bool]:
    """``(P(yes) / (P(yes) + P(no)), failure reason, bounded)`` from a first-token ``{token: logprob}`` listing.

    Both answers listed: the ratio itself (``bounded`` False). Neither listed: NaN with the reason. One listed
    with probability ``p``: the other one's probability ``q`` is unknown but bounded above by

    * ``1 - sum(listed probabilities)``, the mass the listing leaves (always), and
    * the smallest listed probability, when the listing is a top-k list (``top_k``; not with ``canonicalize``,
      where several unlisted variants could each be that large);

    the estimate takes ``q`` at that bound ``u``, the value of the ratio closest to 0.5 the listing allows (the
    true P(yes) lies between it and 0 or 1). If ``u > p`` the unlisted answer may be the likelier one and the
    listing cannot tell the answer: NaN with the reason. Examples (only the sampled token listed): "Yes" at 0.99 ->
    0.99; "No" at 0.97 -> 0.03; "Yes" at 0.4 -> NaN ("No" may hold up to 0.6).

    Args:
        logprobs: natural-log probabilities (<= 0, ``-inf`` allowed) of the listed first tokens.
        canonicalize: sum the probabilities of every case/whitespace variant of each answer.
        yes, no: the two answer tokens.
        top_k: the listing holds the model's most probable tokens (``False``: only the sampled token is known).

    Returns:
        ``(p in [0, 1] or NaN, reason or None, bounded)``.
    """
    def match(token: str, answer: str) -> bool:
        return token.strip().lower() == answer.lower() if canonicalize else token == answer

    ys = [v for t, v in logprobs.items() if match(t, yes)]
    ns = [v for t, v in logprobs.items() if match(t, no)]
    if not ys and not ns:
        variants = " (any case)" if canonicalize else ""
        return float("nan"), f"neither {yes!r} nor {no!r}{variants} among the first-token logprobs", False
    lp_y = _logsumexp(ys) if ys else None
    lp_n = _logsumexp(ns) if ns else None
    bounded = lp_y is None or lp_n is None
    if bounded:
        listed, unlisted, lp_listed = (yes, no, lp_y) if lp_n is None else (no, yes, lp_n)
        u = max(0.0, 1.0 - sum(math.exp(v) for v in logprobs.values()))
        if top_k and not canonicalize:
            u = min(u, math.exp(min(logprobs.values())))
        p = math.exp(lp_listed)
        if u > p:
            why = (f"only {listed!r} is among the first-token logprobs (p={p:.3g}) and the unlisted {unlisted!r} "
                   f"may hold up to {u:.3g}, so the answer is undetermined")
            return float("nan"), why, True
        lp_u = math.log(u) if u > 0 else -math.inf
        lp_y, lp_n = (lp_y, lp_u) if lp_n is None else (lp_u, lp_n)
    d = lp_y - lp_n
    if math.isnan(d):  # both -inf (or a NaN slipped through): the judge gave neither answer any mass
        return float("nan"), f"{yes!r} and {no!r} both have log-probability {lp_y} / {lp_n}", False
    return (1.0 / (1.0 + math.exp(-d)) if d > -700 else 0.0), None, bounded


class VLMJudge:
    """Scores judge requests over a transport. ``rubric_parser``: ``"tolerant"`` (default) or ``"strict"`` (the
    released PSRBench regex), see :data:`psrl.rewards.vlm.prompts.RUBRIC_PARSERS`."""

    def __init__(self, transport: Transport, *, canonicalize: bool = False, max_new_tokens: int = 512,
                 temperature: float | None = None, rubric_parser: str = "tolerant"):
        if rubric_parser not in RUBRIC_PARSERS:
            raise ValueError(f"vlm judge: rubric_parser must be one of {sorted(RUBRIC_PARSERS)}, got "
                             f"{rubric_parser!r}")
        self.transport, self.canonicalize = transport, canonicalize
        self.max_new_tokens, self.temperature = max_new_tokens, temperature
        self.rubric_parser = rubric_parser

    def p_yes(self, requests: Sequence[JudgeRequest]) -> list[tuple[float, str | None, bool]]:
        """``(P(Yes) or NaN, failure reason, bounded)`` per request."""
        if not requests:
            return []
        replies = self.transport.first_token_logprobs(list(requests), ("Yes", "No"))
        out = []
        for r in replies:
            if isinstance(r, Failed):
                out.append((float("nan"), r.reason, False))
            else:
                first = r if isinstance(r, FirstToken) else FirstToken(dict(r))
                out.append(p_yes_from_logprobs(first.logprobs, self.canonicalize, top_k=first.top_k))
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
            score = parse_rubric_score(r, max_score, parser=self.rubric_parser)
            if score is None:
                which = " (strict PSRBench parser)" if self.rubric_parser == "strict" else ""
                out.append((float("nan"), f"judge reply has no parsable '[Score]: <0-{max_score:g}>'{which}", r))
            else:
                out.append((score, None, r))
        return out
