"""A run is dependable (issue: no work lost, bad input caught before step 1, no silent no-op): signals, resume of
the metrics log, checkpoint completeness, run-folder claims, disk full, start-up checks, reward failures."""
import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time

from pathlib import Path

import pytest
import torch
from PIL import Image
from launch import accelerate_psrl, psrl_env, wait_for_lines
from safetensors.torch import load_file

from psrl.config import ConfigError
from psrl.data.records import Record, RecordError, SubjectRef, write_records
from psrl.errors import PsrlError
from psrl.rewards.base import RewardOutput
from psrl.rl import checkpoint as ckpt
from psrl.rl.grpo_trainer import GRPOTrainer
from psrl.rl.run_config import load_run_config
from psrl.rl.signals import TrainingStopped
from psrl.rl.tracking import read_metrics, repair_metrics

TINY = str(Path(__file__).resolve().parents[1] / "configs" / "tiny_flux.yaml")  # the tiny random FLUX run

BASE = ["train.groups_per_step=2", "train.group_size=2", "train.sample_batch_size=4", "train.train_batch_size=4",
        "sampling.num_steps=3", "eval.every=0", "train.keep_last=0"]


def _cfg(tmp_path, name, *extra):
    return load_run_config(None, [f"run.output_dir={tmp_path}", f"run.name={name}", *BASE, *extra])


def _psrl(*args, cwd, timeout=300):
    return subprocess.run([sys.executable, "-m", "psrl", *args], capture_output=True, text=True, env=psrl_env(),
                          cwd=cwd, timeout=timeout)


def _weights(run, step):
    return load_file(run / "checkpoints" / f"step-{step}" / "trainable.safetensors")


# ----------------------------------------------------------------------------- signals
class _SignalAt:
    """Wraps a reward; sends ``sig`` to this process while scoring step ``at`` (mid-step, before any update)."""

    def __init__(self, reward, at, sig):
        self.reward, self.at, self.sig, self.calls = reward, at, sig, 0
        self.name = reward.name

    def __call__(self, images, records):
        if self.calls == self.at:
            os.kill(os.getpid(), self.sig)
        self.calls += 1
        return self.reward(images, records)


@pytest.mark.component
def test_signal_mid_step_abandons_it_saves_and_resume_is_exact(tmp_path):
    full = GRPOTrainer(_cfg(tmp_path, "full", "train.max_steps=4"))
    full.train()
    t = GRPOTrainer(_cfg(tmp_path, "cut", "train.max_steps=4"))
    t.rewards[0] = _SignalAt(t.rewards[0], at=2, sig=signal.SIGTERM)  # one rollout batch per step: call 2 = step 3
    with pytest.raises(TrainingStopped) as info:
        t.train()
    assert info.value.exit_code == 143 and "SIGTERM" in str(info.value)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "cut")] == [2]  # step 3 abandoned, state of its start
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers restored
    resumed = GRPOTrainer(_cfg(tmp_path, "cut", "train.max_steps=4"), resume=True)
    assert resumed.start_step == 2
    resumed.train()
    a, b = _weights(tmp_path / "full", 4), _weights(tmp_path / "cut", 4)
    assert all(torch.allclose(a[k], b[k], atol=1e-6, rtol=0) for k in a)
    assert [m["step"] for m in read_metrics(tmp_path / "cut" / "metrics.jsonl")] == [1, 2, 3, 4]


