"""The reward-hacking monitor's pure parts: each alarm on hand-made metric histories, the cool-down, the config
checks, and the eval metrics (held-out keys, subject rates, statistics, diversity)."""
import json
import logging
import math

import pytest
import torch

from psrl.config import ConfigError
from psrl.data.records import Record, SubjectRef
from psrl.rewards.base import RewardOutput
from psrl.rl.eval_metrics import eval_metrics, pixel_embeddings, reward_metrics
from psrl.rl.monitor import (ALARMS, MonitorConfig, TrainingMonitor, alarm_lines, alarm_metrics, heldout_score,
                             trained_eval_rewards)
from psrl.rl.run_config import load_run_config


def _eval(step, trained=None, heldout=None, **stats):
    row = {"step": step}
    row.update({f"eval/{k}/mean": v for k, v in (trained or {}).items()})
    row.update({f"eval/heldout/{k}": v for k, v in (heldout or {}).items()})
    row.update({f"eval/stats/{k}": v for k, v in stats.items()})
    return row


@pytest.mark.unit
def test_reward_hacking_fires_when_trained_rises_and_heldout_falls():
    cfg = MonitorConfig(window=2, hack_drop=0.05)
    fn = ALARMS.get("reward_hacking")
    evals = [_eval(0, {"dark": 0.1}, {"color": 0.8}), _eval(5, {"dark": 0.2}, {"color": 0.78}),
             _eval(10, {"dark": 0.3}, {"color": 0.7})]
    (alarm,) = fn([], evals, cfg)
    assert alarm.name == "reward_hacking" and alarm.step == 10 and alarm.value == pytest.approx(0.1)
    assert "dark rose +0.2000" in alarm.message and "color fell -0.1000" in alarm.message
    assert "steps 0 and 10" in alarm.message
    # held-out fall within the threshold, the trained reward flat, or too few evaluations: silent
    assert fn([], [evals[0], evals[1], _eval(10, {"dark": 0.3}, {"color": 0.76})], cfg) == []
    assert fn([], [evals[0], evals[1], _eval(10, {"dark": 0.1}, {"color": 0.5})], cfg) == []
    assert fn([], evals[:2], cfg) == []
    # NaN held-out (nothing scorable) is not a fall
    assert fn([], [evals[0], evals[1], _eval(10, {"dark": 0.3}, {"color": math.nan})], cfg) == []


@pytest.mark.unit
def test_diversity_collapse_and_stat_drift():
    cfg = MonitorConfig(diversity_fraction=0.5, stat_drift={"dark_fraction": 0.2, "color_entropy": 1.0})
    div = ALARMS.get("diversity_collapse")
    assert div([], [_eval(0, diversity=0.8), _eval(4, diversity=0.5)], cfg) == []
    (a,) = div([], [_eval(0, diversity=0.8), _eval(4, diversity=0.5), _eval(8, diversity=0.2)], cfg)
    assert a.value == pytest.approx(0.25) and "25% of its value 0.8000" in a.message and a.step == 8
    drift = ALARMS.get("image_stat_drift")
    assert drift([], [_eval(0, dark_fraction=0.1), _eval(4, dark_fraction=0.25)], cfg) == []
    (a,) = drift([], [_eval(0, dark_fraction=0.1, color_entropy=6.0),
                      _eval(4, dark_fraction=0.35, color_entropy=4.0)], cfg)
    # the statistic furthest beyond its own threshold is named: entropy -2.0 bits (2x) over dark +0.25 (1.25x)
    assert "color_entropy moved -2.0000" in a.message and a.value == pytest.approx(-2.0)


