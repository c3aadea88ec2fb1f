"""The Hub round trip, offline: ``psrl push`` (files, model card, private flag, token handling) against a local fake
Hub endpoint (tests/hub_fake.py), ``hf://`` records and folders fetched from it (cached per commit, then read with
the Hub offline), Flow-GRPO ``.txt`` prompt files as records, and ``model.revision`` / ``model.variant`` loading
from a Hub cache laid out on disk, with the resolved commit recorded."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from hub_fake import USER, FakeHub
from psrl.config import ConfigError, dump_yaml, from_dict
from psrl.data.records import RecordError, read_records, resolve_under
from psrl.errors import ModelLoadError, PsrlError
from psrl.hub import HubError, HubPath, parse_hf_uri, referenced_files
from psrl.model_card import RunSummary, SampleImage, redact, render_model_card
from psrl.models.config import LoraConfig, ModelConfig
from psrl.models.flux import FluxPolicy
from psrl.models.lora import LORA_WEIGHT_NAME, lora_parameters, read_lora_file
from psrl.models.tiny import tiny_flux_components
from psrl.rl.tracking import image_grid, save_image

SECRET = "sk-do-not-leak-1234"


# ---------------------------------------------------------------------------------------------------------- helpers
@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """huggingface_hub pointed at a FakeHub on 127.0.0.1, online, with a token and a private HF_HOME."""
    from huggingface_hub import constants

    with FakeHub() as hub:
        monkeypatch.setattr(constants, "ENDPOINT", hub.url)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                            hub.url + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_HOME", str(tmp_path / "hf"))
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("HF_TOKEN", hub.token)
        yield hub


def _go_offline(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _perturbed_policy(seed, *, rank=4, alpha=4.0, fuse=()):
    policy = FluxPolicy(tiny_flux_components(), lora=LoraConfig(rank=rank, alpha=alpha, targets="attn",
                                                                fuse=list(fuse)), max_sequence_length=16)
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
def test_hf_paths_parse_like_hffilesystem_and_bad_ones_are_one_line_errors():
    assert parse_hf_uri("hf://org/ds") == HubPath("org/ds")
    assert parse_hf_uri("hf://datasets/org/ds@v1.0/data/train.jsonl") == HubPath("org/ds", "data/train.jsonl",
                                                                                   "v1.0")
    assert parse_hf_uri("hf://google/dreambooth/dataset/") == HubPath("google/dreambooth", "dataset")
    assert str(parse_hf_uri("hf://org/ds@abc/x.txt")) == "hf://org/ds@abc/x.txt"
    for bad, why in [("hf://org", "expected"), ("hf://org/ds/../x", r"'\.\.'"), ("hf://org/ds@/x", "empty revision"),
                     ("hf://org/d s/x", "not a valid Hub repository id"), ("org/ds", "not an hf:// path")]:
        with pytest.raises(HubError, match=why) as e:
            parse_hf_uri(bad)
        assert "\n" not in str(e.value)


@pytest.mark.unit
def test_referenced_files_are_the_records_images_relative_to_the_records_folder():
    text = "\n".join([
        json.dumps({"id": "a", "prompt": "p", "subjects": [{"image": "img/dog.png", "phrase": "dog"},
                                                           {"image": "./img/../img/cat.png", "phrase": "cat"}],
                    "target": "targets/a.png"}),
        json.dumps({"id": "b", "prompt": "p", "subjects": [{"image": "img/dog.png", "phrase": "dog"}]}),
        json.dumps({"id": "c", "prompt": "p", "subjects": [{"image": "/etc/passwd", "phrase": "x"},
                                                           {"image": "../../outside.png", "phrase": "y"}]}),
        "not json", json.dumps(["a list"])])
    assert referenced_files(text, "data") == ["data/img/dog.png", "data/img/cat.png", "data/targets/a.png"]
    assert referenced_files(text, "") == ["img/dog.png", "img/cat.png", "targets/a.png"]


@pytest.mark.unit
def test_flow_grpo_prompt_files_are_records_with_line_number_ids(tmp_path):
    f = tmp_path / "train.txt"
    f.write_bytes("\ufeffa photo of a cat\n\n  a red cube on a blue sphere  \r\nan \"OPEN\" sign\n".encode())
    records = read_records(str(f))
    assert [(r.id, r.prompt) for r in records] == [("line-1", "a photo of a cat"),
                                                   ("line-3", "a red cube on a blue sphere"),
                                                   ("line-4", 'an "OPEN" sign')]
    assert all(r.subjects == () for r in records)
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(RecordError, match="no prompts"):
        read_records(tmp_path / "empty.txt")
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9\n")
    with pytest.raises(RecordError, match="not UTF-8"):
        read_records(tmp_path / "latin1.txt")


@pytest.mark.unit
def test_revision_and_variant_are_config_keys_refused_for_tiny():
    cfg = from_dict(ModelConfig, {"path": "black-forest-labs/FLUX.1-dev", "revision": "main", "variant": "fp16"})
    assert (cfg.revision, cfg.variant) == ("main", "fp16")
    with pytest.raises(ConfigError, match=r"model.revision='abc'.*'tiny'"):
        from_dict(ModelConfig, {"path": "tiny", "revision": "abc"})
    with pytest.raises(ConfigError, match="model.variant must be a non-empty string"):
        from_dict(ModelConfig, {"path": "org/m", "variant": " "})


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
    assert 'FluxPipeline.from_pretrained("black-forest-labs/FLUX.1-dev", revision="' + "a" * 40 in text
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


# ---------------------------------------------------------------------------------------------------------- records
@pytest.mark.component
def test_hf_records_are_fetched_with_their_images_pinned_and_read_offline(fake_hub, monkeypatch):
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(buf, format="PNG")
    records = "".join(json.dumps(r) + "\n" for r in [
        {"id": "a", "prompt": "a dog on a beach", "subjects": [{"image": "img/dog.png", "phrase": "dog"}]},
        {"id": "b", "prompt": "a cat", "subjects": [{"image": "img/missing.png", "phrase": "cat"}]}])
    first = fake_hub.add_repo("dataset", "org/psr-data", {"data/records.jsonl": records.encode(),
                                                         "data/img/dog.png": buf.getvalue(),
                                                         "prompts/train.txt": b"a blue sky\n\nthe deep sea\n"})
    recs = read_records("hf://org/psr-data/data/records.jsonl")
    assert [r.id for r in recs] == ["a", "b"]
    from psrl.hub import hub_records_file

    local = hub_records_file("hf://org/psr-data/data/records.jsonl")
    image = resolve_under(local.parent, recs[0].subjects[0].image)  # a real file inside its data root
    assert image.is_file() and not image.is_symlink() and image.read_bytes() == buf.getvalue()
    assert first in str(local)  # one folder per commit
    assert not (local.parent / "img" / "missing.png").exists()  # left for the record check to name

    txt = read_records("hf://datasets/org/psr-data/prompts/train.txt")
    assert [(r.id, r.prompt) for r in txt] == [("line-1", "a blue sky"), ("line-3", "the deep sea")]
    assert [r.id for r in read_records("hf://org/psr-data")] == ["a", "b"]  # its one .jsonl

    # a new commit on main: the old one stays reachable by its id, main moves on
    fake_hub.add_repo("dataset", "org/psr-data", {"data/records.jsonl": b'{"id": "new", "prompt": "x"}\n'})
    assert [r.id for r in read_records(f"hf://org/psr-data@{first}/data/records.jsonl")] == ["a", "b"]

    # offline: what was fetched is read from the cache without a request; anything else is one clear line
    _go_offline(monkeypatch)
    seen = len(fake_hub.requests)
    assert [r.id for r in read_records(f"hf://org/psr-data@{first}/data/records.jsonl")] == ["a", "b"]
    assert len(fake_hub.requests) == seen
    with pytest.raises(RecordError, match=r"hf://org/other/r.jsonl: .*offline \(HF_HUB_OFFLINE is set\)") as e:
        read_records("hf://org/other/r.jsonl")
    assert "\n" not in str(e.value)


@pytest.mark.component
def test_hf_records_errors_name_the_path(fake_hub):
    fake_hub.add_repo("dataset", "org/two", {"a.jsonl": b'{"id": "a", "prompt": "x"}\n',
                                             "b.jsonl": b'{"id": "b", "prompt": "y"}\n', "img.png": b"x"})
    cases = [("hf://org/nope/r.jsonl", "no dataset repository 'org/nope'"),
             ("hf://org/two/c.jsonl", "has no file 'c.jsonl'"),
             ("hf://org/two@v9/a.jsonl", "has no revision 'v9'"),
             ("hf://org/two", r"has 2 .jsonl files \(a.jsonl, b.jsonl\); name one"),
             ("hf://org/two/img.png", "is not a records file")]
    for uri, why in cases:
        with pytest.raises(RecordError, match=why) as e:
            read_records(uri)
        assert "\n" not in str(e.value) and uri.split("@")[0] in str(e.value)


@pytest.mark.component
def test_hf_folder_for_a_benchmark_data_root(fake_hub):
    from psrl.hub import hub_folder

    fake_hub.add_repo("dataset", "google/dreambooth", {"dataset/dog/00.jpg": b"j0", "dataset/dog/01.jpg": b"j1",
                                                       "dataset/cat/00.jpg": b"c0", "README.md": b"# db"})
    root = hub_folder("hf://google/dreambooth/dataset")
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg")) == \
        ["cat/00.jpg", "dog/00.jpg", "dog/01.jpg"]
    assert not (root.parent / "README.md").exists()  # only the folder asked for
    with pytest.raises(HubError, match="no files under 'nothing'"):
        hub_folder("hf://google/dreambooth/nothing")


# ---------------------------------------------------------------------------------------------------------- models
def _fake_model_cache(cache: Path) -> tuple[str, str]:
    """A Hub cache holding ``org/tiny-flux`` at two commits: ``main`` -> c1, tag ``v2`` -> c2 (other weights)."""
    repo = cache / "models--org--tiny-flux"
    c1, c2 = "1" * 40, "2" * 40
    for commit, seed in ((c1, 0), (c2, 1)):
        comps = tiny_flux_components(seed=seed)
        comps["transformer"].save_pretrained(repo / "snapshots" / commit / "transformer")
        comps["scheduler"].save_pretrained(repo / "snapshots" / commit / "scheduler")
        (repo / "snapshots" / commit / "model_index.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(c1)
    (repo / "refs" / "v2").write_text(c2)
    return c1, c2


@pytest.mark.component
def test_revision_pins_the_weights_and_the_commit_is_recorded(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from psrl.models.loading import load_components, model_source

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    _go_offline(monkeypatch)
    c1, c2 = _fake_model_cache(tmp_path / "hub")
    spec = {"transformer": ("diffusers", "FluxTransformer2DModel"),
            "scheduler": ("diffusers", "FlowMatchEulerDiscreteScheduler")}

    def first_weight(components):
        return next(components["transformer"].parameters()).detach().flatten()[:4]

    main = first_weight(load_components("org/tiny-flux", spec))
    tagged = first_weight(load_components("org/tiny-flux", spec, revision="v2"))
    pinned = first_weight(load_components("org/tiny-flux", spec, revision=c2))
    expected = next(tiny_flux_components(seed=1)["transformer"].parameters()).detach().flatten()[:4]
    assert torch.equal(tagged, expected) and torch.equal(pinned, expected) and not torch.equal(main, expected)
    assert model_source(ModelConfig(path="org/tiny-flux", revision="v2"))["commit"] == c2
    assert model_source(ModelConfig(path="org/tiny-flux"))["commit"] == c1
    assert model_source(ModelConfig(path="tiny")) == {"path": "tiny", "revision": None, "variant": None,
                                                      "commit": None}
    snapshot = tmp_path / "hub" / "models--org--tiny-flux" / "snapshots" / c2
    assert model_source(ModelConfig(path=str(snapshot)))["commit"] == c2  # a snapshot folder knows its commit
    with pytest.raises(ModelLoadError, match=r"at revision 'v3'.*offline"):
        load_components("org/tiny-flux", spec, revision="v3")
    with pytest.raises(ModelLoadError, match="model.revision 'v2' pins a Hugging Face hub id.*local folder"):
        load_components(str(snapshot), spec, revision="v2")


@pytest.mark.component
def test_variant_selects_the_weight_files(tmp_path):
    from psrl.models.loading import load_components

    comps = tiny_flux_components(seed=3)
    comps["transformer"].save_pretrained(tmp_path / "m" / "transformer", variant="fp16")
    comps["scheduler"].save_pretrained(tmp_path / "m" / "scheduler")  # schedulers have no variant
    spec = {"transformer": ("diffusers", "FluxTransformer2DModel"),
            "scheduler": ("diffusers", "FlowMatchEulerDiscreteScheduler")}
    loaded = load_components(tmp_path / "m", spec, variant="fp16")
    assert torch.equal(next(loaded["transformer"].parameters()), next(comps["transformer"].parameters()))
    with pytest.raises(ModelLoadError, match="could not load transformer"):
        load_components(tmp_path / "m", spec)  # no plain weight file: the variant is not silently optional


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
    _go_offline(monkeypatch)
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
        out = _psrl("train", "--set", f"run.output_dir={tmp_path}", "--set", "run.name=hubrun", "--set",
                    "train.max_steps=2", "--set", "eval.every=1", "--set",
                    "data.records=hf://org/flowgrpo-prompts/train.txt", cwd=tmp_path, env=env)
        assert out.returncode == 0, out.stderr[-3000:]
        run = tmp_path / "hubrun"

        pushed = _psrl("push", str(run), "--repo-id", "tiny-grpo", "--private", cwd=tmp_path, env=env)
        assert pushed.returncode == 0, pushed.stderr[-3000:]
        assert f"pushed 6 files to {USER}/tiny-grpo" in pushed.stdout and "commit: " in pushed.stdout
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