@pytest.mark.e2e
def test_sigint_from_the_shell_saves_and_exits_130_then_resumes(tmp_path):
    args = ["train", "--config", TINY, "--set", f"run.output_dir={tmp_path}", "--set", "run.name=sig", "--set",
            "train.max_steps=400", *[x for kv in BASE for x in ("--set", kv)]]
    proc = subprocess.Popen([sys.executable, "-m", "psrl", *args], cwd=tmp_path, env=psrl_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "sig" / "metrics.jsonl"
    wait_for_lines(proc, metrics, 2, timeout=120)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "stopped by SIGINT" in err and "Traceback" not in err
    (step, _), = ckpt.list_checkpoints(tmp_path / "sig")
    assert step >= 2
    rows = [m["step"] for m in read_metrics(metrics)]
    assert rows[-1] <= step + 1
    res = _psrl("train", "--config", TINY, "--set", f"run.output_dir={tmp_path}", "--set", "run.name=sig", "--set",
                f"train.max_steps={step + 2}", *[x for kv in BASE for x in ("--set", kv)], "--resume", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert [m["step"] for m in read_metrics(metrics)] == list(range(1, step + 3))  # no step twice


# ----------------------------------------------------------------------------- metrics log
@pytest.mark.unit
def test_metrics_resume_drops_rows_past_the_checkpoint_and_a_torn_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "x": s} for s in (0, 1, 2, 3, 4)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 5, "x"')  # killed mid-write
    assert [r["step"] for r in read_metrics(path)] == [0, 1, 2, 3, 4]  # readers skip the torn line
    assert repair_metrics(path, keep_through=2) == 3
    assert [r["step"] for r in read_metrics(path)] == [0, 1, 2]
    assert path.read_text().endswith("\n")


@pytest.mark.component
def test_resume_after_a_crash_past_the_checkpoint_logs_each_step_once(tmp_path):
    GRPOTrainer(_cfg(tmp_path, "r", "train.max_steps=2")).train()
    with (tmp_path / "r" / "metrics.jsonl").open("a") as f:  # steps 3 and 4 ran, then a crash before a save
        f.write('{"step": 3, "reward/total/mean": 0.1}\n{"step": 4, "reward/tot')
    GRPOTrainer(_cfg(tmp_path, "r", "train.max_steps=3"), resume=True).train()
    assert [m["step"] for m in read_metrics(tmp_path / "r" / "metrics.jsonl")] == [1, 2, 3]


@pytest.mark.component
def test_save_every_minutes(tmp_path, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr("psrl.rl.base_trainer.time.monotonic", lambda: clock[0])
    t = GRPOTrainer(_cfg(tmp_path, "m", "train.max_steps=3", "train.save_every_minutes=5"))
    inner = t.run_step

    def step(s):
        clock[0] += 200.0  # each step "takes" 200 s: a save is due after steps 2 (400 s) and the end
        return inner(s)

    t.run_step = step
    t.train()
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "m")] == [2, 3]


# ----------------------------------------------------------------------------- checkpoints
@pytest.mark.component
def test_resume_skips_an_incomplete_checkpoint_and_names_it(tmp_path, caplog):
    GRPOTrainer(_cfg(tmp_path, "c", "train.max_steps=2", "train.save_every=1")).train()
    newest = tmp_path / "c" / "checkpoints" / "step-2"
    (newest / "trainable.safetensors").unlink()  # what a kill during an rmtree could leave
    assert ckpt.verify_checkpoint(newest) == "trainable.safetensors is missing"
    t = GRPOTrainer(_cfg(tmp_path, "c", "train.max_steps=2"), resume=True)
    assert t.start_step == 1
    assert "skipping incomplete checkpoint" in caplog.text and "step-2" in caplog.text
    (tmp_path / "c" / "checkpoints" / "step-1" / "optimizer.pt").write_bytes(b"x")  # truncated
    assert "optimizer.pt has 1 bytes" in ckpt.verify_checkpoint(tmp_path / "c" / "checkpoints" / "step-1")


@pytest.mark.component
def test_pruning_never_leaves_a_complete_looking_shell(tmp_path, monkeypatch):
    GRPOTrainer(_cfg(tmp_path, "p", "train.max_steps=2", "train.save_every=1")).train()
    seen = []
    real = ckpt.shutil.rmtree

    def rmtree(path, *a, **k):  # what is on disk when the deletion starts
        seen.append(sorted(d.name for d in (tmp_path / "p" / "checkpoints").iterdir()))
        return real(path, *a, **k)

    monkeypatch.setattr(ckpt.shutil, "rmtree", rmtree)
    ckpt.prune_checkpoints(tmp_path / "p", keep_last=1)
    assert seen and all("step-1" not in names for names in seen)  # renamed away before any file is deleted
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "p")] == [2]


@pytest.mark.component
def test_disk_full_is_one_line_and_keeps_earlier_checkpoints(tmp_path, monkeypatch):
    t = GRPOTrainer(_cfg(tmp_path, "d", "train.max_steps=2", "train.save_every=1"))
    t.train()
    real = torch.save

    def full(obj, f, *a, **k):
        if str(f).endswith("optimizer.pt"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *a, **k)

    monkeypatch.setattr(ckpt.torch, "save", full)
    with pytest.raises(PsrlError) as info:
        t.save(3)
    msg = str(info.value)
    assert "no space left on device" in msg and "step-3" in msg and "needed" in msg and "\n" not in msg
    assert not (tmp_path / "d" / "checkpoints" / ".step-3.tmp").exists()
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "d")] == [1, 2]
    assert ckpt.verify_checkpoint(tmp_path / "d" / "checkpoints" / "step-2") is None