@pytest.mark.unit
def test_kl_and_clipfrac_runaway_use_the_window_mean():
    cfg = MonitorConfig(window=2, max_kl=0.1, max_clipfrac=0.5)
    kl, clip = ALARMS.get("kl_runaway"), ALARMS.get("clipfrac_runaway")
    steps = [{"step": 1, "approx_kl": 0.01, "clipfrac": 0.9}, {"step": 2, "approx_kl": 0.3, "clipfrac": 0.2}]
    assert kl(steps, [], cfg) and kl(steps, [], cfg)[0].value == pytest.approx(0.155)
    assert clip(steps, [], cfg)[0].value == pytest.approx(0.55)
    assert kl(steps, [], MonitorConfig(max_kl=0.0)) == []  # 0 disables
    assert kl(steps[:1], [], cfg) == []  # fewer steps than the window


@pytest.mark.unit
def test_monitor_cools_down_and_writes_alarms(tmp_path):
    cfg = MonitorConfig(window=2, max_clipfrac=0.5)
    mon = TrainingMonitor(cfg, log_path=tmp_path / "alarms.jsonl")
    fired = [mon.observe(s, {"clipfrac": 0.9}) for s in range(1, 7)]
    # window 2 steps to fill, then fires, then silent for the 2-step cool-down
    assert [len(f) for f in fired] == [0, 1, 0, 1, 0, 1]
    lines = [json.loads(x) for x in (tmp_path / "alarms.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [2, 4, 6] and {x["name"] for x in lines} == {"clipfrac_runaway"}
    assert alarm_metrics(fired[1]) == {"monitor/alarm/clipfrac_runaway": pytest.approx(0.9)}
    assert alarm_lines(mon.alarms, cfg)[0].startswith("ALARM step    2  clipfrac_runaway")
    assert alarm_lines([], cfg) == ["monitor: no alarm"]
    assert TrainingMonitor(MonitorConfig(enabled=False)).observe(1, {"clipfrac": 1.0}) == []


@pytest.mark.unit
def test_resume_replays_the_logged_history_silently(tmp_path):
    cfg = MonitorConfig(window=2, max_clipfrac=0.5)
    first = TrainingMonitor(cfg, log_path=tmp_path / "alarms.jsonl")
    rows = [{"step": s, "clipfrac": 0.9} for s in range(1, 6)]
    for r in rows:
        first.observe(r["step"], r)
    assert [a.step for a in first.alarms] == [2, 4]
    # resumed from the checkpoint of step 3: the step-4 alarm belonged to the abandoned future
    again = TrainingMonitor(cfg, log_path=tmp_path / "alarms.jsonl")
    again.resume(rows, 3)
    assert [a.step for a in again.alarms] == [2] and [r["step"] for r in again.steps] == [2, 3]  # the window
    assert [json.loads(x)["step"] for x in (tmp_path / "alarms.jsonl").read_text().splitlines()] == [2]
    assert again.observe(4, {"clipfrac": 0.9})[0].step == 4  # the cool-down continued: it fires as before
    assert [json.loads(x)["step"] for x in (tmp_path / "alarms.jsonl").read_text().splitlines()] == [2, 4]


@pytest.mark.unit
def test_monitor_state_round_trips_through_json_and_continues_identically(tmp_path):
    cfg = MonitorConfig(window=2, max_clipfrac=0.5, action="rollback")
    p = torch.nn.Parameter(torch.zeros(2))
    rows = [{"clipfrac": 0.9 if s % 3 else 0.1} for s in range(1, 9)]
    for s, r in enumerate(rows, 1):  # evaluations at odd steps: the held-out reward peaks at step 3
        if s % 2:
            r.update(_eval(s, {"r": 0.1 * s}, {"h": 0.5 - abs(s - 3) * 0.1}, saturation=0.2))
            del r["step"]
    first = TrainingMonitor(cfg, [p])
    for s, r in enumerate(rows[:5], 1):
        with torch.no_grad():
            p.fill_(float(s))
        first.observe(s, r)
    state = json.loads(json.dumps(first.state_dict(), allow_nan=False))
    best = first.best_weights().state_dict()
    torch.save(best, tmp_path / "monitor_best.pt")
    again = TrainingMonitor(cfg, [p])
    again.load_state_dict(state)
    again.best_weights().load_state_dict(torch.load(tmp_path / "monitor_best.pt", weights_only=True))
    assert again.best[0] == 3 and torch.equal(again.best[2][0], torch.full((2,), 3.0))
    assert len(state["steps"]) == 2 and state["num_steps"] == 5  # only the window is kept
    assert [a.to_dict() for a in again.alarms] == [a.to_dict() for a in first.alarms] and first.alarms
    for s, r in enumerate(rows[5:], 6):  # the two continue alike: same alarms at the same steps
        assert [a.to_dict() for a in first.observe(s, r)] == [a.to_dict() for a in again.observe(s, r)]
    assert again.state_dict() == first.state_dict()
    assert TrainingMonitor(cfg).best_weights().state_dict() == {}  # no evaluation yet: an empty module


@pytest.mark.unit
def test_rollback_keeps_the_best_heldout_weights():
    p = torch.nn.Parameter(torch.zeros(2))
    mon = TrainingMonitor(MonitorConfig(action="rollback"), [p])
    for step, value, score in [(0, 0.0, 0.5), (2, 1.0, 0.7), (4, 2.0, 0.6)]:
        with torch.no_grad():
            p.fill_(value)
        mon.observe(step, _eval(step, {"r": 0.1}, {"a": score, "b": score}))
    assert mon.best[0] == 2 and mon.best[1] == pytest.approx(0.7) and torch.equal(mon.best[2][0], torch.ones(2))
    # with an EMA the evaluation scored the shadow weights: those are what rollback keeps
    shadow = [torch.full((2,), 7.0)]
    ema_mon = TrainingMonitor(MonitorConfig(action="rollback"), [p], evaluated=lambda: shadow)
    ema_mon.observe(0, _eval(0, {"r": 0.1}, {"a": 0.5}))
    assert torch.equal(ema_mon.best[2][0], shadow[0]) and ema_mon.best[2][0] is not shadow[0]
    assert heldout_score(_eval(0, heldout={"a": 0.2, "b": 0.4})) == pytest.approx(0.3)
    assert math.isnan(heldout_score(_eval(0)))
    # trained keys do not include held-out or statistics keys
    assert trained_eval_rewards(_eval(0, {"r": 0.1}, {"a": 0.2}, saturation=0.3)) == {"r": 0.1}


@pytest.mark.unit
def test_config_errors_name_the_key(caplog):
    with pytest.raises(ConfigError, match="monitor.actions: unknown alarm"):
        load_run_config(None, ["monitor.actions={hacking: stop}"])
    with pytest.raises(ConfigError, match="monitor.action"):
        load_run_config(None, ["monitor.action=explode"])
    with pytest.raises(ConfigError, match="rollback .* needs eval.rewards"):
        load_run_config(None, ["monitor.action=rollback"])
    with pytest.raises(ConfigError, match="trained rewards too"):
        load_run_config(None, ["eval.rewards=[{name: mean_color}]"])
    with caplog.at_level(logging.WARNING):  # turning evaluation off keeps working; it says what is not scored
        load_run_config(None, ["eval.every=0", "eval.rewards=[{name: clip_t}]"])
    assert "are not scored: eval.every is 0" in caplog.text
    with pytest.raises(ConfigError, match="monitor.stat_drift: unknown statistic"):
        load_run_config(None, ["monitor.stat_drift={darkness: 0.1}"])
    with pytest.raises(ConfigError, match="eval.group_size"):
        load_run_config(None, ["eval.group_size=0"])
    cfg = load_run_config(None, ["monitor.actions={kl_runaway: raise_beta}", "monitor.max_kl=0.2"])
    assert cfg.monitor.action_for("kl_runaway") == "raise_beta" and cfg.monitor.action_for("x") == "warn"


class _SubjectReward:
    name = "subjects"

    def __call__(self, images, records):
        return RewardOutput(scores=torch.tensor([0.5, float("nan"), 0.7]),
                            details={"missing_subjects": [["dog"], ["cat", "dog"], []],
                                     "confused_subjects": [[], [], ["cat"]]},
                            failures=[None, "subject(s) not detected", None])


@pytest.mark.unit
def test_reward_metrics_report_means_failures_and_subject_rates():
    recs = [Record(id=str(i), prompt="p", subjects=(SubjectRef("a.png", "cat"), SubjectRef("b.png", "dog")))
            for i in range(3)]
    m = reward_metrics(_SubjectReward(), torch.rand(3, 3, 8, 8), recs, "eval/heldout/", "")
    assert m["eval/heldout/subjects"] == pytest.approx(0.6)
    assert m["eval/heldout/subjects/failure_rate"] == pytest.approx(1 / 3)
    # 3 of 6 subjects missing (the NaN sample counts: it is NaN because of them); 1 of 6 confused
    assert m["eval/heldout/subjects/missing_subject_rate"] == pytest.approx(0.5)
    assert m["eval/heldout/subjects/identity_confusion_rate"] == pytest.approx(1 / 6)

    class Broken:
        name = "broken"

        def __call__(self, images, records):
            raise RuntimeError("model gone")

    m = reward_metrics(Broken(), torch.rand(3, 3, 8, 8), recs, "eval/", "/mean")
    assert math.isnan(m["eval/broken/mean"]) and m["eval/broken/failure_rate"] == 1.0


@pytest.mark.unit
def test_eval_metrics_statistics_and_diversity():
    flat = torch.full((1, 3, 8, 8), 0.5)
    noisy = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    # group 0: two identical images (diversity 0); group 1: two different ones
    images = torch.cat([noisy, noisy, noisy, flat + 0.2 * (noisy - 0.5)])
    recs = [Record(id="a", prompt="p")] * 4
    m = eval_metrics(images, recs, [0, 0, 1, 1], embed=pixel_embeddings)
    assert set(k for k in m if k.startswith("eval/stats/")) == {
        "eval/stats/color_entropy", "eval/stats/saturation", "eval/stats/dark_fraction",
        "eval/stats/bright_fraction", "eval/stats/edge_density", "eval/stats/diversity"}
    from psrl.rl.image_stats import within_group_diversity

    _, div = within_group_diversity(pixel_embeddings(images), [0, 0, 1, 1])
    assert div[0] == pytest.approx(0.0, abs=1e-6) and m["eval/stats/diversity"] == pytest.approx(float(div.mean()))
    # one image per group: no diversity key (no pair to compare), statistics still there
    m1 = eval_metrics(images, recs, [0, 1, 2, 3], embed=pixel_embeddings)
    assert "eval/stats/diversity" not in m1 and "eval/stats/saturation" in m1
    assert eval_metrics(images, recs, [0, 0, 1, 1], statistics=False) == {}


@pytest.mark.component
def test_diversity_on_a_model_embedder():
    """``eval.embedder: {kind: dinov2, path: tiny}``: the DINOv2 pipeline on random weights gives one embedding per
    image; identical images have diversity 0, different ones more."""
    from psrl.rl.eval_metrics import build_eval_embedder

    embed = build_eval_embedder({"kind": "dinov2", "path": "tiny"})
    a = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    b = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    images = torch.cat([a, a, a, b])
    e = embed(images)
    assert e.ndim == 2 and e.shape[0] == 4
    m = eval_metrics(images, [Record(id="x", prompt="p")] * 4, [0, 0, 1, 1], embed=embed)
    from psrl.rl.image_stats import within_group_diversity

    _, div = within_group_diversity(e, [0, 0, 1, 1])
    assert div[0] == pytest.approx(0.0, abs=1e-6) and div[1] > 0
    assert m["eval/stats/diversity"] == pytest.approx(float(div.mean()), abs=1e-6)
