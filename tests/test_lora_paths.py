"""One LoRA-path rule for every command (file, LoRA folder, checkpoint step-N, run folder), and `psrl lora combine`
refusing an RL LoRA with an SFT LoRA it was not trained on (recognised by content, not by file name)."""
import json
import shutil

import pytest
import torch
import yaml

from psrl.cli.main import main
from psrl.data.records import Record, write_records
from psrl.errors import ModelLoadError
from psrl.models.config import LoraConfig, ModelConfig
from psrl.models.flux import FluxPolicy
from psrl.models.lora import LORA_WEIGHT_NAME, lora_fingerprint, lora_parameters, resolve_lora_path
from psrl.models.lora_merge import fused_mismatch
from psrl.models.tiny import tiny_flux_components


def _policy(rank=4, alpha=4.0, fuse=()):
    return FluxPolicy(tiny_flux_components(), ModelConfig(lora=LoraConfig(rank=rank, alpha=alpha, targets="attn",
                                                                          fuse=list(fuse)), max_sequence_length=16))


def _perturb(policy, seed, std=0.5):
    g = torch.Generator().manual_seed(seed)
    for name, p in lora_parameters(policy.transformer):
        if "lora_B" in name:
            p.data.copy_(torch.randn(p.shape, generator=g) * std)
    return policy


def _checkpoint(run, step, *, lora=None, ema=None, state=True):
    d = run / "checkpoints" / f"step-{step}"
    d.mkdir(parents=True)
    if lora is not None:
        lora.save_lora(d / "lora")
    if ema is not None:
        ema.save_lora(d / "lora_ema")
    if state:
        (d / "state.json").write_text(json.dumps({"step": step}))
    return d


@pytest.mark.component
def test_every_form_of_a_lora_argument_resolves_by_one_rule(tmp_path, caplog):
    a, b = _perturb(_policy(), 0), _perturb(_policy(), 1)
    run = tmp_path / "runs" / "demo"
    one = _checkpoint(run, 1, lora=a, ema=b)       # an EMA was kept: its weights are what the run evaluated
    two = _checkpoint(run, 2, lora=a)              # no EMA
    _checkpoint(run, 3, lora=a, state=False)       # cut short before state.json (written last)
    _checkpoint(run, 4)                            # a prune left state.json without weights
    file = one / "lora" / LORA_WEIGHT_NAME
    assert resolve_lora_path(file) == file
    assert resolve_lora_path(one / "lora") == file
    assert resolve_lora_path(one) == one / "lora_ema" / LORA_WEIGHT_NAME
    assert resolve_lora_path(two) == two / "lora" / LORA_WEIGHT_NAME
    with caplog.at_level("WARNING"):
        assert resolve_lora_path(run) == two / "lora" / LORA_WEIGHT_NAME
    assert "step-4 (no LoRA weights)" in caplog.text and "step-3 (no state.json)" in caplog.text
    assert resolve_lora_path(run / "checkpoints") == two / "lora" / LORA_WEIGHT_NAME

    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_lora_path(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match=r"'.*empty' has no pytorch_lora_weights.safetensors.*run folder"):
        resolve_lora_path(tmp_path / "empty")
    broken = tmp_path / "runs" / "broken"
    _checkpoint(broken, 7)
    with pytest.raises(ModelLoadError, match="has no complete checkpoint"):
        resolve_lora_path(broken)
    # the same rule where a config names a LoRA: model.lora.path and model.lora.fuse take a run folder too
    loaded = FluxPolicy(tiny_flux_components(),
                        ModelConfig(lora=LoraConfig(rank=4, alpha=4.0, targets="attn", path=str(run)),
                                    max_sequence_length=16))
    assert all(torch.equal(p, dict(lora_parameters(a.transformer))[n])
               for n, p in lora_parameters(loaded.transformer))
    fused = _policy(rank=2, alpha=2.0, fuse=[str(run)])
    assert fused.transformer._psrl_fused_loras[0]["path"] == str((two / "lora" / LORA_WEIGHT_NAME).resolve())


def _write_cfg(path, **sampling):
    path.write_text(yaml.safe_dump({
        "model": {"name": "flux", "path": "tiny", "max_sequence_length": 16,
                  "lora": {"rank": 4, "alpha": 4.0, "targets": "attn"}},
        "sampling": {"num_steps": 2, "height": 16, "width": 16, **sampling},
        "train": {"device": "cpu"}, "rewards": [{"name": "mean_color"}], "data": {"records": ["a red dog"]},
        "eval": {"num_steps": 2}}))
    return path


