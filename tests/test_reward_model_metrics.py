"""Pure math of the reward-model subsystem: PaCo's weighted first-token loss against hand computations and the
released formula, and the ranking / pairwise metrics against scipy and hand-counted values."""
import math

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.unit


# ---------------------------------------------------------------------------------------------- loss
def _batch():
    """3 sequences of different lengths, right padded: 3, 2 and 1 supervised tokens (labels are shifted inside)."""
    torch.manual_seed(0)
    logits = torch.randn(3, 6, 5)
    labels = torch.tensor([[-100, -100, 3, 1, 2, -100],
                           [-100, 4, 0, -100, -100, -100],
                           [-100, -100, -100, -100, 2, -100]])
    return logits, labels


def _hand_loss(logits, labels, alpha):
    """Per row: the positions t whose next label is supervised, cross-entropy by hand, weight alpha for the first
    and n(1-alpha)/(n-1) for the others; sum over the batch / number of supervised tokens."""
    total, count = 0.0, 0
    for b in range(labels.shape[0]):
        targets = [(t, int(labels[b, t + 1])) for t in range(labels.shape[1] - 1) if labels[b, t + 1] != -100]
        n = len(targets)
        for k, (t, y) in enumerate(targets):
            row = logits[b, t].tolist()
            ce = math.log(sum(math.exp(v) for v in row)) - row[y]
            if alpha is None:
                w = 1.0
            else:
                w = alpha if k == 0 else n * (1 - alpha) / (n - 1)
            total += w * ce
            count += 1
    return total / count


@pytest.mark.parametrize("alpha", [0.1, 0.5, 1.0, 0.0, None])
def test_weighted_loss_equals_hand_computation(alpha):
    from psrl.reward_model.loss import first_token_weighted_loss

    logits, labels = _batch()
    got = float(first_token_weighted_loss(logits, labels, alpha))
    assert got == pytest.approx(_hand_loss(logits, labels, alpha), rel=1e-6)


def test_weighted_loss_equals_the_released_expression():
    """The released compute_loss (X-GenGroup/PaCo-RL@08caac6 .../train/sft/trainer.py), written out in torch, on
    replies of 2 or more tokens (every reply psrl encodes ends with the end-of-turn tokens). For a 1-token reply
    the released float32 expression cancels catastrophically: w_other = 0.9 / 1e-8 and w_other + (alpha - w_other)
    is 0, not alpha."""
    from psrl.reward_model.loss import first_token_weighted_loss

    logits, labels = _batch()
    logits, labels = logits[:2], labels[:2]
    for alpha in (0.1, 0.3):
        shift_logits, shift_labels = logits[..., :-1, :], labels[..., 1:]
        loss = torch.nn.functional.cross_entropy(shift_logits.reshape(-1, 5), shift_labels.reshape(-1),
                                                 reduction="none").view(shift_labels.shape)
        mask = (shift_labels != -100).float()
        first = (mask.cumsum(dim=1) == 1) & (mask == 1)
        n = mask.sum(dim=1, keepdim=True)
        w_other = n * (1.0 - alpha) / torch.clamp(n - 1, min=1e-8)
        weights = torch.ones_like(mask) * w_other + first.float() * (alpha - w_other)
        released = (loss * weights * mask).sum() / mask.sum()
        assert float(first_token_weighted_loss(logits, labels, alpha)) == pytest.approx(float(released), rel=1e-6)
    one = torch.tensor([[1.0]])
    w_other = one * 0.9 / torch.clamp(one - 1, min=1e-8)
    assert float(w_other + (0.1 - w_other)) == 0.0   # the released weight of a lone first token


def test_plain_loss_is_transformers_token_mean_cross_entropy():
    from psrl.reward_model.loss import first_token_weighted_loss

    logits, labels = _batch()
    ref = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 5), labels[:, 1:].reshape(-1),
                                            ignore_index=-100)
    assert float(first_token_weighted_loss(logits, labels, None)) == pytest.approx(float(ref), rel=1e-6)