@pytest.mark.component
def test_non_finite_weights_are_never_saved(tmp_path):
    t = GRPOTrainer(_cfg(tmp_path, "n", "train.max_steps=1"))
    name, p = next(iter(t.named_params.items()))
    with torch.no_grad():
        p.view(-1)[0] = float("nan")
    with pytest.raises(PsrlError, match=f"step 1: trainable parameter {name} has 1 non-finite"):
        t.train()
    assert not ckpt.list_checkpoints(tmp_path / "n")


# ----------------------------------------------------------------------------- run folders
@pytest.mark.unit
def test_concurrent_starts_claim_distinct_folders(tmp_path):
    barrier, names = threading.Barrier(4), []

    def start():
        barrier.wait()
        names.append(ckpt._claim_run_dir(tmp_path, "same"))

    threads = [threading.Thread(target=start) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(names) == ["same", "same-1", "same-2", "same-3"]


@pytest.mark.e2e
def test_two_cli_runs_started_together_do_not_share_a_folder(tmp_path):
    cmd = [sys.executable, "-m", "psrl", "train", "--set", f"run.output_dir={tmp_path}", "--set", "run.name=twin",
           "--set", "train.max_steps=1", *[x for kv in BASE for x in ("--set", kv)]]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=psrl_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(2)]
    for p in procs:
        p.communicate(timeout=300)
        assert p.returncode == 0
    for name in ("twin", "twin-1"):
        assert [m["step"] for m in read_metrics(tmp_path / name / "metrics.jsonl")] == [1]
        assert ckpt.verify_checkpoint(tmp_path / name / "checkpoints" / "step-1") is None