@pytest.mark.e2e
def test_generate_and_bench_generate_take_the_same_lora_paths(tmp_path, capsys):
    """`psrl bench generate --lora runs/<run>/checkpoints/step-N` failed where `psrl generate --lora` worked; a
    combined LoRA (another rank than the config's adapter) loads in both."""
    import numpy as np
    from fixtures_bench import make_psrbench
    from PIL import Image

    from psrl.models.lora_merge import combine_lora_files

    cfg = _write_cfg(tmp_path / "cfg.yaml")
    run = tmp_path / "runs" / "rl"
    step = _checkpoint(run, 3, lora=_perturb(_policy(), 0), ema=_perturb(_policy(), 5))
    _perturb(_policy(rank=2, alpha=2.0), 2).save_lora(tmp_path / "other")
    combine_lora_files([step, tmp_path / "other"], tmp_path / "combined")
    records = tmp_path / "recs.jsonl"
    write_records([Record(id="a", prompt="a red dog"), Record(id="b", prompt="a blue car")], records)

    def gen(out, *lora, config=cfg):
        assert main(["generate", "--config", str(config), "--records", str(records), "--out", str(tmp_path / out),
                     *lora]) == 0
        return np.asarray(Image.open(tmp_path / out / "a.png"), dtype=np.int16)

    base, by_step, by_run = gen("base"), gen("step", "--lora", str(step)), gen("run", "--lora", str(run))
    by_file = gen("file", "--lora", str(step / "lora_ema" / LORA_WEIGHT_NAME))
    by_combined = gen("combined", "--lora", str(tmp_path / "combined"))  # rank 6, the config says 4
    assert np.array_equal(by_step, by_file) and np.array_equal(by_run, by_file)
    assert np.abs(by_step - base).max() > 0 and np.abs(by_combined - by_step).max() > 0
    # a base model's config (model.lora: null) takes a LoRA too: it raised TypeError from dataclasses.replace
    no_lora = yaml.safe_load(cfg.read_text())
    no_lora["model"]["lora"] = None
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(no_lora))
    assert np.array_equal(gen("nolora", "--lora", str(step), config=tmp_path / "base.yaml"), by_step)

    root = make_psrbench(tmp_path / "bench", per_subset=1, bad=False)
    for i, lora in enumerate([step, run, tmp_path / "combined"]):
        out = tmp_path / f"bench_out{i}"
        assert main(["bench", "generate", "--config", str(cfg), "--data-root", str(root), "--out", str(out),
                     "--subsets", "Action", "--lora", str(lora)]) == 0
        manifest = json.loads((out / "bench.json").read_text())
        assert manifest["lora"] == str(resolve_lora_path(lora).resolve())
        assert (out / "seed0" / "Action" / "0.png").is_file()
    capsys.readouterr()
    assert main(["bench", "generate", "--config", str(cfg), "--data-root", str(root), "--out", str(tmp_path / "x"),
                 "--lora", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.unit
def test_fused_mismatch_rule():
    sft, sft2, other = ({"path": f"/r/{n}", "scale": 1.0, "sha256": n * 4} for n in ("s", "t", "o"))
    rl = {"path": "/r/rl", "scale": 1.0, "sha256": "rlrl"}
    rl2 = {"path": "/r/rl2", "scale": 1.0, "sha256": "rl2r"}
    assert fused_mismatch([sft, rl], [[], [sft]]) is None                    # SFT + the RL LoRA trained on it
    assert fused_mismatch([rl, rl2], [[sft], [sft]]) is None                 # two RL LoRAs on one SFT base
    assert fused_mismatch([other, sft], [[], []]) is None                    # plain LoRAs
    assert "/r/s (scale 1) fused" in fused_mismatch([sft2, rl], [[], [sft]])  # another SFT LoRA
    assert fused_mismatch([other, rl], [[], [sft]]) is not None               # an unrelated LoRA
    assert fused_mismatch([dict(sft, scale=0.5), rl], [[], [sft]]) is not None  # the SFT at another scale
    moved = dict(sft, path="/elsewhere/s")                                   # same content, other path
    assert fused_mismatch([moved, rl], [[], [sft]]) is None
    old = {"path": "/r/s", "scale": 1.0}                                     # recorded before fingerprints
    assert fused_mismatch([sft, rl], [[], [old]]) is None


@pytest.mark.e2e
def test_combine_refuses_an_sft_lora_the_rl_lora_was_not_trained_on(tmp_path, capsys):
    sft = _perturb(_policy(rank=8, alpha=8.0), 0)
    sft.save_lora(tmp_path / "sft")
    rl = _perturb(_policy(fuse=[str(tmp_path / "sft")]), 1)
    rl.save_lora(tmp_path / "rl")
    recorded = rl.transformer._psrl_fused_loras[0]
    assert recorded["sha256"] == lora_fingerprint(tmp_path / "sft" / LORA_WEIGHT_NAME)
    _perturb(_policy(rank=8, alpha=8.0), 9).save_lora(tmp_path / "sft2")

    capsys.readouterr()
    assert main(["lora", "combine", str(tmp_path / "sft2"), str(tmp_path / "rl"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: refusing to combine")
    assert recorded["path"] in err and "--force" in err and not (tmp_path / "x").exists()

    # recognised by content: the SFT LoRA copied elsewhere still combines; the same path with other weights does not
    shutil.copytree(tmp_path / "sft", tmp_path / "moved_sft")
    assert main(["lora", "combine", str(tmp_path / "moved_sft"), str(tmp_path / "rl"), "--out",
                 str(tmp_path / "ok")]) == 0
    shutil.copy(tmp_path / "sft2" / LORA_WEIGHT_NAME, tmp_path / "sft" / LORA_WEIGHT_NAME)
    assert main(["lora", "combine", str(tmp_path / "sft"), str(tmp_path / "rl"), "--out", str(tmp_path / "y")]) == 2
    assert main(["lora", "combine", str(tmp_path / "sft"), str(tmp_path / "rl"), "--out", str(tmp_path / "y"),
                 "--force"]) == 0
    from psrl.models.lora import FUSED_METADATA_KEY, read_lora_file

    # forced: the output keeps the record of the base it still needs (the original SFT weights)
    assert [e["sha256"] for e in read_lora_file(tmp_path / "y")[2][FUSED_METADATA_KEY]] == [recorded["sha256"]]
