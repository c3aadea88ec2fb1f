"""SFT (PSR stage 1): sigma sampling, target loading, the loss falls on a small synthetic multi-subject dataset with
tiny Kontext through the CLI, resume, and the saved LoRA initialises a GRPO policy (model.lora.path)."""
import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from psrl.data.records import Record, RecordError, SubjectRef, resolve_records, write_records


def _dataset(root, n=3):
    rng = np.random.default_rng(0)
    records = []
    for i in range(n):
        refs = []
        for k in range(1 + i % 2):
            name = f"ref{i}_{k}.png"
            Image.fromarray(rng.integers(0, 256, (12, 12 + 4 * k, 3), dtype=np.uint8)).save(root / name)
            refs.append(SubjectRef(image=name, phrase=f"thing{k}"))
        target = np.zeros((24, 20, 3), dtype=np.uint8)
        target[..., i % 3] = 220                       # a saturated colour per record, easy to learn
        target[::4] = 40
        Image.fromarray(target).save(root / f"target{i}.png")
        records.append(Record(id=f"r{i}", prompt=f"subject {i} on a table", subjects=tuple(refs),
                              target=f"target{i}.png"))
    write_records(records, root / "train.jsonl")
    return records


def _config(root, **sft):
    cfg = {
        "model": {"name": "flux_kontext", "path": "tiny", "max_sequence_length": 16,
                  "lora": {"rank": 4, "alpha": 4.0, "init": True},
                  "args": {"reference_long_side_single": 16, "reference_long_side_multi": 8}},
        "sft": {"max_steps": 12, "batch_size": 3, "height": 16, "width": 16, "lr": 0.05, "log_every": 4,
                "sigma_sampling": "logit_normal", "seed": 0, "save_every": 6, "device": "cpu", **sft},
        "data": {"records": "train.jsonl"},
        "run": {"name": "sft", "output_dir": str(root / "runs")},
    }
    path = root / "sft.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.unit
def test_sample_sigmas_schemes():
    from psrl.rl.sft_trainer import sample_sigmas

    g = torch.Generator().manual_seed(0)
    ln = sample_sigmas(20000, "logit_normal", g)
    assert 0 < ln.min() and ln.max() <= 1 and abs(float(ln.mean()) - 0.5) < 0.01
    assert abs(float(ln.std()) - 0.208) < 0.01          # std of sigmoid(N(0, 1))
    un = sample_sigmas(20000, "uniform", g)
    assert abs(float(un.mean()) - 0.5) < 0.01 and abs(float(un.std()) - (1 / 12) ** 0.5) < 0.01
    shifted = sample_sigmas(20000, "uniform", g, shift=3.0)
    assert float(shifted.mean()) > 0.6                  # a shift > 1 moves mass to high noise
    mode = sample_sigmas(1000, "mode", g)
    assert 0 < mode.min() and mode.max() <= 1


@pytest.mark.unit
def test_load_target_resizes_and_names_the_record(tmp_path):
    from psrl.rl.sft_trainer import load_target

    Image.new("RGBA", (40, 20), (255, 0, 0, 128)).save(tmp_path / "t.png")
    a, b, c = resolve_records([Record(id="a", prompt="p", target="t.png"), Record(id="b", prompt="p"),
                               Record(id="c", prompt="p", target="nope.png")], tmp_path)
    x = load_target(a, 16, 16)
    assert x.shape == (3, 16, 16) and torch.allclose(x[0], torch.ones(16, 16))
    with pytest.raises(RecordError, match="'b'.*no 'target'"):
        load_target(b, 16, 16)
    with pytest.raises(RecordError, match="'c': target image 'nope.png' not found"):
        load_target(c, 16, 16)
    with pytest.raises(RecordError, match="'a': target image 't.png' is not resolved"):
        load_target(Record(id="a", prompt="p", target="t.png"), 16, 16)  # never read from the cwd


@pytest.mark.e2e
def test_sft_cli_loss_falls_resumes_and_initialises_grpo(tmp_path):
    from psrl.cli.main import main
    from psrl.rl.tracking import read_metrics

    records = _dataset(tmp_path)
    cfg = _config(tmp_path)
    assert main(["sft", "--config", str(cfg)]) == 0
    run = tmp_path / "runs" / "sft"
    metrics = read_metrics(run / "metrics.jsonl")
    fixed = [m["loss/fixed"] for m in metrics if "loss/fixed" in m]
    assert len(fixed) == 4 and fixed[-1] < 0.85 * fixed[0], fixed
    lora_dir = run / "checkpoints" / "step-12" / "lora"
    assert (lora_dir / "pytorch_lora_weights.safetensors").is_file()
    assert (run / "checkpoints" / "step-6" / "state.json").is_file()

    # resume continues from step 12 to 14 and appends to the same metrics file
    assert main(["sft", "--config", str(cfg), "--resume", "--max-steps", "14"]) == 0
    steps = [m["step"] for m in read_metrics(run / "metrics.jsonl")]
    assert steps[-1] == 14 and json.loads((run / "checkpoints" / "step-14" / "state.json").read_text())["step"] == 14
    # a new run with the same name never mixes into the old folder
    assert main(["sft", "--config", str(cfg), "--max-steps", "1", "--set", "sft.eval_sigmas=[]"]) == 0
    assert (tmp_path / "runs" / "sft-1" / "checkpoints" / "step-1").is_dir()

    # the SFT LoRA initialises a GRPO policy through model.lora.path
    from safetensors.torch import load_file

    from psrl.models.config import LoraConfig, ModelConfig
    from psrl.models.factory import build_policy
    from psrl.models.lora import lora_state_dict

    saved = load_file(lora_dir / "pytorch_lora_weights.safetensors")
    policy = build_policy(ModelConfig(name="flux_kontext", path="tiny", max_sequence_length=16,
                                      lora=LoraConfig(rank=4, alpha=4.0, path=str(lora_dir)),
                                      args={"reference_long_side_single": 16, "reference_long_side_multi": 8}))
    state = {f"transformer.{k}": v for k, v in lora_state_dict(policy.transformer).items()}
    assert set(state) == set(saved) and all(torch.equal(state[k], saved[k]) for k in saved)
    assert any(v.abs().sum() > 0 for k, v in saved.items() if "lora_B" in k)   # SFT moved the zero-init B
    from psrl.sampling import SamplingConfig

    ro = policy.rollout(resolve_records(records[:1], tmp_path) * 2,
                        SamplingConfig(num_steps=2, height=16, width=16, noise_level=0.7),
                        torch.Generator().manual_seed(0))
    assert ro.images.shape == (2, 3, 16, 16)


@pytest.mark.component
def test_sft_rejects_records_without_targets(tmp_path):
    from psrl.rl.sft_trainer import SFTTrainer
    from psrl.rl.sft_config import load_sft_config

    write_records([Record(id="x", prompt="p", subjects=(SubjectRef(image="a.png", phrase="a"),))],
                  tmp_path / "train.jsonl")
    with pytest.raises(RecordError, match="'x': no 'target' image"):
        SFTTrainer(load_sft_config(_config(tmp_path)))
