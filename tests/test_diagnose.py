"""``psrl diagnose``: the statistics against closed forms and their exact null, and the command on the tiny model: the
colour reward has gradient signal, a reward of random numbers is noise, nothing is left behind."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from psrl.rl.diagnose import Diagnosis, LogProbCheck, Phase, format_report, verdict
from psrl.rl.diagnose_stats import (
    SIGNAL_ALPHA,
    RewardSpread,
    SignalTest,
    images_for_cosine,
    mean_pairwise_cosine,
    median,
    reward_spread,
    shuffle_within_groups,
    swap_test,
)

TESTS = Path(__file__).resolve().parent
# the tiny FLUX of model.tiny_seed 0 (the embedded default) barely lets its LoRA move the image colour: its per-step
# gradient cosine is ~0.05, which takes ~30 batches to tell from noise. Seeds 1-3 give 0.16-0.26; 1 is used here.
TINY = ["--set", "model.tiny_seed=1"]

_NOISE = torch.Generator().manual_seed(1234)


def random_reward(images, records):
    """A reward that returns random numbers: no image is better than another."""
    return torch.rand(len(records), generator=_NOISE)


def constant_reward(images, records):
    return torch.full((len(records),), 0.5)


def unscorable_reward(images, records):
    return torch.full((len(records),), float("nan"))


# ------------------------------------------------------------------------------------------------------- pure math
@pytest.mark.unit
def test_shuffle_within_groups_moves_samples_only_inside_their_group():
    ids = torch.tensor([3, 3, 3, 0, 0, 7, -1, 3])
    perm = shuffle_within_groups(ids, torch.Generator().manual_seed(0))
    assert sorted(perm.tolist()) == list(range(8))
    assert torch.equal(ids[perm], ids)
    assert perm[6] == 6 and perm[5] == 5  # single-member groups stay
    again = shuffle_within_groups(ids, torch.Generator().manual_seed(0))
    assert torch.equal(perm, again)


@pytest.mark.unit
def test_mean_pairwise_cosine_closed_form():
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    assert float(mean_pairwise_cosine(v)) == pytest.approx((0 + 2 / math.sqrt(2)) / 3)
    v0 = torch.tensor([[1.0, 0.0], [0.0, 0.0], [2.0, 0.0]])  # a zero vector has cosine 0 with everything
    assert float(mean_pairwise_cosine(v0)) == pytest.approx(1 / 3)
    batched = torch.stack([v, v0])
    assert mean_pairwise_cosine(batched).shape == (2,)
    with pytest.raises(ValueError, match="at least 2"):
        mean_pairwise_cosine(v[:1])


@pytest.mark.unit
def test_swap_test_p_value_is_exact():
    k, d = 6, 50
    g = torch.Generator().manual_seed(0)
    real = torch.ones(k, d) + 0.01 * torch.randn(k, d, generator=g)  # one shared direction
    control = torch.randn(k, d, generator=g)
    t = swap_test(real, control)
    # only the all-real pattern reaches the observed statistic: p = 2^-K exactly
    assert t.patterns == 2**k and t.p_value == pytest.approx(2.0**-k) and t.signal == (2.0**-k <= SIGNAL_ALPHA)
    assert t.cosine == pytest.approx(float(mean_pairwise_cosine(real)), abs=1e-9)
    assert t.control_cosine == pytest.approx(float(mean_pairwise_cosine(control)), abs=1e-9)
    # swapping the roles: noise observed against aligned controls is no signal
    swapped = swap_test(control, real)
    assert swapped.p_value > 0.5 and not swapped.signal
    # no gradient at all: nothing to test
    zero = swap_test(torch.zeros(k, d), control)
    assert zero.patterns == 0 and zero.p_value == 1.0 and not zero.signal
    # beyond EXACT_SWAP_BATCHES the patterns are sampled (the observed one plus `samples`)
    big = swap_test(torch.ones(14, d) + 0.01 * torch.randn(14, d, generator=g), torch.randn(14, d, generator=g),
                    samples=511)
    assert big.patterns == 512 and big.p_value == pytest.approx(1 / 512) and big.signal
    with pytest.raises(ValueError, match=r"\[K >= 2, D\]"):
        swap_test(real, control[:-1])


@pytest.mark.unit
def test_swap_test_is_calibrated_under_the_null():
    """Exchangeable real/control pairs (pure noise): P(p <= a) <= a, here within binomial error of a."""
    g = torch.Generator().manual_seed(1)
    trials, k = 400, 7
    ps = torch.tensor([swap_test(torch.randn(k, 5, generator=g), torch.randn(k, 5, generator=g)).p_value
                       for _ in range(trials)])
    for level in (0.05, 0.2, 0.5):
        rate = float((ps <= level).float().mean())
        assert rate <= level + 3 * math.sqrt(level * (1 - level) / trials), (level, rate)
        assert rate >= level - 3 * math.sqrt(level * (1 - level) / trials), (level, rate)


@pytest.mark.unit
def test_images_for_cosine_scales_the_noise_as_one_over_images():
    # c = 0.2 at 16 images: snr 0.25; cosine 0.5 needs snr 1, i.e. 4x the images
    assert images_for_cosine(0.2, 16) == 64
    n = images_for_cosine(0.1, 24)
    snr = 0.1 / 0.9 * n / 24  # the snr at n images
    assert snr / (1 + snr) == pytest.approx(0.5, abs=0.01)
    assert images_for_cosine(0.7, 16) == 16
    assert images_for_cosine(0.0, 16) is None and images_for_cosine(float("nan"), 16) is None


@pytest.mark.unit
def test_reward_spread_closed_form():
    nan = float("nan")
    scores = torch.tensor([0.1, 0.3, 0.5, 0.5, nan, 0.2, nan, nan])
    groups = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    r = reward_spread(scores, groups)
    assert r.groups == 2  # groups 2 and 3 have fewer than two scored samples
    assert r.group_std == pytest.approx((0.1 + 0.0) / 2)
    assert r.zero_std_ratio == pytest.approx(0.5)  # group 1 is 0.5, 0.5
    assert r.unscorable == pytest.approx(3 / 8)
    ok = torch.tensor([0.1, 0.3, 0.5, 0.5, 0.2], dtype=torch.float64)
    assert r.mean == pytest.approx(float(ok.mean())) and r.std == pytest.approx(float(ok.std(unbiased=False)))
    empty = reward_spread(torch.full((4,), nan), torch.tensor([0, 0, 1, 1]))
    assert empty.groups == 0 and math.isnan(empty.mean) and math.isnan(empty.zero_std_ratio) and empty.unscorable == 1
    assert median([3.0, 1.0, 2.0]) == 2.0 and median([4.0, 1.0]) == 2.5 and math.isnan(median([]))


def _diagnosis(signal: SignalTest, *, trained=1.0, zero_std=0.0, logprob=None) -> Diagnosis:
    spread = RewardSpread(0.5, 0.1, 0.1, zero_std, 0.0, 8)
    return Diagnosis(batches=signal.batches, images_per_batch=16, group_size=4, loss="ppo", dtype="float32",
                     mixed_precision="no", device="cpu", rewards={"r": spread}, zero_std_ratio=zero_std,
                     trained_fraction=trained, signal=signal,
                     images_for_target=images_for_cosine(signal.cosine, 16) if signal.signal else None,
                     logprob=logprob or LogProbCheck(True, tolerance=0.005), phases={},
                     seconds_per_step=1.0, max_steps=10, process_peak_rss_bytes=None)


@pytest.mark.unit
def test_verdict_lines():
    strong = _diagnosis(SignalTest(0.3, 0.0, 0.001, 12, 4096, True))
    line, notes = verdict(strong)
    assert "signal" in line and "noise" not in line and "p = 0.001" in line
    assert any("images per step" in n for n in notes)  # 0.3 < 0.5: says how many images would reach 0.5
    weak = _diagnosis(SignalTest(0.02, 0.01, 0.4, 12, 4096, False), zero_std=0.75)
    line, notes = verdict(weak)
    assert "noise" in line and "group_size" in line and "groups_per_step" in line
    assert any("75% of groups" in n for n in notes)
    few = _diagnosis(SignalTest(0.4, 0.0, 0.125, 3, 8, False))  # 3 batches can never reach p <= 0.01
    assert verdict(few)[0].startswith("too few batches to tell signal from noise: with 3 the smallest possible p")
    flat = _diagnosis(SignalTest(0.0, 0.0, 1.0, 12, 0, False), zero_std=1.0)
    assert verdict(flat)[0].startswith("no signal: every group's rewards were equal")
    none = _diagnosis(SignalTest(0.0, 0.0, 1.0, 12, 0, False), trained=0.0)
    assert verdict(none)[0].startswith("no signal: no group had two scorable samples") and not none.measured
    off = _diagnosis(SignalTest(0.3, 0.0, 0.001, 12, 4096, True),
                     logprob=LogProbCheck(True, max_abs_delta=0.02, max_ratio_deviation=0.0202, tolerance=0.005))
    assert any("PPO will clip rounding" in n for n in verdict(off)[1])


@pytest.mark.unit
def test_format_report_lines():
    d = _diagnosis(SignalTest(0.3, 0.01, 0.001, 12, 4096, True))
    d.phases = {"rollout": Phase(2.0, 3 * 2**30), "reward": Phase(0.5, None), "train": Phase(4.0, 5 * 2**30)}
    d.seconds_per_step, d.max_steps = 6.5, 1000
    d.verdict, d.notes = verdict(d)
    text = format_report(d)
    assert "gradient signal: mean cosine 0.300 over 66 pairs of batches (shuffled-advantage control 0.010)" in text
    assert "log-prob recompute: ratio exactly 1 before an update (float32" in text
    assert "= 6.50 s; train.max_steps 1000 ~ 1:48:20" in text  # 6.5 s x 1000
    assert "peak memory: rollout + reward 3.00 GiB, train 5.00 GiB" in text
    assert text.splitlines()[-1] == f"verdict: {d.verdict}"
    d.phases = {k: Phase(v.seconds, None) for k, v in d.phases.items()}
    d.process_peak_rss_bytes = 2**30
    d.logprob = LogProbCheck(False, reason="train.loss=nft uses no log-probs")
    text = format_report(d)
    assert "peak memory: 1.00 GiB process RSS" in text and "not checked (train.loss=nft uses no log-probs)" in text


# ------------------------------------------------------------------------------------------------- on the tiny model
def _psrl(*args, cwd, env_extra=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "psrl", *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=300)


def _verdict_line(stdout: str) -> str:
    lines = [x for x in stdout.splitlines() if x.startswith("verdict:")]
    assert len(lines) == 1, stdout
    return lines[0]


@pytest.mark.e2e
def test_diagnose_cli_colour_reward_has_signal_and_leaves_nothing(tmp_path):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    out = _psrl("diagnose", *TINY, "--set", f"run.output_dir={tmp_path / 'runs'}", "--json", "diag.json",
                cwd=tmp_path, env_extra={"TMPDIR": str(scratch)})
    assert out.returncode == 0, out.stderr[-3000:]
    line = _verdict_line(out.stdout)
    assert "signal" in line and "noise" not in line, out.stdout
    assert "log-prob recompute: ratio exactly 1 before an update (float32" in out.stdout
    assert "time per step:" in out.stdout and "train.max_steps 12" in out.stdout
    d = json.loads((tmp_path / "diag.json").read_text())
    assert d["batches"] == 12 and d["signal"]["signal"] and d["signal"]["p_value"] <= SIGNAL_ALPHA
    assert d["signal"]["cosine"] > d["signal"]["control_cosine"]
    assert d["rewards"]["mean_color"]["zero_std_ratio"] == 0.0 and d["trained_fraction"] == 1.0
    assert d["logprob"]["checked"] and d["logprob"]["max_abs_delta"] == 0.0
    assert d["phases"]["rollout"]["seconds"] > 0 and d["phases"]["train"]["seconds"] > 0
    assert d["seconds_per_step"] > 0
    # no run folder, and the scratch run directory is gone (torch may leave its own caches in TMPDIR)
    assert not (tmp_path / "runs").exists() and not list(scratch.glob("psrl-diagnose-*"))


@pytest.mark.e2e
def test_diagnose_random_reward_is_noise(tmp_path, capsys):
    from psrl.cli.main import main

    code = main(["diagnose", *TINY, "--set", "rewards=[{name: test_diagnose:random_reward}]",
                 "--set", f"run.output_dir={tmp_path / 'runs'}", "--json", str(tmp_path / "d.json")])
    out = capsys.readouterr().out
    assert code == 0, out
    line = _verdict_line(out)
    assert "noise" in line and "raise train.group_size" in line, out
    d = json.loads((tmp_path / "d.json").read_text())
    assert d["signal"]["p_value"] > 0.1 and not d["signal"]["signal"]
    assert not (tmp_path / "runs").exists()


@pytest.mark.component
def test_diagnose_reports_rewards_that_teach_nothing(tmp_path, capsys):
    from psrl.cli.main import main

    base = [*TINY, "--batches", "2", "--set", f"run.output_dir={tmp_path}"]
    assert main(["diagnose", *base, "--set", "rewards=[{name: test_diagnose:constant_reward}]"]) == 0
    out = capsys.readouterr().out
    assert "verdict: no signal: every group's rewards were equal" in out
    assert "100% of groups have equal rewards" in out
    # nothing scorable: nothing measured, exit 1
    name = "test_diagnose:unscorable_reward"
    json_path = str(tmp_path / "nan.json")
    assert main(["diagnose", *base, "--set", f"rewards=[{{name: '{name}'}}]", "--json", json_path]) == 1
    out = capsys.readouterr().out
    assert "verdict: no signal: no group had two scorable samples" in out
    d = json.loads((tmp_path / "nan.json").read_text())  # strict JSON: NaN written as null
    assert d["rewards"][name]["mean"] is None and d["rewards"][name]["unscorable"] == 1
    (tmp_path / "nan.json").unlink()
    assert main(["diagnose", "--batches", "1"]) == 2
    assert "error: --batches must be at least 2" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.component
def test_logprob_check_catches_a_rollout_recomputed_differently():
    from psrl.rl.diagnose import _check_logprobs, _logprob_check_setup, scratch_trainer
    from psrl.rl.run_config import load_run_config

    cfg = load_run_config(None, ["model.tiny_seed=1"])
    with scratch_trainer(cfg) as trainer:
        sampling, steps = trainer._step_sampling(0)
        rollouts, *_ = trainer._rollout_and_score(0, trainer.sampler.assign(0), sampling, steps)
        exact = _logprob_check_setup(cfg)
        _check_logprobs(trainer, rollouts, steps, exact)
        assert exact.exact and exact.ok and exact.tolerance == pytest.approx(0.1 * cfg.train.clip_range)
        # log-probs as a rollout in another precision would have stored them: off by 0.01 > 0.1 x clip_range
        rollouts[0].log_probs[:, steps[0]] += 0.01
        off = _logprob_check_setup(cfg)
        _check_logprobs(trainer, rollouts, steps, off)
        assert off.max_abs_delta == pytest.approx(0.01, rel=1e-3) and not off.ok
        assert off.max_ratio_deviation == pytest.approx(math.expm1(0.01), rel=1e-3)
    nft = load_run_config(None, ["train.loss=nft"])
    assert not _logprob_check_setup(nft).checked and "nft" in _logprob_check_setup(nft).reason
