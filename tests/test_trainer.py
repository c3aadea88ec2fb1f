"""The GRPO trainer on tiny FLUX (CPU): only LoRA changes, learning, NaN rewards, fast window, KL, EMA, eval, OOM."""
import dataclasses
import json

import pytest
import torch

from psrl.errors import PsrlError
from psrl.rl.run_config import load_run_config
from psrl.rl.tracking import read_metrics
from psrl.rl.grpo_trainer import GRPOTrainer


SMALL = ["train.groups_per_step=2", "train.group_size=4", "train.sample_batch_size=8", "train.train_batch_size=8",
         "sampling.num_steps=3", "eval.every=0", "train.save_every=0"]


def _cfg(tmp_path, *overrides, name="t"):
    return load_run_config(None, [f"run.output_dir={tmp_path}", f"run.name={name}", *SMALL, *overrides])


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.component
def test_one_update_changes_only_lora(tmp_path):
    trainer = GRPOTrainer(_cfg(tmp_path, "train.max_steps=1"))
    policy = trainer.policy
    frozen = {name: _state(m) for name, m in
              [("text_encoder", policy.text_encoder), ("text_encoder_2", policy.text_encoder_2), ("vae", policy.vae)]}
    before = _state(policy.transformer)
    lora_names = {k for k in before if "lora_" in k}
    assert lora_names
    history = trainer.train()
    assert history[0]["updates"] == 1
    after = _state(policy.transformer)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= lora_names  # some LoRA tensors moved, nothing else
    for name, module in [("text_encoder", policy.text_encoder), ("text_encoder_2", policy.text_encoder_2),
                         ("vae", policy.vae)]:
        now = _state(module)
        assert all(torch.equal(frozen[name][k], now[k]) for k in now), name
    # first step: the update ran fully on-policy, so the ratios of the first micro-batch are 1
    assert history[0]["ratio_min"] <= 1.0 <= history[0]["ratio_max"]


@pytest.mark.component
def test_learning_mean_color_rises(tmp_path):
    """Margin: the mean reward of the last 3 of 12 steps exceeds the first 2 steps' by >= 0.003 (the tiny random
    VAE caps mean_color near 0.6; the within-group reward spread is ~0.001, so 0.003 is several times the noise)."""
    cfg = load_run_config(None, [f"run.output_dir={tmp_path}", "run.name=learn", "train.max_steps=12",
                                 "eval.every=0"])
    history = GRPOTrainer(cfg).train()
    curve = [m["reward/total/mean"] for m in history]
    early, late = sum(curve[:2]) / 2, sum(curve[-3:]) / 3
    assert late - early >= 0.003, curve


def nan_for_first(images, records):
    """A plain-callable reward (dotted path) that cannot score the first image of every batch."""
    scores = images.float().mean(dim=(1, 2, 3))
    scores[0] = float("nan")
    return scores


@pytest.mark.component
def test_nan_rewards_are_counted_and_skipped(tmp_path):
    cfg = _cfg(tmp_path, "train.max_steps=2", "train.sample_batch_size=2", "train.train_batch_size=2",
               "rewards=[{name: 'test_trainer:nan_for_first', weight: 1.0}, {name: mean_color, weight: 0.0}]")
    history = GRPOTrainer(cfg).train()
    m = history[-1]
    # every rollout batch of 2 (= half a group) loses its first sample: 4 of 8 NaN, groups keep 2 valid each
    assert m["reward/test_trainer:nan_for_first/failure_rate"] == pytest.approx(0.5)
    assert m["adv/nan_samples"] == 4 and m["adv/skipped_groups"] == 0 and m["adv/num_trained_samples"] == 4
    assert m["reward/mean_color/failure_rate"] == 0.0
    assert m["train_passes"] > 0
    line = json.loads((tmp_path / "t" / "metrics.jsonl").read_text().splitlines()[0])
    assert line["adv/nan_samples"] == 4


@pytest.mark.component
def test_fast_window_kl_ema_and_eval(tmp_path):
    cfg = _cfg(tmp_path, "train.max_steps=2", "sampling.num_steps=4", "sampling.train_steps=fast_window",
               "sampling.train_k=2", "train.beta=0.05", "train.ema.enabled=true", "train.ema.every=1",
               "train.sample_batch_size=2", "train.train_batch_size=2", "train.gradient_accumulation=2",
               "eval.every=2", "eval.num_steps=2", "eval.resolution=8")
    trainer = GRPOTrainer(cfg)
    history = trainer.train()
    assert history[0]["updates"] == 2 and history[1]["updates"] == 4
    assert history[1]["kl"] > 0  # the LoRA moved away from the reference during the first step
    assert "eval/mean_color/mean" in history[1]
    grid = tmp_path / "t" / "samples" / "step-2.png"
    from PIL import Image

    assert Image.open(grid).size == (16, 8)  # two 8x8 eval images side by side
    ckpt = tmp_path / "t" / "checkpoints" / "step-2"
    assert (ckpt / "lora_ema" / "pytorch_lora_weights.safetensors").is_file() and (ckpt / "ema.pt").is_file()
    assert trainer.ema.num_updates == 4
    # the window is drawn once per step from the seed: the trainer's plan is what the policy trained
    s0, steps0 = trainer._step_sampling(0)
    assert s0.train_steps == "list" and len(steps0) == 2 and trainer._step_sampling(0)[1] == steps0


