"""PaCo-Reward's weighted first-token loss and the first-token metrics, as pure tensor functions.

The judge's score is read from the first answer token alone (P(Yes) / (P(Yes) + P(No))), but the model is trained on
the whole reply, the answer followed by its reasons. PaCo-Reward (arXiv 2512.04784) weights the cross-entropy of a
sequence's ``n`` supervised tokens so that the first one (the answer) gets weight ``alpha`` and each of the other
``n - 1`` (the reasons, the end-of-turn tokens) gets ``n (1 - alpha) / (n - 1)``; a sequence with a single
supervised token gives it weight ``alpha`` (the released float32 expression ``w_other + (alpha - w_other)`` with
``w_other = (1 - alpha) / 1e-8`` cancels to 0 there; psrl's replies always end with the end-of-turn tokens, so
``n >= 3`` in training and the two agree). The batch loss is the weighted sum over all supervised tokens divided by
their count (not per sequence). Released as ``first_token_weight`` (0.1; "0.1 is tested the best",
``PaCo-Reward/README.md``) in
X-GenGroup/PaCo-RL@08caac6 ``PaCo-Reward/LLaMA-Factory/src/llamafactory/train/sft/trainer.py``
(``CustomSeq2SeqTrainer.compute_loss``) with ``PaCo-Reward/config/paco_reward_lora.yaml``; the same file's labels
are shifted by one as for any causal LM (logits at position ``t`` predict the token at ``t + 1``).

``alpha = None`` is plain token-mean cross-entropy (LLaMA-Factory's default when ``first_token_weight`` is unset).
"""
from __future__ import annotations

import torch
from torch import Tensor

IGNORE_INDEX = -100


def first_token_weights(mask: Tensor, alpha: float | None) -> Tensor:
    """Per-token weights ``[B, T]`` float32 for the supervised ``mask [B, T]`` (bool): ``alpha`` on each row's first
    supervised token, ``n (1 - alpha) / (n - 1)`` on its other ``n - 1``, 0 off the mask; all 1 on the mask when
    ``alpha`` is None. A row without supervised tokens gets all zeros."""
    mask = mask.bool()
    if alpha is None:
        return mask.float()
    n = mask.sum(dim=1, keepdim=True).float()
    first = mask & (mask.long().cumsum(dim=1) == 1)
    w_other = n * (1.0 - alpha) / (n - 1).clamp(min=1.0)  # n == 1: unused (its only token is the first)
    w = torch.where(first, torch.full_like(w_other, float(alpha)).expand_as(mask), w_other.expand_as(mask))
    return w * mask.float()


def shift_labels(labels: Tensor) -> Tensor:
    """``labels [B, T]`` -> the target of each logit position ``[B, T]``: ``labels[:, t + 1]``, the last position
    ignored."""
    pad = torch.full_like(labels[:, :1], IGNORE_INDEX)
    return torch.cat([labels[:, 1:], pad], dim=1)


def first_token_weighted_loss(logits: Tensor, labels: Tensor, alpha: float | None = 0.1) -> Tensor:
    """PaCo-Reward's loss of a batch.

    Args:
        logits: ``[B, T, V]`` (any float dtype; computed in float32).
        labels: ``[B, T]`` int, the token ids of the input with ``-100`` on every position not supervised (prompt,
            image tokens, padding); shifted inside, so ``logits[:, t]`` is scored against ``labels[:, t + 1]``.
        alpha: the first supervised token's weight, in [0, 1]; ``None`` = plain token-mean cross-entropy.

    Returns:
        A scalar: ``sum(w * ce) / (number of supervised tokens)`` over the batch.

    Raises:
        ValueError: shapes disagree, ``alpha`` outside [0, 1], or the batch has no supervised token.
    """
    if logits.ndim != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(f"logits must be [B, T, V] and labels [B, T]; got {tuple(logits.shape)} and "
                         f"{tuple(labels.shape)}")
    if alpha is not None and not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha (first_token_weight) must be in [0, 1], got {alpha}")
    target = shift_labels(labels)
    mask = target != IGNORE_INDEX
    count = int(mask.sum())
    if count == 0:
        raise ValueError("the batch has no supervised token (every label is -100)")
    ce = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), target.reshape(-1),
                                           ignore_index=IGNORE_INDEX, reduction="none").view(target.shape)
    return (ce * first_token_weights(mask, alpha)).sum() / count


def first_token_metrics(logits: Tensor, labels: Tensor, yes_id: int, no_id: int) -> dict[str, Tensor]:
    """Per row ``[B]``, read at the position predicting each row's first supervised token: ``correct`` (the argmax
    over the whole vocabulary is the labelled first token, LLaMA-Factory's ``first_token_accuracy``),
    ``yes_no_correct`` (P(Yes) > P(No) exactly when the label is Yes: what the judge's score decides), ``p_yes``
    (``sigmoid(logit_Yes - logit_No)``, the judge's score) and ``is_yes``. Raises ValueError for a row with no
    supervised token."""
    target = shift_labels(labels)
    mask = target != IGNORE_INDEX
    if not bool(mask.any(dim=1).all()):
        raise ValueError("a row has no supervised token")
    pos = mask.long().argmax(dim=1)  # first True per row
    rows = torch.arange(labels.shape[0], device=labels.device)
    first, label = logits[rows, pos].float(), target[rows, pos]
    p_yes = torch.sigmoid(first[:, yes_id] - first[:, no_id])
    is_yes = label == yes_id
    return {"correct": (first.argmax(dim=-1) == label).float(),
            "yes_no_correct": ((p_yes > 0.5) == is_yes).float(),
            "p_yes": p_yes, "is_yes": is_yes.float()}


__all__ = ["IGNORE_INDEX", "first_token_metrics", "first_token_weighted_loss", "first_token_weights",
           "shift_labels"]
