"""The paper recipes in configs/ load with the trainer's config classes and name registered rewards and policies;
each has a tiny twin in configs/tiny/ that runs 2 steps through the CLI (GRPO: psrl train, SFT: psrl sft). Qwen-
Image-Edit-Plus and SD3 also run both stages from the CLI through overrides of the twins."""
import itertools
import json
import re
from pathlib import Path

import pytest

from psrl.rl.tracking import read_metrics

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
GRPO_RECIPES = ["psr_kontext", "paco_flux_refs", "paco_t2is", "paco_kontext", "customized_grpo", "flowgrpo_fast"]
SFT_RECIPES = ["psr_kontext_sft"]
# the tiny twin may swap a reward whose tiny model cannot score (documented in the twin)
TWIN_STAND_INS = {("psr_kontext", "semantic_alignment"): "vlm_consistency"}
QWEN_ARGS = "model.args={condition_area: 1024, vae_area: 1024, max_references: 4}"


@pytest.mark.unit
@pytest.mark.parametrize("name", GRPO_RECIPES)
def test_recipe_and_twin_load_and_agree(name):
    from psrl.models import POLICIES
    from psrl.rewards import REWARDS
    from psrl.rl.run_config import load_run_config

    full = load_run_config(CONFIGS / f"{name}.yaml")
    twin = load_run_config(CONFIGS / "tiny" / f"{name}.yaml")
    assert full.model.name in POLICIES.names() and twin.model.name == full.model.name
    assert twin.model.path == "tiny" and full.model.path != "tiny"
    full_rewards = [TWIN_STAND_INS.get((name, r.name), r.name) for r in full.rewards]
    assert [r.name for r in twin.rewards] == full_rewards
    assert all(r.name in REWARDS.names() for r in full.rewards)
    assert all(r.args.get("path") == "tiny" for r in twin.rewards)
    assert [r.weight for r in twin.rewards] == [r.weight for r in full.rewards]
    for key in ("train_steps", "sde_kind", "same_noise_per_group"):
        assert getattr(twin.sampling, key) == getattr(full.sampling, key), key
    assert twin.advantage.mode == full.advantage.mode
    assert twin.model.args.get("position_ids") == full.model.args.get("position_ids")
    _assert_sources_can_be_opened((CONFIGS / f"{name}.yaml").read_text())


def _assert_sources_can_be_opened(text: str) -> None:
    """A recipe names its sources as a reader can open them (a paper by arXiv id, an upstream file at a commit),
    every ``[tag]`` its comments use is defined in its header, and free values say "our choice"."""
    assert re.search(r"arXiv \d{4}\.\d{4,5}", text) and re.search(r"[\w-]+/[\w.-]+@[0-9a-f]{7}", text)
    assert "our choice" in text
    header = "\n".join(itertools.takewhile(lambda line: line.startswith("#"), text.splitlines()))
    body_tags = {t for line in text.splitlines()[header.count("\n") + 1:] if "#" in line
                 for t in re.findall(r"(?<!\w)\[([A-Za-z][\w-]*)\]", line.split("#", 1)[1])}
    assert body_tags <= set(re.findall(r"(?<!\w)\[([A-Za-z][\w-]*)\]", header)), body_tags


@pytest.mark.unit
def test_sft_recipe_and_twin_load():
    from psrl.rl.sft_config import load_sft_config

    full = load_sft_config(CONFIGS / "psr_kontext_sft.yaml")
    twin = load_sft_config(CONFIGS / "tiny" / "psr_kontext_sft.yaml")
    assert (full.model.lora.rank, full.sft.lr, full.sft.height) == (512, 1e-4, 512)   # PSR's stage-1 SFT
    _assert_sources_can_be_opened((CONFIGS / "psr_kontext_sft.yaml").read_text())
    assert twin.model.name == full.model.name and twin.model.path == "tiny"
    assert twin.sft.sigma_sampling == full.sft.sigma_sampling


def _train(config, tmp_path, *extra):
    from psrl.cli.main import main

    assert main(["train", "--config", str(config), "--set", f"run.output_dir={tmp_path}", *extra]) == 0
    run = next(p for p in tmp_path.iterdir() if p.is_dir())
    return run, read_metrics(run / "metrics.jsonl")


