"""Exact resume of the trainer's whole state (the monitor's raised beta and history, the adaptive balancer's window,
the best held-out weights), old checkpoints without that state, and evaluation once: ``psrl train`` reuses the
trainer's evaluations for its before/after snapshots instead of sampling the eval set again."""
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from psrl.cli.main import main
from psrl.models.flow_policy import FlowPolicyBase
from psrl.rl.evaluation import eval_snapshot, first_member_snapshot
from psrl.rl.grpo_trainer import GRPOTrainer
from psrl.rl.run_config import load_run_config
from psrl.rl.tracking import read_metrics

TINY = str(Path(__file__).resolve().parents[1] / "configs" / "tiny_flux.yaml")  # the tiny random FLUX run


def brightness(images, records):
    """The mean pixel: a second reward, so the adaptive balance has two to weigh."""
    return images.float().mean(dim=(1, 2, 3))


BASE = ["train.groups_per_step=2", "train.group_size=4", "train.sample_batch_size=4", "train.train_batch_size=2",
        "train.gradient_accumulation=2", "sampling.num_steps=3", "eval.every=0", "train.lr=0.05",
        "train.save_every=0"]
# kl_runaway fires at every step it may (max_kl tiny, window 2: steps 2 and 4) and raises beta each time; the
# balancer's window (2 steps) is full from step 3 on
STATEFUL = ["rewards=[{name: mean_color, weight: 1.0, args: {target: [0.0, 0.0, 1.0]}}, "
            "{name: 'test_resume_state:brightness', weight: 1.0}]",
            "advantage.balance=adaptive", "advantage.balance_window=2", "monitor.window=2", "monitor.max_kl=1e-12",
            "monitor.actions={kl_runaway: raise_beta}", "monitor.beta_floor=0.01"]


def _cfg(tmp_path, name, *extra):
    return load_run_config(None, [f"run.output_dir={tmp_path}", f"run.name={name}", *BASE, *extra])


@pytest.mark.component
def test_resume_with_raise_beta_and_adaptive_balance_equals_uninterrupted(tmp_path):
    full = GRPOTrainer(_cfg(tmp_path, "full", *STATEFUL, "train.max_steps=5"))
    full_rows = full.train()
    split = GRPOTrainer(_cfg(tmp_path, "split", *STATEFUL, "train.max_steps=3"))
    split.train()
    assert split.cfg.train.beta == pytest.approx(0.01)  # raised at step 2, before the interruption
    state = json.loads((tmp_path / "split" / "checkpoints" / "step-3" / "state.json").read_text())
    assert state["beta"] == pytest.approx(0.01) and len(state["balancer"]["means"]) == 2
    assert state["monitor"]["num_steps"] == 3 and [a["step"] for a in state["monitor"]["alarms"]] == [2]
    resumed = GRPOTrainer(_cfg(tmp_path, "split", *STATEFUL, "train.max_steps=5"), resume=True)
    assert resumed.cfg.train.beta == pytest.approx(0.01)  # the config says 0: the checkpoint's beta wins
    later = resumed.train()
    assert resumed.cfg.train.beta == full.cfg.train.beta == pytest.approx(0.02)  # raised again at step 4
    assert [a.to_dict() for a in resumed.monitor.alarms] == [a.to_dict() for a in full.monitor.alarms]
    # the later steps' metrics are the uninterrupted run's: rewards, adaptive weights, KL
    keys = ["reward/total/mean", "adv/weight/mean_color", "adv/weight/test_resume_state:brightness", "kl", "loss"]
    assert full_rows[3]["adv/weight/mean_color"] != 1.0  # the balance acted after the resume point
    for a, b in zip(full_rows[3:], later):
        for k in keys:
            assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-7), k
    w_full = load_file(tmp_path / "full" / "checkpoints" / "step-5" / "trainable.safetensors")
    w_split = load_file(tmp_path / "split" / "checkpoints" / "step-5" / "trainable.safetensors")
    assert w_full.keys() == w_split.keys() and w_full
    for k in w_full:
        assert torch.allclose(w_full[k], w_split[k], atol=1e-6, rtol=0), k


@pytest.mark.component
def test_trainer_extra_state_round_trips_through_json(tmp_path):
    """Every piece the GRPO trainer saves comes back from ``state.json``'s JSON: the unscored-step count, the
    raised beta, the monitor's history and the balancer's window."""
    from psrl.errors import PsrlError

    a = GRPOTrainer(_cfg(tmp_path, "a", *STATEFUL, "train.max_steps=1"))
    a._invalid_steps, a.cfg.train.beta = 2, 0.04
    gid = torch.tensor([0, 0, 1, 1])
    for s in range(1, 4):
        a.balancer.observe(torch.rand(4, 2, generator=torch.Generator().manual_seed(s)), gid)
        a.monitor.observe(s, {"approx_kl": 0.5, "loss": 0.1})
    state = json.loads(json.dumps({"step": 3, "updates": 6, **a.extra_state()}, allow_nan=False))
    b = GRPOTrainer(_cfg(tmp_path, "b", *STATEFUL, "train.max_steps=1"))
    b.load_extra_state(state)
    assert b._invalid_steps == 2 and b.cfg.train.beta == 0.04
    assert b.monitor.state_dict() == a.monitor.state_dict() and [x.step for x in b.monitor.alarms] == [2]
    assert b.balancer.state_dict() == a.balancer.state_dict() and torch.equal(b.balancer.weights(),
                                                                                a.balancer.weights())
    # a window saved with another number of rewards: a one-line error, not a wrong resume
    c = GRPOTrainer(_cfg(tmp_path, "c", *STATEFUL[1:], "train.max_steps=1"))
    with pytest.raises(PsrlError, match="--resume: advantage.balance: the saved balance window has rows of \\[2\\]"):
        c.load_extra_state(state)