@pytest.mark.component
def test_out_of_memory_message_lists_memory_settings(tmp_path, monkeypatch):
    trainer = GRPOTrainer(_cfg(tmp_path, "train.max_steps=1"))

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(trainer.policy, "rollout", oom)
    with pytest.raises(PsrlError) as err:
        trainer.train()
    msg = str(err.value)
    for setting in ("rollout phase", "train.sample_batch_size", "train.train_batch_size",
                    "model.gradient_checkpointing", "model.dtype: bfloat16", "sampling.train_steps",
                    "sampling.height", "model.offload_frozen"):
        assert setting in msg


@pytest.mark.component
def test_metrics_file_has_the_promised_keys(tmp_path):
    GRPOTrainer(_cfg(tmp_path, "train.max_steps=1")).train()
    (m,) = read_metrics(tmp_path / "t" / "metrics.jsonl")
    for key in ("reward/mean_color/mean", "reward/mean_color/std", "reward/mean_color/failure_rate",
                "zero_std_ratio", "approx_kl", "clipfrac", "ratio_mean", "ratio_min", "ratio_max", "lr",
                "grad_norm", "time/rollout", "time/reward", "time/train"):
        assert key in m, key
    assert (tmp_path / "t" / "config.yaml").is_file()
    env = json.loads((tmp_path / "t" / "env.json").read_text())
    assert env["torch"] and env["diffusers"] and env["peft"]


@pytest.mark.unit
def test_a_data_root_in_reward_or_model_args_is_a_config_error_naming_its_place(tmp_path):
    """Records arrive resolved, so rewards and policies take no root: a config that still gives one is refused at
    load time, naming the key, the value and where the root belongs now."""
    from psrl.config import ConfigError

    with pytest.raises(ConfigError, match=r"rewards\.0\.args\.data_root: not read here.*data\.data_root.*'/d'"):
        load_run_config(None, ["rewards=[{name: mean_color, weight: 1.0, args: {data_root: /d}}]"])
    with pytest.raises(ConfigError, match=r"model\.args\.data_root: not read here.*data\.data_root"):
        load_run_config(None, ["model.args={data_root: /d}"])


@pytest.mark.component
def test_same_noise_groups_span_batches_and_differ_between_groups(tmp_path):
    """Group members share the initial noise even when a group spans rollout batches; two groups drawn from the
    same record do not share it; the SDE noise still differs inside a group."""
    trainer = GRPOTrainer(_cfg(tmp_path, "train.max_steps=1", "sampling.same_noise_per_group=true",
                               "train.group_size=3", "train.sample_batch_size=2", "train.train_batch_size=2"))
    assignment = trainer.sampler.assign(0)
    # both groups draw record 0
    assignment = type(assignment)((0,) * 6, assignment.group_ids, assignment.sample_seeds, assignment.local)
    sampling, trained = trainer._step_sampling(0)
    rollouts = trainer._rollout(0, assignment, sampling, trained)
    assert [len(r) for r in rollouts] == [2, 2, 2]  # the middle batch holds one member of each group
    starts = torch.cat([r.latents[:, 0] for r in rollouts])
    ends = torch.cat([r.latents[:, -1] for r in rollouts])
    for g in (0, 1):
        members = starts[3 * g:3 * g + 3]
        assert all(torch.equal(members[0], m) for m in members[1:])
        assert not torch.equal(ends[3 * g], ends[3 * g + 1])
    assert not torch.equal(starts[0], starts[3])


@pytest.mark.component
def test_eval_reads_references_from_eval_data_root(tmp_path):
    """Evaluation records whose subject images live outside the training data root (Customized-GRPO evaluates on
    DreamBench while training on SynCD) are read from eval.data_root, for the policy and the rewards."""
    import shutil
    from pathlib import Path

    from psrl.data.records import read_records, write_records

    tiny = Path(__file__).resolve().parents[1] / "configs" / "tiny"
    evaldata = tmp_path / "evaldata"
    evaldata.mkdir()
    records = read_records(tiny / "data" / "records.jsonl")[:2]
    moved = []
    for r in records:
        subjects = []
        for s in r.subjects:
            shutil.copy(tiny / "data" / s.image, evaldata / f"eval_{s.image}")  # names absent from data/
            subjects.append(dataclasses.replace(s, image=f"eval_{s.image}"))
        moved.append(dataclasses.replace(r, subjects=tuple(subjects), target=None))
    write_records(moved, evaldata / "eval.jsonl")
    cfg = load_run_config(tiny / "psr_kontext.yaml", [
        f"run.output_dir={tmp_path}", "run.name=evalroot", "train.max_steps=1", "eval.every=1",
        f"eval.records={evaldata / 'eval.jsonl'}", f"eval.data_root={evaldata}",
        "rewards=[{name: subject_consistency, weight: 1.0, args: {path: tiny}}]"])
    trainer = GRPOTrainer(cfg)
    metrics = trainer.train()
    assert metrics[-1]["eval/subject_consistency/mean"] == metrics[-1]["eval/subject_consistency/mean"]  # not NaN
    # resolved once, at start-up, each set under its own root
    assert all(s.image.startswith(str(evaldata.resolve())) for r in trainer.eval_records for s in r.subjects)
    train_root = str(Path(cfg.data.data_root).resolve())
    assert all(s.image.startswith(train_root) for r in trainer.records for s in r.subjects)