def test_first_token_weights_and_errors():
    from psrl.reward_model.loss import first_token_weighted_loss, first_token_weights

    mask = torch.tensor([[0, 1, 1, 1, 1, 0], [0, 0, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    w = first_token_weights(mask, 0.1)
    assert torch.allclose(w[0], torch.tensor([0, 0.1, 1.2, 1.2, 1.2, 0]))  # n=4: 4 * 0.9 / 3
    assert torch.allclose(w[1], torch.tensor([0, 0, 0.1, 0, 0, 0]))        # a single token gets alpha
    assert w[2].sum() == 0
    assert float(w[0].sum()) == pytest.approx(0.1 + 4 * 0.9)               # alpha + n (1 - alpha)
    logits, labels = _batch()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        first_token_weighted_loss(logits, labels, 1.5)
    with pytest.raises(ValueError, match="no supervised token"):
        first_token_weighted_loss(logits, torch.full_like(labels, -100), 0.1)


def test_first_token_metrics_read_the_answer_position():
    from psrl.reward_model.loss import first_token_metrics

    logits = torch.zeros(2, 4, 6)
    labels = torch.tensor([[-100, -100, 4, 1], [-100, 5, 2, -100]])  # first answers: 4 (Yes) and 5 (No)
    logits[0, 1, 4], logits[0, 1, 5] = 3.0, 1.0    # predicts Yes: right, P(Yes) = sigmoid(2)
    logits[1, 0, 4], logits[1, 0, 5] = 1.0, 0.5    # predicts Yes: wrong
    got = first_token_metrics(logits, labels, yes_id=4, no_id=5)
    assert got["correct"].tolist() == [1.0, 0.0] and got["yes_no_correct"].tolist() == [1.0, 0.0]
    assert got["p_yes"][0].item() == pytest.approx(1 / (1 + math.exp(-2.0)))
    assert got["is_yes"].tolist() == [1.0, 0.0]


# ---------------------------------------------------------------------------------------------- ranking
def test_ranking_metrics_hand_computed():
    from psrl.rewards.rank_metrics import ranking_metrics

    scores = np.array([[0.9, 0.1, 0.5, 0.3],    # order 0,2,3,1 = human: all right
                       [0.1, 0.2, 0.3, 0.4],    # reversed: all wrong
                       [0.4, 0.3, 0.1, 0.2]])   # last two swapped
    human = np.array([[0, 3, 1, 2], [0, 1, 2, 3], [0, 1, 2, 3]])
    m = ranking_metrics(scores, human)
    # accuracy 1, 0, 1/2; tau 1, -1, (5-1)/6; rho 1, -1, 1 - 6*2/60; T1-B1 1, 0, (1+0)/2
    assert m["accuracy"] == pytest.approx((1 + 0 + 0.5) / 3)
    assert m["kendall_tau"] == pytest.approx((1 - 1 + 4 / 6) / 3)
    assert m["spearman_rho"] == pytest.approx((1 - 1 + 0.8) / 3)
    assert m["t1b1"] == pytest.approx((1 + 0 + 0.5) / 3)
    assert (m["top1"], m["bottom1"]) == (pytest.approx(2 / 3), pytest.approx(1 / 3))
    assert (m["n_items"], m["n_unscorable"]) == (3, 0)


@pytest.mark.parametrize("convention", ["ranks", "paco"])
def test_ranking_metrics_equal_scipy(convention):
    from scipy.stats import kendalltau, spearmanr

    from psrl.rewards.rank_metrics import per_item_ranking_metrics, ranking_metrics

    rng = np.random.default_rng(0)
    scores = rng.random((50, 4))
    human = np.stack([rng.permutation(4) for _ in range(50)])
    per = per_item_ranking_metrics(scores, human, convention=convention)
    taus, rhos, accs, t1b1 = [], [], [], []
    for s, h in zip(scores, human):
        pred_order = np.argsort(s)[::-1]                 # the released eval.py
        human_order = np.argsort(h)
        pred_rank = np.argsort(pred_order)
        a, b = (pred_rank, h) if convention == "ranks" else (pred_order, human_order)
        taus.append(kendalltau(a, b)[0])
        rhos.append(spearmanr(a, b)[0])
        accs.append(np.mean(pred_rank == h))
        t1b1.append((int(pred_order[0] == human_order[0]) + int(pred_order[-1] == human_order[-1])) / 2)
    assert np.allclose(per["kendall_tau"], taus) and np.allclose(per["spearman_rho"], rhos)
    assert np.allclose(per["accuracy"], accs) and np.allclose(per["t1b1"], t1b1)
    m = ranking_metrics(scores, human, convention=convention)
    assert m["kendall_tau"] == pytest.approx(np.mean(taus)) and m["spearman_rho"] == pytest.approx(np.mean(rhos))


def test_conventions_differ_and_ties_follow_the_released_rule():
    from psrl.rewards.rank_metrics import per_item_ranking_metrics, predicted_order

    scores, human = np.array([[0.4, 0.1, 0.3, 0.2]]), np.array([[1, 2, 3, 0]])
    a = per_item_ranking_metrics(scores, human, convention="ranks")["kendall_tau"][0]
    b = per_item_ranking_metrics(scores, human, convention="paco")["kendall_tau"][0]
    assert a != pytest.approx(b)
    assert predicted_order([[0.5, 0.5, 0.1]]).tolist() == [[1, 0, 2]]   # np.argsort(scores)[::-1]


def test_unscorable_items_are_left_out_and_counted():
    from psrl.rewards.rank_metrics import ranking_metrics

    m = ranking_metrics([[0.9, 0.1], [float("nan"), 0.5]], [[0, 1], [1, 0]])
    assert m["accuracy"] == 1.0 and (m["n_items"], m["n_unscorable"]) == (2, 1)
    none = ranking_metrics([[float("nan"), 0.5]], [[1, 0]])
    assert math.isnan(none["kendall_tau"]) and none["n_unscorable"] == 1


@pytest.mark.parametrize("human, why", [([[0, 0, 1]], "not a permutation"), ([[0, 1, 3]], "not a permutation")])
def test_bad_rankings_are_refused(human, why):
    from psrl.rewards.rank_metrics import ranking_metrics

    with pytest.raises(ValueError, match=why):
        ranking_metrics([[0.1, 0.2, 0.3]], human)
    with pytest.raises(ValueError, match="convention"):
        ranking_metrics([[0.1, 0.2]], [[0, 1]], convention="other")


def test_pairwise_accuracy_strict_geq_groups_and_nan():
    from psrl.rewards.rank_metrics import pairwise_accuracy

    chosen = [0.9, 0.5, 0.2, 0.7, float("nan")]
    rejected = [0.1, 0.5, 0.3, 0.1, 0.2]
    assert pairwise_accuracy(chosen, rejected)["accuracy"] == pytest.approx(2 / 4)
    assert pairwise_accuracy(chosen, rejected, ties="geq")["accuracy"] == pytest.approx(3 / 4)
    g = pairwise_accuracy(chosen, rejected, ["a", "a", "a", "b", "b"])
    assert g["group/a"] == pytest.approx(1 / 3) and g["group/b"] == 1.0
    assert g["accuracy"] == pytest.approx((1 / 3 + 1) / 2) and g["n_unscorable"] == 1   # macro over groups