# ----------------------------------------------------------------------------- start-up checks
def _kontext_records(tmp_path, n_subjects=2, missing=False, tiny_ref=False):
    for name, size in (("a.png", 32), ("b.png", 32), ("tiny.png", 1)):
        Image.new("RGB", (size, size), (200, 10, 10)).save(tmp_path / name)
    (tmp_path / "trunc.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"0" * 40)
    good = Record(id="good", prompt="a and b", subjects=(SubjectRef("a.png", "a"), SubjectRef("b.png", "b")))
    bad = [Record(id="five", prompt="p", subjects=tuple(SubjectRef("a.png", f"s{i}") for i in range(5))),
           Record(id="gone", prompt="p", subjects=(SubjectRef("nothere.png", "x"),)),
           Record(id="small", prompt="p", subjects=(SubjectRef("tiny.png", "x"),)),
           Record(id="broken", prompt="p", subjects=(SubjectRef("trunc.jpg", "x"),))]
    write_records([good, *bad], tmp_path / "train.jsonl")
    return tmp_path / "train.jsonl"


def _kontext_cli(tmp_path, *extra):
    return _psrl("train", "--config", str(_tiny_config("psr_kontext")), "--set", f"run.output_dir={tmp_path}/runs",
                 "--set", f"data.records={tmp_path}/train.jsonl", "--set", f"data.data_root={tmp_path}",
                 "--set", "eval.every=0", "--set", "train.max_steps=1", *extra, cwd=tmp_path)


def _tiny_config(name):
    from pathlib import Path

    return Path(__file__).resolve().parent.parent / "configs" / "tiny" / f"{name}.yaml"


@pytest.mark.e2e
def test_bad_records_are_all_listed_before_the_run_folder_exists(tmp_path):
    _kontext_records(tmp_path)
    out = _kontext_cli(tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    err = out.stderr.strip().splitlines()[-1]
    for needle in ("4 of 5 record(s) are invalid", "'five': 5 subjects; the policy supports at most 4",
                   "'gone' nothere.png: file not found", "'small' tiny.png: image is 1x1",
                   "'broken' trunc.jpg: unreadable image", "data.skip_invalid"):
        assert needle in err, (needle, err)
    assert not (tmp_path / "runs").exists()
    ok = _kontext_cli(tmp_path, "--set", "data.skip_invalid=true")
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "skipping 4 invalid record(s) of 5" in ok.stderr


@pytest.mark.e2e
@pytest.mark.parametrize("override, needle", [
    ("sampling.height=15", "sampling.height/width: height and width must be multiples of"),
    ("run.tracker=wandb", "run.tracker=wandb needs the wandb package"),
    ("advantage.clip=.nan", "'advantage.clip': nan is not a finite number (from --set advantage.clip=.nan)"),
    ("train.group_size=1", "train.group_size must be >= 2"),
    ("train.lrr=1", "unknown config key 'train.lrr' (from --set train.lrr=1)"),
])
def test_bad_settings_fail_in_one_line_and_leave_no_folder(tmp_path, override, needle):
    if "wandb" in override:
        import importlib.util

        if importlib.util.find_spec("wandb") is not None:
            pytest.skip("wandb is installed here")
    out = _psrl("train", "--set", f"run.output_dir={tmp_path}/runs", "--set", override, cwd=tmp_path)
    assert out.returncode == 2
    lines = [ln for ln in out.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and needle in lines[0], out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.unit
def test_offline_hub_typo_is_named_quickly(monkeypatch):
    import huggingface_hub.constants

    from psrl.models.loading import ModelLoadError, resolve_model_source

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # read at import, as the env was
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    t0 = time.time()
    with pytest.raises(ModelLoadError, match="unreachable.*the id may be wrong"):
        resolve_model_source("black-forest-labs/FLUX.1-devv")
    assert time.time() - t0 < 15


# ----------------------------------------------------------------------------- reward failures
def _all_nan(images, records):
    return RewardOutput(scores=torch.full((len(records),), float("nan")), failures=["no face found"] * len(records))


def _raises(images, records):
    raise ValueError("detector weights are corrupt")


def _short(images, records):
    return RewardOutput(scores=torch.zeros(len(records) - 1), failures=[None] * (len(records) - 1))


@pytest.mark.component
def test_a_reward_that_never_scores_stops_the_run_non_zero(tmp_path):
    t = GRPOTrainer(_cfg(tmp_path, "nan", "train.max_steps=10", "train.max_invalid_steps=2"))
    t.rewards[0] = type("R", (), {"name": "face", "__call__": staticmethod(_all_nan)})()
    with pytest.raises(TrainingStopped) as info:
        t.train()
    assert info.value.exit_code == 1
    assert "2 consecutive step(s) in which no sample could be scored" in str(info.value)
    assert "mean_color 100%" in str(info.value)  # the failure rate of the configured reward is named
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "nan")] == [2]


@pytest.mark.component
@pytest.mark.parametrize("fn, needle", [(_raises, "raised ValueError: detector weights are corrupt"),
                                        (_short, "returned 3 scores for 4 images")])
def test_a_broken_reward_ends_the_run_cleanly_naming_it(tmp_path, fn, needle):
    t = GRPOTrainer(_cfg(tmp_path, "b", "train.max_steps=3"))
    t.rewards[0] = type("R", (), {"name": "mine", "__call__": staticmethod(fn)})()
    with pytest.raises(TrainingStopped, match=f"reward 'mine' {needle}") as info:
        t.train()
    assert info.value.exit_code == 1
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "b")] == [0]  # the state before the failed step


@pytest.mark.unit
def test_record_problems_listing_is_complete_and_skip_counts(tmp_path):
    from psrl.data.checks import apply_record_checks, check_records

    path = _kontext_records(tmp_path)
    from psrl.data.records import load_records

    records = load_records(path, tmp_path)
    problems = check_records(records, max_subjects=4, needs_references=True)
    assert {p.record_id for p in problems} == {"five", "gone", "small", "broken"}
    with pytest.raises(RecordError, match="4 of 5 record"):
        apply_record_checks(records, problems, source=str(path))
    kept = apply_record_checks(records, problems, source=str(path), skip_invalid=True)
    assert [r.id for r in kept] == ["good"]


@pytest.mark.unit
def test_config_rejects_non_finite_numbers_everywhere():
    for key in ("train.lr", "train.weight_decay", "train.adam_eps", "advantage.eps", "sampling.noise_level"):
        with pytest.raises(ConfigError, match=f"'{key}': nan is not a finite number"):
            load_run_config(None, [f"{key}=.nan"])
        with pytest.raises(ConfigError, match="not a finite number"):
            load_run_config(None, [f"{key}=.inf"])


