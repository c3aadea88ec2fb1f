"""The monitor on tiny FLUX: a deliberately hackable reward (darkness) contradicted by a held-out reward (brightness)
raises the reward_hacking alarm, and each action does what it says; a healthy run (blue images, a held-out
blue-share reward that agrees) raises none.

Margins: with lr 0.1 the darkness reward's eval mean rises ~0.0008 between steps 0 and 2 (brightness = 1 - darkness
falls by the same), so ``hack_drop`` 0.0002 is crossed 4x over; in the healthy run the held-out blue_share rises."""
import json

from pathlib import Path

import pytest
import torch

from psrl.cli.main import main
from psrl.rl.grpo_trainer import GRPOTrainer
from psrl.rl.run_config import load_run_config
from psrl.rl.signals import TrainingStopped
from psrl.rl.tracking import read_metrics

TINY = str(Path(__file__).resolve().parents[1] / "configs" / "tiny_flux.yaml")  # the tiny random FLUX run


def darkness(images, records):
    """Trained, hackable: 1 - mean pixel value (the policy can win it by going black)."""
    return 1.0 - images.float().mean(dim=(1, 2, 3))


def brightness(images, records):
    """Held-out: mean pixel value, exactly what darkness gives away."""
    return images.float().mean(dim=(1, 2, 3))


def blue_share(images, records):
    """Held-out for the healthy run: the blue share of the mean colour ``B / (R + G + B)``, which the blue
    mean_color reward raises too (on the tiny VAE it gets there by lowering red and green more than blue)."""
    mean = images.float().mean(dim=(2, 3))
    return mean[:, 2] / mean.sum(dim=1).clamp_min(1e-6)


SMALL = ["train.groups_per_step=2", "train.group_size=4", "train.sample_batch_size=8", "train.train_batch_size=8",
         "sampling.num_steps=3", "train.save_every=0", "train.lr=0.1", "eval.every=1", "eval.num_steps=3",
         "eval.group_size=2", "eval.at_start=true", "monitor.window=2", "monitor.hack_drop=0.0002"]
HACK = ["rewards=[{name: 'test_monitor_run:darkness', weight: 1.0}]",
        "eval.rewards=[{name: 'test_monitor_run:brightness'}]"]


def _cfg(tmp_path, name, *overrides):
    return load_run_config(None, [f"run.output_dir={tmp_path}", f"run.name={name}", *SMALL, *overrides])


@pytest.mark.e2e
def test_hackable_reward_warns_in_log_metrics_and_final_table(tmp_path, capsys):
    sets = [f"run.output_dir={tmp_path}", *SMALL, *HACK, "train.max_steps=3"]
    args = ["train", "--config", TINY, "--run-name", "warn"] + [x for kv in sets for x in ("--set", kv)]
    assert main(args) == 0  # warn: the run goes on to the end
    out = capsys.readouterr().out
    assert "ALARM step    2  reward_hacking: trained reward test_monitor_run:darkness rose" in out
    assert "(action: warn)" in out
    rows = read_metrics(tmp_path / "warn" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1, 2, 3]  # step 0: the untrained policy's evaluation
    assert "eval/heldout/test_monitor_run:brightness" in rows[0] and "eval/stats/diversity" in rows[0]
    assert rows[2]["monitor/alarm/reward_hacking"] > 0.0002 and "monitor/alarm/reward_hacking" not in rows[1]
    alarms = [json.loads(x) for x in (tmp_path / "warn" / "alarms.jsonl").read_text().splitlines()]
    assert [(a["step"], a["name"]) for a in alarms] == [(2, "reward_hacking")]
    assert (tmp_path / "warn" / "samples" / "step-0.png").is_file()
    # the run's report: curves, the alarm and the grids of steps 0-3 in order
    assert main(["report", str(tmp_path / "warn")]) == 0
    page = (tmp_path / "warn" / "report.html").read_text()
    assert "reward_hacking" in page and page.count("data:image/png;base64,") == 4
    assert "eval/heldout/test_monitor_run:brightness" in (tmp_path / "warn" / "report.md").read_text()


