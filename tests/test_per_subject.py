"""Per-subject credit (``advantage.per_subject``, psrl's extension): the z-score-then-combine rule against
scipy.stats.zscore, the mean / min / weakest combinations, NaN handling, the rescaling into the reward's units, the
padding across batches and processes, and the trainer's wiring on tiny FLUX (advantages recomputed from the dumped
rewards and the per-subject scores the reward returned)."""
import json

import numpy as np
import pytest
import torch
from scipy.stats import zscore

from psrl.config import ConfigError
from psrl.rewards.base import RewardOutput
from psrl.rl.advantages import (apply_per_subject, compute_advantages, join_per_subject, per_subject_matrix,
                                per_subject_scores, stack_per_subject)
from psrl.rl.grpo_config import AdvantageConfig
from psrl.rl.run_config import load_run_config

# one group of four samples, two subjects: sample 0 nails subject 0 and loses subject 1, sample 1 the reverse
PS = torch.tensor([[0.9, 0.1], [0.1, 0.9], [0.5, 0.5], [0.5, 0.6]])
GID = torch.tensor([0, 0, 0, 0])


@pytest.mark.unit
def test_per_subject_scores_match_scipy_zscore_and_combine():
    z = np.stack([zscore(PS[:, j].numpy().astype(np.float64)) for j in range(2)], axis=1)  # ddof=0, as the group
    mean = per_subject_scores(PS, GID, "mean", eps=0.0)
    assert mean.tolist() == pytest.approx(z.mean(axis=1).tolist(), abs=1e-5)
    assert per_subject_scores(PS, GID, "min", eps=0.0).tolist() == pytest.approx(z.min(axis=1).tolist(), abs=1e-5)
    weakest = per_subject_scores(PS, GID, "weakest", eps=0.0, weakest_weight=3.0)
    low = PS.argmin(dim=1).numpy()
    w = np.ones_like(z)
    w[np.arange(4), low] = 3.0
    assert weakest.tolist() == pytest.approx(((z * w).sum(1) / w.sum(1)).tolist(), abs=1e-5)
    # min credits the balanced samples over the one-subject ones
    m = per_subject_scores(PS, GID, "min", eps=0.0)
    assert m[3] > m[2] > max(m[0], m[1])
    with pytest.raises(ValueError, match="combine"):
        per_subject_scores(PS, GID, "max")


@pytest.mark.unit
def test_nan_subjects_and_samples():
    ps = torch.tensor([[0.2, float("nan")], [0.4, float("nan")], [float("nan"), float("nan")], [0.6, 0.3],
                       [0.8, 0.5]])
    gid = torch.tensor([0, 0, 0, 1, 1])
    out = per_subject_scores(ps, gid, "mean", eps=0.0)
    # group 0 has one subject: its z-scores over the two scored samples; the unscored sample stays NaN
    assert out[:2].tolist() == pytest.approx([-1.0, 1.0], abs=1e-5) and torch.isnan(out[2])
    assert out[3:].tolist() == pytest.approx([-1.0, 1.0], abs=1e-5)


@pytest.mark.unit
def test_apply_per_subject_keeps_the_reward_units_and_off_is_identity():
    rewards = torch.tensor([[0.5, 1.0], [0.5, 2.0], [0.5, 3.0], [0.55, 4.0]])  # column 0: the subject mean
    cfg = AdvantageConfig(per_subject="min", eps=0.0)
    out = apply_per_subject(rewards, {0: PS}, GID, cfg)
    col = rewards[:, 0]
    expected = col.mean() + col.std(unbiased=False) * per_subject_scores(PS, GID, "min", eps=0.0)
    assert out[:, 0].tolist() == pytest.approx(expected.tolist(), abs=1e-6)
    assert torch.equal(out[:, 1], rewards[:, 1])  # other rewards untouched
    assert apply_per_subject(rewards, {0: PS}, GID, AdvantageConfig()) is rewards
    # the advantages now tell the one-subject samples (0, 1) from the balanced one (2), where the mean did not
    raw = compute_advantages(rewards[:, :1], torch.ones(1), GID, cfg, (0,), 1).advantages[:, 0]
    per = compute_advantages(out[:, :1], torch.ones(1), GID, cfg, (0,), 1).advantages[:, 0]
    assert raw[0] == raw[1] == raw[2] and per[2] > per[0] and per[2] > per[1]