def _strip_to_old_format(step_dir: Path) -> None:
    """Make ``step_dir`` look like a checkpoint of an older psrl: no trainer state beyond step/updates, no
    ``monitor_best.pt``."""
    state = json.loads((step_dir / "state.json").read_text())
    for key in ("invalid_steps", "beta", "monitor", "balancer"):
        state.pop(key)
    (step_dir / "monitor_best.pt").unlink()
    state["files"].pop("monitor_best.pt")
    (step_dir / "state.json").write_text(json.dumps(state))


ROLLBACK = ["eval.every=1", "eval.num_steps=2", "eval.rewards=[{name: 'test_resume_state:brightness'}]",
            "monitor.action=rollback", "train.max_invalid_steps=3"]


@pytest.mark.component
def test_best_weights_resume_and_an_old_checkpoint_resumes_with_defaults(tmp_path):
    first = GRPOTrainer(_cfg(tmp_path, "new", *STATEFUL[1:3], *ROLLBACK, "train.max_steps=2"))
    first.train()
    best_step, best_score, best = first.monitor.best
    shutil.copytree(tmp_path / "new", tmp_path / "old")
    # a current checkpoint: the best held-out weights come back (rollback can reach before the resume)
    resumed = GRPOTrainer(_cfg(tmp_path, "new", *STATEFUL[1:3], *ROLLBACK, "train.max_steps=3"), resume=True)
    assert resumed.monitor.best[:2] == (best_step, pytest.approx(best_score))
    assert all(torch.equal(a, b) for a, b in zip(resumed.monitor.best[2], best))
    assert len(resumed.balancer.means) == 2 and [e["step"] for e in resumed.monitor.evals] == [1, 2]
    # an older checkpoint: no trainer state, no monitor_best.pt; it resumes, every piece at its default
    _strip_to_old_format(tmp_path / "old" / "checkpoints" / "step-2")
    old = GRPOTrainer(_cfg(tmp_path, "old", *STATEFUL[1:3], *ROLLBACK, "train.max_steps=3"), resume=True)
    assert old.start_step == 2 and old.monitor.best is None and old.balancer.means == []
    assert old._invalid_steps == 0 and old.cfg.train.beta == 0.0
    rows = old.train()
    assert len(rows) == 1 and len(old.balancer.means) == 1
    # the monitor's history was replayed from metrics.jsonl (the pre-state way): evaluations 1 and 2, then 3
    assert [e["step"] for e in old.monitor.evals] == [1, 2, 3]
    assert [r["step"] for r in read_metrics(tmp_path / "old" / "metrics.jsonl")] == [1, 2, 3]


@pytest.mark.component
def test_the_final_snapshot_is_the_final_evaluation(tmp_path):
    t = GRPOTrainer(_cfg(tmp_path, "snap", "train.max_steps=1", "eval.every=1", "eval.num_steps=2"))
    t.train()
    assert t.last_eval is not None and t.last_eval.step == 1
    reused, fresh = eval_snapshot(t, 1), first_member_snapshot(t)
    assert torch.equal(reused["images"], fresh["images"])
    assert reused["scores"].keys() == fresh["scores"].keys() == {"mean_color"}
    assert torch.equal(reused["scores"]["mean_color"], fresh["scores"]["mean_color"])
    t.last_eval = None  # what a rollback does: the weights changed, the evaluation is no longer theirs
    assert torch.equal(eval_snapshot(t, 1)["images"], fresh["images"])


class _Count:
    def __init__(self):
        self.calls = []

    def wrap(self, generate):
        def counted(policy, records, sampling, **kwargs):
            self.calls.append(len(records))
            return generate(policy, records, sampling, **kwargs)
        return counted


@pytest.mark.e2e
@pytest.mark.parametrize("extra, calls", [
    # step 0 before training (no trainer evaluation there) and the final evaluation at step 2, reused: 2 (was 3)
    ([], [2, 2]),
    # eval.at_start with 2 samples per record: the trainer's step-0 and step-2 evaluations serve both snapshots
    (["eval.at_start=true", "eval.group_size=2"], [4, 4]),
])
def test_psrl_train_samples_each_evaluated_step_once(tmp_path, monkeypatch, capsys, extra, calls):
    count = _Count()
    monkeypatch.setattr(FlowPolicyBase, "generate", count.wrap(FlowPolicyBase.generate))
    sets = [f"run.output_dir={tmp_path}", "train.max_steps=2", "train.groups_per_step=2", "train.group_size=2",
            "train.sample_batch_size=4", "train.train_batch_size=4", "sampling.num_steps=2", "eval.every=2",
            "eval.num_steps=2", *extra]
    assert main(["train", "--config", TINY, "--run-name", "once"] + [x for kv in sets for x in ("--set", kv)]) == 0
    assert count.calls == calls
    out = capsys.readouterr().out
    assert "held-out eval reward at step 0: mean_color " in out
    assert "held-out eval reward at step 2: mean_color " in out
    assert "(n=2)" in out  # the first sample of each of the 2 eval records, as before
    run = tmp_path / "once"
    assert (run / "samples" / "before_after.png").is_file() and (run / "samples" / "step-2.png").is_file()
    assert (run / "samples" / "step-0.png").is_file() == ("eval.at_start=true" in extra)