@pytest.mark.component
def test_stop_action_saves_and_exits_non_zero(tmp_path):
    t = GRPOTrainer(_cfg(tmp_path, "stop", *HACK, "train.max_steps=3", "monitor.action=stop"))
    with pytest.raises(TrainingStopped) as info:
        t.train()
    assert info.value.exit_code == 1 and "monitor alarm reward_hacking at step 2" in str(info.value)
    assert len(t.history) == 2 and (tmp_path / "stop" / "checkpoints" / "step-2").is_dir()


@pytest.mark.component
def test_raise_beta_action_turns_on_the_kl(tmp_path):
    t = GRPOTrainer(_cfg(tmp_path, "beta", *HACK, "train.max_steps=3",
                         "monitor.actions={reward_hacking: raise_beta}", "monitor.beta_floor=0.05"))
    history = t.train()
    assert t.cfg.train.beta == pytest.approx(0.05)  # was 0: raised to the floor at step 2
    assert history[1]["kl"] == 0.0 and history[2]["kl"] > 0  # the step after the alarm trains with the KL term


class _Recording(GRPOTrainer):
    """Keeps the trained weights after each step's health check (where the monitor acts)."""

    def check_health(self, done, metrics):
        super().check_health(done, metrics)
        self.after_check = getattr(self, "after_check", {})
        self.after_check[done] = [p.detach().clone() for p in self.params]


@pytest.mark.component
def test_rollback_restores_the_best_heldout_weights_and_lowers_lr(tmp_path):
    t = _Recording(_cfg(tmp_path, "back", *HACK, "train.max_steps=3", "monitor.action=rollback",
                        "monitor.lr_factor=0.5"))
    history = t.train()
    best_step, _, best = t.monitor.best
    assert best_step < 2 and [a.name for a in t.monitor.alarms] == ["reward_hacking"]
    assert all(torch.equal(a, b) for a, b in zip(t.after_check[2], best))  # restored right after the alarm
    assert not all(torch.equal(a, b) for a, b in zip(t.after_check[1], t.after_check[2]))
    assert history[1]["lr"] == pytest.approx(0.1) and history[2]["lr"] == pytest.approx(0.05)


@pytest.mark.component
def test_healthy_run_raises_no_alarm(tmp_path):
    t = GRPOTrainer(_cfg(tmp_path, "ok", "train.max_steps=3",
                         "eval.rewards=[{name: 'test_monitor_run:blue_share'}]"))
    history = t.train()
    assert t.monitor.alarms == [] and not (tmp_path / "ok" / "alarms.jsonl").exists()
    assert not any(k.startswith("monitor/") for m in history for k in m)
    assert history[-1]["eval/heldout/test_monitor_run:blue_share"] > t.monitor.evals[0][
        "eval/heldout/test_monitor_run:blue_share"]


@pytest.mark.component
def test_resumed_run_continues_the_monitor_history(tmp_path):
    GRPOTrainer(_cfg(tmp_path, "res", *HACK, "train.max_steps=2")).train()
    t = GRPOTrainer(_cfg(tmp_path, "res", *HACK, "train.max_steps=3"), resume=True)
    t.train()
    # the evaluations of steps 0-2 were replayed from metrics.jsonl, step 3 compared with step 1
    assert [e["step"] for e in t.monitor.evals] == [0, 1, 2, 3]
    lines = [json.loads(x) for x in (tmp_path / "res" / "alarms.jsonl").read_text().splitlines()]
    assert [(a["step"], a["name"]) for a in lines] == [(2, "reward_hacking")]  # written once, not again on resume
    assert [a.step for a in t.monitor.alarms] == [2]  # cool-down: window 2 evaluations, so step 3 stays silent
