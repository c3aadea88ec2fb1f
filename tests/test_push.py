"""``psrl push`` against a local fake Hub endpoint (tests/hub_fake.py): the uploaded files, the model card's content
(read back with huggingface_hub's own parser), the combined SFT+RL LoRA (loaded by diffusers), the private flag, the
token only ever in the Authorization header, one-line refusals; and the CLI end to end after training on Flow-GRPO
prompts fetched with ``data.records: hf://...``."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import hub_fake
from hub_fake import USER, FakeHub, go_offline
from psrl.config import dump_yaml
from psrl.errors import PsrlError
from psrl.model_card import RunSummary, SampleImage, redact, render_model_card
from psrl.models.config import LoraConfig, ModelConfig
from psrl.models.flux import FluxPolicy
from psrl.models.lora import LORA_WEIGHT_NAME, lora_parameters, read_lora_file
from psrl.models.tiny import tiny_flux_components
from psrl.images import save_image
from psrl.rl.tracking import image_grid

TINY = str(Path(__file__).resolve().parents[1] / "configs" / "tiny_flux.yaml")  # the tiny random FLUX run

SECRET = "sk-do-not-leak-1234"
fake_hub = hub_fake.fake_hub  # the fixture


# ---------------------------------------------------------------------------------------------------------- helpers
def _perturbed_policy(seed, *, rank=4, alpha=4.0, fuse=()):
    lora = LoraConfig(rank=rank, alpha=alpha, targets="attn", fuse=list(fuse))
    policy = FluxPolicy(tiny_flux_components(), ModelConfig(lora=lora, max_sequence_length=16))
    g = torch.Generator().manual_seed(seed)
    for name, p in lora_parameters(policy.transformer):
        if "lora_B" in name:
            p.data.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return policy


def _make_run(root: Path, *, fuse=(), name="demo", ema=False) -> Path:
    """A finished run folder as the trainer leaves it: config.yaml, env.json, metrics.jsonl, samples/ and one
    complete checkpoint (LoRA + state.json listing its files)."""
    from psrl.rl.run_config import load_run_config

    cfg = load_run_config(None, [f"run.output_dir={root}", f"run.name={name}", "train.max_steps=3",
                                 f"rewards.0.args.api_key={SECRET}", "rewards.0.args.api_key_env=MY_KEY_VAR"])
    run = root / name
    (run / "samples").mkdir(parents=True)
    dump_yaml(cfg, run / "config.yaml")
    (run / "env.json").write_text(json.dumps({"psrl": "0.1.0", "model": {"path": "tiny", "revision": None,
                                                                          "variant": None, "commit": None}}))
    rows = [{"step": 1, "reward/total/mean": 0.40, "reward/total/std": 0.05, "eval/mean_color/mean": 0.41},
            {"step": 2, "reward/total/mean": 0.45, "reward/total/std": 0.04},
            {"step": 3, "reward/total/mean": 0.52, "reward/total/std": 0.03, "eval/mean_color/mean": None}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for step in (1, 3):
        save_image(image_grid(torch.rand(2, 3, 16, 16)), run / "samples" / f"step-{step}.png")
    save_image(torch.rand(3, 16, 32), run / "samples" / "before_after.png")
    ckpt = run / "checkpoints" / "step-3"
    policy = _perturbed_policy(1, fuse=fuse)
    lora_dir = "lora_ema" if ema else "lora"
    policy.save_lora(ckpt / lora_dir)
    rel = f"{lora_dir}/{LORA_WEIGHT_NAME}"
    (ckpt / "state.json").write_text(json.dumps({"step": 3, "files": {rel: (ckpt / rel).stat().st_size}}))
    return run


def _summary(**kw) -> RunSummary:
    config = {"model": {"name": "flux", "path": "black-forest-labs/FLUX.1-dev", "lora": {"rank": 64, "alpha": 128,
                                                                                         "targets": "attn"}},
              "train": {"max_steps": 300, "groups_per_step": 48, "group_size": 24, "lr": 3e-4, "clip_range": 1e-4,
                        "beta": 0.004, "seed": 42, "loss": "ppo"},
              "sampling": {"num_steps": 10, "height": 512, "width": 512, "noise_level": 0.9, "sde_kind": "sde",
                           "train_steps": "all_but_last"},
              "advantage": {"mode": "weighted"},
              "rewards": [{"name": "pickscore", "weight": 1.0, "args": {}}],
              "data": {"records": "hf://org/prompts/train.txt"},
              "eval": {"records": ["a red cube on a blue sphere"]}}
    base = dict(name="flux_pick", kind="grpo", config=config, step=300, ema=True,
                metrics=[{"step": 100, "reward/total/mean": 0.2, "eval/pickscore/mean": 0.21},
                         {"step": 300, "reward/total/mean": 0.3, "eval/pickscore/mean": None}],
                model={"path": "black-forest-labs/FLUX.1-dev", "revision": "main", "variant": None,
                       "commit": "a" * 40},
                psrl_version="0.1.0", images=[SampleImage("images/step-300.png", "step 300: a red cube")])
    base.update(kw)
    return RunSummary(**base)


def _card_meta(text: str) -> dict:
    from huggingface_hub import ModelCard

    return ModelCard(text).data.to_dict()


# ---------------------------------------------------------------------------------------------------------- unit
@pytest.mark.unit
def test_redact_hides_secret_values_but_keeps_where_they_live():
    cfg = {"rewards": [{"name": "remote", "args": {"api_key": SECRET, "api_key_env": "K", "api_key_file": "/k",
                                                   "url": "http://x"}}], "hub_token": "t", "n": 3}
    out = redact(cfg)
    assert out["rewards"][0]["args"] == {"api_key": "***", "api_key_env": "K", "api_key_file": "/k",
                                         "url": "http://x"}
    assert out["hub_token"] == "***" and out["n"] == 3 and SECRET not in json.dumps(out)


@pytest.mark.unit
def test_model_card_has_the_diffusers_lora_metadata_snippet_recipe_and_metrics():
    text = render_model_card(_summary(), "me/flux-pick", license="other")
    meta = _card_meta(text)  # huggingface_hub's own parser reads the metadata back
    assert meta["base_model"] == "black-forest-labs/FLUX.1-dev" and meta["base_model_relation"] == "adapter"
    assert meta["library_name"] == "diffusers" and meta["pipeline_tag"] == "text-to-image"
    assert meta["license"] == "other" and meta["datasets"] == ["org/prompts"]
    assert {"lora", "template:sd-lora", "diffusers", "text-to-image", "flux", "grpo", "flow-grpo"} <= set(meta["tags"])
    assert meta["widget"] == [{"text": "step 300: a red cube", "output": {"url": "images/step-300.png"}}]
    assert "<Gallery />" in text and "## Trigger words" in text and "No trigger word" in text
    snippet = "FluxPipeline" + '.from_pretrained("black-forest-labs/FLUX.1-dev", revision="' + "a" * 40
    assert snippet in text  # the card's usage snippet (text only; nothing is loaded)
    assert 'pipeline.load_lora_weights("me/flux-pick", weight_name="pytorch_lora_weights.safetensors")' in text
    assert 'image = pipeline("a red cube on a blue sphere").images[0]' in text
    assert "| steps | 300 of 300 |" in text and "| images per step | 48 groups x 24 |" in text
    assert "| `pickscore` | 1 | `{}` |" in text and "arXiv 2505.05470" in text
    assert "| 100 | 0.21 |" in text and "| 300 | n/a |" in text  # an unscorable eval is n/a, never 0
    assert "`reward/total/mean`: 0.2 at step 100 -> 0.3 at step 300" in text
    assert "step 300, EMA LoRA weights" in text


@pytest.mark.unit
def test_model_card_for_an_editing_model_with_a_fused_sft_stage():
    s = _summary(config={**_summary().config, "model": {"name": "flux_kontext", "path": "/models/kontext"}},
                 model={}, fused=[{"path": "/runs/sft/lora.safetensors", "scale": 1.0}],
                 stage_weight_name="rl_stage_lora.safetensors", metrics=[])
    text = render_model_card(s, "me/psr")
    meta = _card_meta(text)
    assert "base_model" not in meta and meta["pipeline_tag"] == "image-to-image"  # a local base is no Hub id
    assert "FluxKontextPipeline" in text and 'image=load_image("subject.png")' in text
    assert "`/runs/sft/lora.safetensors` (scale 1)" in text and "`rl_stage_lora.safetensors`" in text
    assert "No evaluation ran" in text and "psrl generate" in text


@pytest.mark.unit
def test_model_card_of_an_sft_run_states_its_recipe_and_loss():
    config = {"model": {"name": "flux_kontext", "path": "black-forest-labs/FLUX.1-Kontext-dev",
                        "lora": {"rank": 512, "alpha": 512, "targets": "attn_ff"}},
              "sft": {"max_steps": 1000, "batch_size": 2, "gradient_accumulation": 4, "lr": 1e-4, "height": 512,
                      "width": 512, "seed": 0},
              "data": {"records": "data/psr/train.jsonl"}}
    s = _summary(kind="sft", config=config, step=1000, ema=False, images=[],
                 metrics=[{"step": 1, "loss": 0.9}, {"step": 1000, "loss": 0.31}])
    text = render_model_card(s, "me/psr-sft")
    meta = _card_meta(text)
    assert "sft" in meta["tags"] and "flow-grpo" not in meta["tags"] and meta["pipeline_tag"] == "image-to-image"
    assert "PSR stage 1, arXiv 2512.01236" in text and "| batch size x accumulation | 2 x 4 |" in text
    assert "| training records | data/psr/train.jsonl |" in text and "`psrl sft --config psrl_config.yaml`" in text
    assert "`loss`: 0.9 at step 1 -> 0.31 at step 1000" in text and "No evaluation ran" in text


# ---------------------------------------------------------------------------------------------------------- push
@pytest.mark.component
def test_push_uploads_the_lora_card_config_metrics_and_images(tmp_path, fake_hub):
    from psrl.push import push_run

    run = _make_run(tmp_path / "runs")
    repo_id, url, files = push_run(run, "demo-lora", private=True, license="apache-2.0")
    assert repo_id == f"{USER}/demo-lora" and url.startswith(fake_hub.url) and "/commit/" in url
    repo = fake_hub.repos[("model", repo_id)]
    assert repo.private
    uploaded = repo.files("main")[1]
    assert sorted(set(uploaded) - {".gitattributes"}) == sorted(files) == [
        "README.md", "images/before_after.png", "images/step-1.png", "images/step-3.png", "metrics.jsonl",
        "psrl_config.yaml", "pytorch_lora_weights.safetensors"]
    lora = run / "checkpoints" / "step-3" / "lora" / LORA_WEIGHT_NAME
    assert uploaded["pytorch_lora_weights.safetensors"] == lora.read_bytes()
    assert uploaded["images/step-3.png"] == (run / "samples" / "step-3.png").read_bytes()
    assert uploaded["metrics.jsonl"] == (run / "metrics.jsonl").read_bytes()
    config = yaml.safe_load(uploaded["psrl_config.yaml"])
    assert config["rewards"][0]["args"] == {"target": [0.0, 0.0, 1.0], "api_key": "***", "api_key_env": "MY_KEY_VAR"}

    card = uploaded["README.md"].decode()
    meta = _card_meta(card)
    assert meta["license"] == "apache-2.0" and "template:sd-lora" in meta["tags"] and "base_model" not in meta
    assert [w["output"]["url"] for w in meta["widget"]] == ["images/before_after.png", "images/step-1.png",
                                                           "images/step-3.png"]
    assert meta["widget"][2]["text"] == "step 3: a blue sky | the deep sea"
    assert f'pipeline.load_lora_weights("{repo_id}"' in card  # the snippet names the repository as created
    assert "| steps | 3 of 3 |" in card and "| 1 | 0.41 |" in card and "| 3 | n/a |" in card
    assert "0.4 +- 0.05 at step 1 -> 0.52 +- 0.03 at step 3" in card and "`mean_color`" in card

    commits = [r for r in fake_hub.requests if "/commit/" in r["path"]]
    assert len(commits) == 1 and commits[0]["auth"]
    assert b"psrl: GRPO LoRA of run demo, step 3" in commits[0]["body"]
    for r in fake_hub.requests:  # the token travels in the Authorization header and nowhere else
        assert fake_hub.token.encode() not in r["body"] and fake_hub.token not in r["path"]
        assert all(fake_hub.token not in v for k, v in r["headers"].items() if k.lower() != "authorization")
    assert SECRET.encode() not in b"".join(uploaded.values())

    # the round trip: what was pushed downloads again through huggingface_hub
    from huggingface_hub import hf_hub_download

    back = hf_hub_download(repo_id, "README.md")
    assert Path(back).read_text() == card


@pytest.mark.component
def test_a_run_on_a_fused_sft_lora_is_pushed_as_one_combined_lora_diffusers_loads(tmp_path, fake_hub):
    from diffusers import FluxPipeline

    from psrl.models.lora_merge import file_scale, lora_delta
    from psrl.push import push_run

    sft = _perturbed_policy(7, rank=8, alpha=8.0)
    sft.save_lora(tmp_path / "sft")
    run = _make_run(tmp_path / "runs", fuse=[str(tmp_path / "sft")], ema=True)
    repo_id, _, files = push_run(run, "me/psr")
    assert {"pytorch_lora_weights.safetensors", "rl_stage_lora.safetensors"} <= set(files)
    uploaded = fake_hub.repos[("model", repo_id)].files("main")[1]
    rl_file = run / "checkpoints" / "step-3" / "lora_ema" / LORA_WEIGHT_NAME
    assert uploaded["rl_stage_lora.safetensors"] == rl_file.read_bytes()
    (tmp_path / "got").mkdir()
    combined = tmp_path / "got" / LORA_WEIGHT_NAME
    combined.write_bytes(uploaded["pytorch_lora_weights.safetensors"])

    # the combined update is the SFT update plus the RL update, layer by layer
    parts = [read_lora_file(p) for p in (tmp_path / "sft", rl_file, combined)]
    layer = "transformer.transformer_blocks.0.attn.to_q"

    def delta(file, tensors, meta):
        a, b = tensors[f"{layer}.lora_A.weight"], tensors[f"{layer}.lora_B.weight"]
        return lora_delta(a, b, file_scale(meta, "transformer", file, a.shape[0]))

    assert parts[2][1][f"{layer}.lora_A.weight"].shape[0] == 12  # ranks 8 + 4 stacked
    assert torch.allclose(delta(*parts[2]), delta(*parts[0]) + delta(*parts[1]), atol=1e-6)
    pipe = FluxPipeline(**tiny_flux_components())
    pipe.load_lora_weights(str(tmp_path / "got"))  # the peer: diffusers reads the pushed file
    assert any("lora_A" in n for n, _ in pipe.transformer.named_parameters())
    card = uploaded["README.md"].decode()
    assert "`rl_stage_lora.safetensors` is the trained stage alone" in card and "step 3, EMA LoRA weights" in card

    # the SFT file moved: a clear error, and --fused-lora points at the copy (recognised by content)
    (tmp_path / "sft").rename(tmp_path / "sft_moved")
    with pytest.raises(PsrlError, match="fused into its base, which is gone; pass --fused-lora"):
        push_run(run, "me/psr")
    push_run(run, "me/psr", fused_loras=[str(tmp_path / "sft_moved")])
    with pytest.raises(PsrlError, match="--fused-lora given 2 time"):
        push_run(run, "me/psr", fused_loras=["a", "b"])


@pytest.mark.component
def test_push_refuses_early_with_one_line(tmp_path, fake_hub, monkeypatch):
    from psrl.push import push_run

    run = _make_run(tmp_path / "runs")
    with pytest.raises(PsrlError, match="not a psrl run folder"):
        push_run(tmp_path, "me/x")
    with pytest.raises(PsrlError, match="not a valid Hub repository id"):
        push_run(run, "me/bad id")
    monkeypatch.delenv("HF_TOKEN")  # and no stored login either
    monkeypatch.setattr("huggingface_hub.constants.HF_TOKEN_PATH", str(tmp_path / "empty_home" / "token"))
    monkeypatch.setattr("huggingface_hub.constants.HF_STORED_TOKENS_PATH", str(tmp_path / "empty_home" / "tokens"))
    with pytest.raises(PsrlError, match=r"no Hugging Face token; run `hf auth login` or set HF_TOKEN"):
        push_run(run, "me/x")
    go_offline(monkeypatch)
    monkeypatch.setenv("HF_TOKEN", fake_hub.token)
    with pytest.raises(PsrlError, match="the Hub is offline"):
        push_run(run, "me/x")
    assert not fake_hub.repos  # nothing was created


# ---------------------------------------------------------------------------------------------------------- e2e


def _psrl(*args, cwd, env):
    return subprocess.run([sys.executable, "-m", "psrl", *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=300)


@pytest.mark.e2e
def test_train_on_hub_prompts_then_push_from_the_cli(tmp_path, monkeypatch, capsys):
    from psrl.cli.main import main

    src = str(Path(__file__).resolve().parents[1] / "src")
    with FakeHub() as hub:
        hub.add_repo("dataset", "org/flowgrpo-prompts", {"train.txt": b"a blue sky\na blue car\nthe deep sea\n"
                                                                      b"a bowl of blueberries\n"})
        env = dict(os.environ, HF_ENDPOINT=hub.url, HF_TOKEN=hub.token, HF_HOME=str(tmp_path / "hf"),
                   HF_HUB_OFFLINE="0", TRANSFORMERS_OFFLINE="0", OMP_NUM_THREADS="1",
                   PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", ""))
        out = _psrl("train", "--config", TINY, "--set", f"run.output_dir={tmp_path}", "--set", "run.name=hubrun",
                    "--set", "train.max_steps=2", "--set", "eval.every=1", "--set",
                    "data.records=hf://org/flowgrpo-prompts/train.txt", cwd=tmp_path, env=env)
        assert out.returncode == 0, out.stderr[-3000:]
        run = tmp_path / "hubrun"

        pushed = _psrl("push", str(run), "--repo-id", "tiny-grpo", "--private", cwd=tmp_path, env=env)
        assert pushed.returncode == 0, pushed.stderr[-3000:]
        # 7: the run's six files as before plus the before/after image psrl train now writes
        assert f"pushed 7 files to {USER}/tiny-grpo" in pushed.stdout and "commit: " in pushed.stdout
        assert "images/before_after.png" in pushed.stdout
        assert hub.token not in pushed.stdout + pushed.stderr
        repo = hub.repos[("model", f"{USER}/tiny-grpo")]
        files = repo.files("main")[1]
        assert repo.private and files["pytorch_lora_weights.safetensors"] == \
            (run / "checkpoints" / "step-2" / "lora" / LORA_WEIGHT_NAME).read_bytes()
        card = files["README.md"].decode()
        assert "| 1 |" in card and "| 2 |" in card and "images/step-2.png" in card
        assert "hf://org/flowgrpo-prompts/train.txt" in card
        assert _card_meta(card)["datasets"] == ["org/flowgrpo-prompts"]

    # the folder alone needs no token and no Hub; an upload while offline (as this process is) is refused in one
    # line with exit 2
    monkeypatch.delenv("HF_TOKEN", raising=False)
    assert main(["push", str(run), "--repo-id", "me/tiny", "--out", str(tmp_path / "folder")]) == 0
    assert (tmp_path / "folder" / "README.md").read_text().startswith("---\n")
    assert main(["push", str(run), "--repo-id", "me/tiny", "--out", str(tmp_path / "folder")]) == 2
    assert main(["push", str(run), "--repo-id", "me/ti ny", "--out", str(tmp_path / "folder2")]) == 2
    assert main(["push", str(run), "--repo-id", "me/x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-3].startswith("error: --out") and "not an empty folder" in err[-3]
    assert err[-2].startswith("error: --repo-id: 'me/ti ny' is not a valid Hub repository id")
    assert err[-1].startswith("error: cannot push to me/x: the Hub is offline (HF_HUB_OFFLINE is set)")


@pytest.mark.component
def test_run_push_to_hub_uploads_when_training_finishes(tmp_path, fake_hub):
    from psrl.cli.main import main

    args = [f"run.output_dir={tmp_path}", "run.name=pushed", "train.max_steps=1", "train.groups_per_step=2",
            "train.group_size=2", "train.sample_batch_size=4", "train.train_batch_size=4", "sampling.num_steps=2",
            "eval.every=0", "run.push_to_hub=true", "run.hub_model_id=auto-push", "run.hub_private_repo=true"]
    assert main(["train", "--config", TINY, *[x for a in args for x in ("--set", a)]]) == 0
    repo = fake_hub.repos[("model", f"{USER}/auto-push")]
    assert repo.private and "pytorch_lora_weights.safetensors" in repo.files("main")[1]
    env = json.loads((tmp_path / "pushed" / "env.json").read_text())
    assert env["model"] == {"path": "tiny", "revision": None, "variant": None, "commit": None}


@pytest.mark.component
def test_push_to_hub_without_a_token_fails_before_the_run_folder(tmp_path, fake_hub, monkeypatch):
    from psrl.config import ConfigError
    from psrl.rl.grpo_trainer import GRPOTrainer
    from psrl.rl.run_config import load_run_config

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    cfg = load_run_config(None, [f"run.output_dir={tmp_path}/runs", "run.push_to_hub=true",
                                 "run.hub_model_id=x/y"])
    with pytest.raises(ConfigError, match="run.push_to_hub"):
        GRPOTrainer(cfg)
    assert not (tmp_path / "runs").exists()