@pytest.mark.e2e
def test_sigterm_to_a_two_process_launch_saves_on_every_rank_then_resumes(tmp_path):
    args = ["train", "--set", f"run.output_dir={tmp_path}", "--set", "run.name=mp",
            *[x for kv in BASE for x in ("--set", kv)], "--set", "train.sample_batch_size=2",
            "--set", "train.train_batch_size=2"]
    # SLURM's scancel and a terminal's Ctrl-C signal the whole process group: launcher and both ranks
    proc = subprocess.Popen(accelerate_psrl(*args, "--set", "train.max_steps=300"), cwd=tmp_path, env=psrl_env(),
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    metrics = tmp_path / "mp" / "metrics.jsonl"
    wait_for_lines(proc, metrics, 1, timeout=180)
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode != 0
    assert err.count("stopped by SIGTERM") == 2, err[-3000:]  # both ranks stopped, after one agreed step
    (step, path), = ckpt.list_checkpoints(tmp_path / "mp")
    assert ckpt.verify_checkpoint(path) is None
    assert (path / "rng" / "rank-0.pt").is_file() and (path / "rng" / "rank-1.pt").is_file()
    res = subprocess.run(accelerate_psrl(*args, "--set", f"train.max_steps={step + 1}", "--resume"), cwd=tmp_path,
                         env=psrl_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert [m["step"] for m in read_metrics(metrics)] == list(range(1, step + 2))


@pytest.mark.e2e
def test_resuming_a_finished_run_does_nothing_and_says_so(tmp_path):
    args = ["train", "--set", f"run.output_dir={tmp_path}", "--set", "run.name=f", "--set", "train.max_steps=1",
            *[x for kv in BASE for x in ("--set", kv)]]
    assert _psrl(*args, cwd=tmp_path).returncode == 0
    again = _psrl(*args, "--resume", cwd=tmp_path)
    assert again.returncode == 1 and "nothing to do: the run is already at step 1 of 1" in again.stderr


@pytest.mark.unit
def test_the_table_says_when_a_step_learned_nothing():
    from psrl.cli.train import reward_table

    row = {"reward/total/mean": 0.5, "reward/total/std": 0.0, "zero_std_ratio": 1.0, "approx_kl": 0.0,
           "clipfrac": 0.0, "time/step": 0.1, "adv/num_trained_samples": 0.0}
    table = reward_table([row, dict(row, **{"adv/num_trained_samples": 4.0})], 0)
    assert table.count("no trainable group") == 2 and "1 of 2 step(s) had no trainable group" in table


@pytest.mark.component
def test_failure_reasons_are_logged_whole(tmp_path, caplog):
    t = GRPOTrainer(_cfg(tmp_path, "why", "train.max_steps=1", "train.max_invalid_steps=0"))
    t.rewards[0] = type("R", (), {"name": "face", "__call__": staticmethod(_all_nan)})()
    t.train()
    assert "reward 'face' could not score 4 sample(s): 4 x no face found" in caplog.text


@pytest.mark.e2e
def test_generate_checks_every_record_before_the_first_image(tmp_path):
    _kontext_records(tmp_path)
    out = _psrl("generate", "--config", str(_tiny_config("psr_kontext")), "--records", str(tmp_path / "train.jsonl"),
                "--set", f"data.data_root={tmp_path}", "--out", str(tmp_path / "imgs"), "--steps", "1", cwd=tmp_path)
    assert out.returncode == 2 and "4 of 5 record(s) are invalid" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "imgs").exists()


@pytest.mark.component
def test_another_ranks_failed_rng_write_fails_the_checkpoint_on_rank_0(tmp_path, monkeypatch):
    t = GRPOTrainer(_cfg(tmp_path, "r", "train.max_steps=1"))
    t.train()
    # what rank 1 of two would send: its RNG file could not be written (the disk filled)
    monkeypatch.setattr(ckpt.dist, "gather_objects",
                        lambda obj: [obj, OSError(errno.ENOSPC, "No space left on device")])
    with pytest.raises(PsrlError, match="no space left on device writing checkpoint .*step-2"):
        t.save(2)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "r")] == [1]  # the earlier one intact, no step-2
    assert not (tmp_path / "r" / "checkpoints" / ".step-2.tmp").exists()


@pytest.mark.component
def test_a_temp_folder_that_cannot_be_made_is_one_error_and_nothing_is_published(tmp_path, monkeypatch):
    t = GRPOTrainer(_cfg(tmp_path, "m", "train.max_steps=1"))
    t.train()

    def read_only(path):
        raise OSError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(ckpt, "atomic_dir", read_only)
    with pytest.raises(PsrlError, match=r"could not write checkpoint .*step-2: Permission denied"):
        t.save(2)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "m")] == [1]