@pytest.mark.e2e
@pytest.mark.parametrize("name", GRPO_RECIPES)
def test_tiny_twin_trains_two_steps(name, tmp_path):
    run, metrics = _train(CONFIGS / "tiny" / f"{name}.yaml", tmp_path)
    assert [m["step"] for m in metrics] == [1, 2]
    assert (run / "checkpoints" / "step-2" / "lora" / "pytorch_lora_weights.safetensors").is_file()
    assert all(m["train_passes"] > 0 for m in metrics), "no sample carried a training signal"
    assert all(m["reward/total/mean"] is not None for m in metrics)


def _sft(config, tmp_path, *extra):
    from psrl.cli.main import main

    assert main(["sft", "--config", str(config), "--set", f"run.output_dir={tmp_path}", *extra]) == 0
    run = next(p for p in tmp_path.iterdir() if p.is_dir())
    metrics = read_metrics(run / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [0, 1, 2] and all(m.get("loss", 1.0) > 0 for m in metrics)
    lora = run / "checkpoints" / "step-2" / "lora"
    assert (lora / "pytorch_lora_weights.safetensors").is_file()
    return lora


@pytest.mark.e2e
@pytest.mark.parametrize("model", ["flux_kontext", "qwen_image_edit_plus", "sd3"])
def test_sft_then_grpo_from_the_cli(model, tmp_path):
    """Every policy: SFT from the CLI, then a GRPO run (1 step) initialised from the SFT LoRA (model.lora.path)."""
    targets = {"flux_kontext": "attn_ff_single", "qwen_image_edit_plus": "attn_ff_single", "sd3": "attn"}[model]
    lora_cfg = [f"model.name={model}", f"model.lora.targets={targets}", "model.lora.rank=4", "model.lora.alpha=4.0"]
    sft_extra, grpo_extra = [], []
    if model == "qwen_image_edit_plus":
        lora_cfg += [QWEN_ARGS, "model.max_sequence_length=512"]
        sft_extra = ["sft.height=32", "sft.width=32"]
        grpo_extra = ["sampling.height=32", "sampling.width=32", "sampling.guidance_scale=4.0"]
    elif model == "sd3":
        lora_cfg += ["model.args={}"]
        grpo_extra = ["rewards=[{name: clip_t, weight: 1.0, args: {path: tiny}}]"]
    lora = _sft(CONFIGS / "tiny" / "psr_kontext_sft.yaml", tmp_path / "sft",
                *[a for s in lora_cfg + sft_extra for a in ("--set", s)])
    grpo_extra += [f"model.lora.path={lora}", "train.max_steps=1", "eval.every=0"]
    run, metrics = _train(CONFIGS / "tiny" / "paco_kontext.yaml", tmp_path / "grpo",
                          *[a for s in lora_cfg + grpo_extra for a in ("--set", s)])
    from safetensors.torch import load_file

    sft_weights = load_file(lora / "pytorch_lora_weights.safetensors")
    grpo_weights = load_file(run / "checkpoints" / "step-1" / "lora" / "pytorch_lora_weights.safetensors")
    assert set(sft_weights) == set(grpo_weights)
    # the GRPO run started from the SFT weights (SFT moved the zero-initialised B; GRPO took one small step)
    assert any(float(v.abs().sum()) > 0 for k, v in sft_weights.items() if "lora_B" in k)
    assert max(float((sft_weights[k] - grpo_weights[k]).abs().max()) for k in sft_weights) < 0.1
    assert metrics[-1]["reward/total/mean"] is not None


@pytest.mark.e2e
def test_psr_two_stages_sft_rank_8_fused_under_a_rank_4_grpo_lora(tmp_path):
    """PSR's hand-over (rank-512 SFT -> rank-64 RL), shrunk: the SFT LoRA is fused (model.lora.fuse), a fresh
    smaller adapter trains on top, and its saved file records the fused LoRA."""
    from safetensors import safe_open

    from psrl.models.lora import FUSED_METADATA_KEY

    sft = _sft(CONFIGS / "tiny" / "psr_kontext_sft.yaml", tmp_path / "sft",
               "--set", "model.lora.rank=8", "--set", "model.lora.alpha=8.0")
    run, metrics = _train(CONFIGS / "tiny" / "psr_kontext.yaml", tmp_path / "grpo",
                          "--set", f"model.lora.fuse=[{sft}]", "--set", "train.max_steps=1", "--set", "eval.every=0")
    assert metrics[-1]["reward/total/mean"] is not None and metrics[-1]["train_passes"] > 0
    with safe_open(str(run / "checkpoints" / "step-1" / "lora" / "pytorch_lora_weights.safetensors"), "pt") as f:
        fused = json.loads(f.metadata()[FUSED_METADATA_KEY])
        ranks = {f.get_tensor(k).shape[0] for k in f.keys() if ".lora_A." in k}  # noqa: SIM118 - not a dict
    assert [e["path"] for e in fused] == [str(sft / "pytorch_lora_weights.safetensors")] and ranks == {4}


# ---------------------------------------------------------------------------------------------------------------
# Every shipped config's data paths: what `psrl data export` writes, or what README's "Data for the recipes" says.

README = (CONFIGS.parent / "README.md").read_text()


def _kind(path: Path) -> str:
    import yaml

    top = set(yaml.safe_load(path.read_text()))
    if {"host", "port"} & top:
        return "server"
    if {"subjects", "render", "export"} & top:
        return "data"
    data = yaml.safe_load(path.read_text())
    if "image_max_pixels" in (data.get("model") or {}) or "train" in (data.get("data") or {}):
        return "reward_model"  # psrl reward-model train; tested in tests/test_reward_model_train.py
    return "sft" if "sft" in top else "run"


def _written_paths(path: Path) -> dict[str, str]:
    """The relative data paths as the YAML file writes them (inline prompt lists and unset keys left out)."""
    import yaml

    raw = yaml.safe_load(path.read_text())
    out = {}
    for section in ("data", "eval"):
        for key in ("records", "data_root"):
            value = (raw.get(section) or {}).get(key)
            if isinstance(value, str):
                out[f"{section}.{key}"] = value
    return out


def _load(path: Path):
    from psrl.rl.run_config import load_run_config
    from psrl.rl.sft_config import load_sft_config

    return load_sft_config(path) if _kind(path) == "sft" else load_run_config(path)


def _export_tiny_dataset(dataset: Path) -> None:
    """What `psrl data export` writes into data/psr, from a hand-made filter manifest (both splits non-empty)."""
    from PIL import Image

    from psrl.datagen.config import DataPipelineConfig, ExportConfig
    from psrl.datagen.export import run_export
    from psrl.fileio import write_jsonl_atomic

    dataset.mkdir(parents=True)
    entries = []
    for i in range(12):
        refs = []
        for k in range(2):
            Image.new("RGB", (16, 16), (20 * i, 10 * k, 90)).save(dataset / f"r{i}_{k}.png")
            refs.append(f"r{i}_{k}.png")
        Image.new("RGB", (16, 16)).save(dataset / f"t{i}.png")
        entries.append({"id": f"{i:03d}", "task": "Action", "phrases": ["cat", "dog"], "categories": ["Cat", "Dog"],
                        "instruction": f"the cat and the dog, take {i}", "references": refs, "target": f"t{i}.png",
                        "status": "kept"})
    write_jsonl_atomic(dataset / "filter.jsonl", entries)
    stats = run_export(dataset, DataPipelineConfig(export=ExportConfig(heldout_fraction=0.5)))
    assert stats.extra["train"] and stats.extra["eval"]


FULL_RECIPES = sorted(p for p in CONFIGS.glob("*.yaml") if _kind(p) in ("run", "sft"))
TWINS = sorted(p for p in (CONFIGS / "tiny").glob("*.yaml") if _kind(p) in ("run", "sft"))


@pytest.mark.unit
def test_every_recipe_reads_what_the_pipeline_writes_or_the_readme_documents(tmp_path, monkeypatch):
    """The held-out split has one name: `psrl data export` writes data/psr/{train,eval}.jsonl and every recipe that
    trains on the pipeline's data reads exactly those (from the working directory, no fallback to configs/); every
    other data path is one the README's "Data for the recipes" table tells the user how to make."""
    from psrl.datagen.export import EVAL_RECORDS, TRAIN_RECORDS

    assert {p.name for p in FULL_RECIPES} >= {f"{n}.yaml" for n in GRPO_RECIPES + SFT_RECIPES + ["flux_grpo"]}
    _export_tiny_dataset(tmp_path / "data" / "psr")
    monkeypatch.chdir(tmp_path)
    for recipe in FULL_RECIPES:
        written = _written_paths(recipe)
        if "data.records" in written:  # (tiny_flux.yaml lists its prompts inline)
            assert written["data.records"].endswith("/" + TRAIN_RECORDS), (recipe.name, written)
        if "eval.records" in written:
            assert written["eval.records"].endswith("/" + EVAL_RECORDS), (recipe.name, written)
        cfg = _load(recipe)
        for key, rel in written.items():
            if rel.startswith("data/psr"):
                assert (tmp_path / rel).exists(), f"{recipe.name}: {key} = {rel} is not what psrl data export wrote"
                section, field = key.split(".")
                assert getattr(getattr(cfg, section), field) == rel  # read from the working directory
            else:
                assert f"`{rel.rsplit('/', 1)[0]}" in README or f"`{rel}`" in README, \
                    f"{recipe.name}: {key} = {rel} is not in README's 'Data for the recipes'"


@pytest.mark.unit
@pytest.mark.parametrize("twin", TWINS, ids=lambda p: p.name)
def test_tiny_twins_read_the_recipes_paths_and_run_from_anywhere(twin, tmp_path, monkeypatch):
    """A twin of a recipe that reads the pipeline's data names the same relative paths; from a working directory
    without data every path resolves to the stand-in shipped next to the twin."""
    monkeypatch.chdir(tmp_path)
    written = _written_paths(twin)
    full = CONFIGS / twin.name
    if full.is_file() and any(v.startswith("data/psr") for v in _written_paths(full).values()):
        assert written == _written_paths(full)
    cfg = _load(twin)
    for key in written:
        section, field = key.split(".")
        resolved = Path(getattr(getattr(cfg, section), field))
        assert resolved.is_absolute() and resolved.exists(), (twin.name, key, resolved)
        assert CONFIGS / "tiny" in resolved.parents


@pytest.mark.component
def test_reward_server_example_config_and_the_readme_request(tmp_path):
    """configs/serve_rewards.yaml loads; its tiny twin serves the request exactly as the README writes it."""
    import base64
    import io

    from fastapi.testclient import TestClient
    from PIL import Image

    from psrl.config import load_config
    from psrl.rewards import REWARDS
    from psrl.serve.server import ServerConfig, create_app

    full = load_config(ServerConfig, CONFIGS / "serve_rewards.yaml")
    twin = load_config(ServerConfig, CONFIGS / "tiny" / "serve_rewards.yaml",
                       [f"data_root={CONFIGS / 'tiny' / 'data' / 'psr'}"])
    assert full.host == twin.host == "127.0.0.1" and full.api_key is None and full.api_key_env
    assert [r.name for r in full.rewards] == [r.name for r in twin.rewards]
    assert all((r.reward or r.name) in REWARDS.names() for r in full.rewards)
    assert "psrl serve rewards --config configs/serve_rewards.yaml" in README
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 120, 40)).save(buf, format="PNG")
    body = {"images": [base64.b64encode(buf.getvalue()).decode()],
            "records": [{"id": "0", "prompt": "the dog wears the hat",
                         "subjects": [{"image": "references/dog.png", "phrase": "dog"}]}]}
    with TestClient(create_app(twin)) as client:
        assert set(client.get("/health").json()["rewards"]) == {"subject_consistency", "hps"}
        for name in ("subject_consistency", "hps"):
            reply = client.post(f"/score/{name}", json=body)
            assert reply.status_code == 200, reply.text
            out = reply.json()
            assert set(out) == {"scores", "failures", "details"} and len(out["scores"]) == 1
            assert out["scores"][0] is not None or out["failures"][0]


@pytest.mark.unit
def test_data_pipeline_config_loads():
    from psrl.config import load_config
    from psrl.datagen.config import DataPipelineConfig

    cfg = load_config(DataPipelineConfig, CONFIGS / "data_psr.yaml")
    assert cfg.export.heldout_fraction == 0.02 and cfg.render.model.name == "flux"