@pytest.mark.unit
def test_matrices_pad_across_batches_and_processes():
    assert torch.isnan(per_subject_matrix([[0.1], []], 2, 2)).tolist() == [[False, True], [True, True]]
    with pytest.raises(ValueError, match="3 entries for 2"):
        per_subject_matrix([[1.0]] * 3, 2, 1)
    stacked = stack_per_subject([[None, [[0.1, 0.2]]], [None, [[0.3]]]], [1, 1])
    assert list(stacked) == [1] and stacked[1].shape == (2, 2) and torch.isnan(stacked[1][1, 1])
    joined = join_per_subject([(2, stacked), (3, {}), (1, {1: torch.tensor([[0.5, 0.6, 0.7]])})])
    assert joined[1].shape == (6, 3) and torch.isnan(joined[1][2:5]).all() and joined[1][5, 2] == pytest.approx(0.7)


@pytest.mark.unit
def test_config():
    assert load_run_config(None, ["advantage.per_subject=weakest"]).advantage.per_subject == "weakest"
    with pytest.raises(ConfigError, match="advantage.per_subject"):
        load_run_config(None, ["advantage.per_subject=max"])
    assert load_run_config(None, ["advantage.per_subject=off"]).advantage.per_subject == "off"  # YAML's false
    with pytest.raises(ConfigError, match="true names no combination"):
        load_run_config(None, ["advantage.per_subject=true"])
    with pytest.raises(ConfigError, match="per_subject_weakest_weight"):
        load_run_config(None, ["advantage.per_subject_weakest_weight=0.5"])


CALLS: list = []


def halves(images, records):
    """Two "subjects": the left half's mean red and the right half's mean blue; the score is their mean, as
    subject_consistency's; every call's per-subject scores are kept in CALLS for the test to recompute from."""
    x = images.float()
    w = x.shape[-1] // 2
    per = torch.stack([x[:, 0, :, :w].mean(dim=(1, 2)), x[:, 2, :, w:].mean(dim=(1, 2))], dim=1)
    CALLS.append(per.clone())
    return RewardOutput(scores=per.mean(dim=1), details={"per_subject": per.tolist()})


@pytest.mark.component
@pytest.mark.parametrize("combine", ["off", "min"])
def test_trainer_uses_the_per_subject_credit(tmp_path, combine):
    from psrl.rl.grpo_trainer import GRPOTrainer

    CALLS.clear()
    cfg = load_run_config(None, [
        f"run.output_dir={tmp_path}", "run.name=ps", "train.groups_per_step=2", "train.group_size=4",
        "train.sample_batch_size=4", "train.train_batch_size=4", "sampling.num_steps=3", "eval.every=0",
        "train.max_steps=1", "run.dump_rank_data=true", f"advantage.per_subject={combine}",
        "rewards=[{name: 'test_per_subject:halves', weight: 1.0}]"])
    GRPOTrainer(cfg).train()
    dump = json.loads((tmp_path / "ps" / "rank_data" / "rank-0-step-0.json").read_text())
    rewards, gid = torch.tensor(dump["rewards"]), torch.tensor(dump["group_ids"])
    per = torch.cat(CALLS)  # two rollout batches of four, in order
    assert torch.allclose(per.mean(dim=1), rewards[:, 0], atol=1e-6)
    adv_in = apply_per_subject(rewards, {0: per}, gid, cfg.advantage)
    expected = compute_advantages(adv_in, torch.ones(1), gid, cfg.advantage, (0,), 3).advantages[:, 0]
    got = torch.tensor(dump["advantages"])[:, 0]
    assert torch.allclose(got, expected, atol=1e-5)
    raw = compute_advantages(rewards, torch.ones(1), gid, cfg.advantage, (0,), 3).advantages[:, 0]
    assert torch.allclose(got, raw, atol=1e-5) == (combine == "off")
