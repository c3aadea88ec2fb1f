"""LoRA presets, diffusers-format save/load (loadable by FluxPipeline.load_lora_weights), mismatch errors."""
import pytest
import torch

from psrl.data.records import Record
from psrl.errors import ModelLoadError
from psrl.sampling import SamplingConfig
from psrl.models.config import LoraConfig, ModelConfig
from psrl.models.flux import FluxPolicy
from psrl.models.lora import (
    LORA_TARGET_PRESETS,
    LORA_WEIGHT_NAME,
    lora_parameters,
    read_lora_file,
    resolve_target_modules,
)
from psrl.models.tiny import tiny_flux_components, tiny_flux_transformer

SAMPLING = SamplingConfig(num_steps=2, height=16, width=16, guidance_scale=3.5)
RECORDS = [Record(id="a", prompt="a red dog")]


def _policy(rank=4, targets="attn"):
    return FluxPolicy(tiny_flux_components(),
                      ModelConfig(lora=LoraConfig(rank=rank, alpha=2 * rank, targets=targets), max_sequence_length=16))


def _perturb(policy, seed=0, std=0.5):
    g = torch.Generator().manual_seed(seed)
    for name, p in lora_parameters(policy.transformer):
        if "lora_B" in name:
            p.data.copy_(torch.randn(p.shape, generator=g) * std)


@pytest.mark.component
def test_presets_resolve_to_the_documented_layers():
    tr = tiny_flux_transformer()
    attn = resolve_target_modules(tr, "attn")
    assert "transformer_blocks.0.attn.to_add_out" in attn and "single_transformer_blocks.0.attn.to_q" in attn
    assert not any(".ff" in n for n in attn)
    attn_ff = resolve_target_modules(tr, "attn_ff")
    assert set(attn) < set(attn_ff) and "transformer_blocks.0.ff_context.net.2" in attn_ff
    full = resolve_target_modules(tr, "attn_ff_single")
    assert "single_transformer_blocks.0.proj_mlp" in full and "single_transformer_blocks.0.proj_out" in full
    assert "proj_out" not in full  # the model's final projection is not a block layer
    assert set(LORA_TARGET_PRESETS) >= {"attn", "attn_ff", "attn_ff_single"}
    with pytest.raises(ValueError, match="not a preset"):
        resolve_target_modules(tr, "everything")
    with pytest.raises(ValueError, match="to_qq"):
        resolve_target_modules(tr, ["to_q", "to_qq"])


@pytest.mark.component
def test_only_lora_parameters_are_trainable_and_fp32_in_bf16():
    policy = FluxPolicy(tiny_flux_components(), ModelConfig(lora=LoraConfig(rank=4, alpha=8), dtype="bfloat16",
                                                            max_sequence_length=16))
    names = [n for n, p in policy.transformer.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    assert all(p.dtype == torch.float32 for p in policy.trainable_parameters())
    assert all(p.dtype == torch.bfloat16 for n, p in policy.transformer.named_parameters() if "lora_" not in n)
    assert not any(p.requires_grad for m in policy.frozen_modules() for p in m.parameters())


@pytest.mark.component
def test_saved_lora_loads_in_flux_pipeline_and_round_trips(tmp_path):
    from diffusers import FluxPipeline

    policy = _policy()
    _perturb(policy)
    policy.save_lora(tmp_path)
    file, tensors, meta = read_lora_file(tmp_path)
    assert file.name == LORA_WEIGHT_NAME and all(k.startswith("transformer.") for k in tensors)
    assert meta["transformer.r"] == 4 and meta["transformer.lora_alpha"] == 8

    ours = policy.generate(RECORDS, SAMPLING, torch.Generator().manual_seed(0))
    pipe = FluxPipeline(**tiny_flux_components())
    pipe.set_progress_bar_config(disable=True)
    def call():
        return pipe("a red dog", num_inference_steps=2, height=16, width=16, max_sequence_length=16,
                    output_type="pt", guidance_scale=3.5, generator=torch.Generator().manual_seed(0)).images

    base = call()
    pipe.load_lora_weights(str(tmp_path))
    with_lora = call()
    assert (with_lora - base).abs().max() > 1e-3, "the LoRA must change the pipeline's output"
    assert (with_lora - ours).abs().max() < 1e-4, "diffusers must reproduce the policy, alpha/rank scale included"

    fresh = _policy()
    fresh.load_lora(tmp_path / LORA_WEIGHT_NAME)
    assert (fresh.generate(RECORDS, SAMPLING, torch.Generator().manual_seed(0)) - ours).abs().max() == 0
    # a policy built without an adapter takes the adapter config from the file's header
    bare = FluxPolicy(tiny_flux_components(), ModelConfig(lora=None, max_sequence_length=16))
    bare.load_lora(tmp_path)
    assert (bare.generate(RECORDS, SAMPLING, torch.Generator().manual_seed(0)) - ours).abs().max() == 0


@pytest.mark.component
def test_lora_path_in_config_initialises_the_adapter(tmp_path):
    src = _policy()
    _perturb(src)
    src.save_lora(tmp_path / "sft.safetensors")
    cfg = LoraConfig(rank=4, alpha=8, path=str(tmp_path / "sft.safetensors"))
    policy = FluxPolicy(tiny_flux_components(), ModelConfig(lora=cfg, max_sequence_length=16))
    a = dict(lora_parameters(src.transformer))
    assert all(torch.equal(p, a[n]) for n, p in lora_parameters(policy.transformer))


@pytest.mark.component
def test_mismatched_lora_file_is_a_clear_error(tmp_path):
    _policy(rank=8).save_lora(tmp_path / "r8")
    with pytest.raises(ModelLoadError, match=r"r8.*saved with rank 8.*has rank 4.*model.lora.rank"):
        _policy(rank=4).load_lora(tmp_path / "r8")
    # without the header (a file from another tool) the shapes still give the mismatch away
    from safetensors.torch import load_file, save_file
    save_file(load_file(tmp_path / "r8" / LORA_WEIGHT_NAME), tmp_path / "r8_bare.safetensors")
    with pytest.raises(ModelLoadError, match=r"r8_bare.*shape mismatches.*rank"):
        _policy(rank=4).load_lora(tmp_path / "r8_bare.safetensors")
    _policy(targets="attn_ff").save_lora(tmp_path / "ff")
    with pytest.raises(ModelLoadError, match=r"pytorch_lora_weights.safetensors.*does not have.*ff"):
        _policy(targets="attn").load_lora(tmp_path / "ff")
    with pytest.raises(ModelLoadError, match="has no pytorch_lora_weights"):
        _policy().load_lora(tmp_path)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match="junk.safetensors"):
        _policy().load_lora(tmp_path / "junk.safetensors")


@pytest.mark.component
def test_lora_file_with_another_alpha_is_an_error(tmp_path):
    FluxPolicy(tiny_flux_components(),
               ModelConfig(lora=LoraConfig(rank=4, alpha=16), max_sequence_length=16)).save_lora(tmp_path)
    with pytest.raises(ModelLoadError, match=r"alpha 16.*alpha 8.*model.lora.alpha"):
        _policy(rank=4).load_lora(tmp_path)


@pytest.mark.component
def test_fused_lora_equals_diffusers_fuse_lora_and_becomes_the_reference(tmp_path, caplog):
    """lora.fuse: PSR's rank-512 SFT LoRA under a fresh rank-64 RL LoRA, here rank 8 under rank 4."""
    from diffusers import FluxPipeline

    from psrl.models.lora import FUSED_METADATA_KEY
    from psrl.models.lora_merge import fuse_lora_weights

    sft = _policy(rank=8, targets="attn_ff")
    _perturb(sft, std=0.3)
    sft.save_lora(tmp_path / "sft")
    sft_images = sft.generate(RECORDS, SAMPLING, torch.Generator().manual_seed(0))

    # oracle: diffusers load_lora_weights + fuse_lora + unload gives the same base weights
    pipe = FluxPipeline(**tiny_flux_components())
    pipe.load_lora_weights(str(tmp_path / "sft"))
    pipe.fuse_lora(lora_scale=0.5)
    pipe.unload_lora_weights()
    ours = tiny_flux_transformer()
    fuse_lora_weights(ours, tmp_path / "sft", scale=0.5)
    theirs = dict(pipe.transformer.named_parameters())
    assert max(float((p - theirs[n]).detach().abs().max()) for n, p in ours.named_parameters()) < 1e-6

    # a policy with the SFT LoRA fused and a new rank-4 adapter: with LoRA off it is the SFT policy (KL reference)
    cfg = LoraConfig(rank=4, alpha=8, fuse=[str(tmp_path / "sft")])
    rl = FluxPolicy(tiny_flux_components(), ModelConfig(lora=cfg, max_sequence_length=16))
    with rl.disable_lora():
        reference = rl.generate(RECORDS, SAMPLING, torch.Generator().manual_seed(0))
    assert (reference - sft_images).abs().max() < 1e-4
    assert max(p.shape[0] for n, p in lora_parameters(rl.transformer) if "lora_A" in n) == 4

    # the RL adapter records what it was trained on; loading it on another base warns
    _perturb(rl, seed=1)
    rl.save_lora(tmp_path / "rl")
    _, _, meta = read_lora_file(tmp_path / "rl")
    assert [e["scale"] for e in meta[FUSED_METADATA_KEY]] == [1.0]
    with caplog.at_level("WARNING"):
        _policy().load_lora(tmp_path / "rl")
    assert "model.lora.fuse" in caplog.text
    # another LoRA that is also saved as pytorch_lora_weights.safetensors is still a different base
    _policy(rank=8, targets="attn_ff").save_lora(tmp_path / "other_sft")
    caplog.clear()
    with caplog.at_level("WARNING"):
        FluxPolicy(tiny_flux_components(),
                   ModelConfig(lora=LoraConfig(rank=4, alpha=8, fuse=[str(tmp_path / "other_sft")]),
                               max_sequence_length=16)).load_lora(tmp_path / "rl")
    assert "model.lora.fuse" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        FluxPolicy(tiny_flux_components(), ModelConfig(lora=cfg, max_sequence_length=16)).load_lora(tmp_path / "rl")
    assert "model.lora.fuse" not in caplog.text
    # ... and diffusers reproduces the two-stage policy with both adapters active
    pipe = FluxPipeline(**tiny_flux_components())
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(tmp_path / "sft"), adapter_name="sft")
    pipe.load_lora_weights(str(tmp_path / "rl"), adapter_name="rl")
    pipe.set_adapters(["sft", "rl"])
    both = pipe("a red dog", num_inference_steps=2, height=16, width=16, max_sequence_length=16, output_type="pt",
                guidance_scale=3.5, generator=torch.Generator().manual_seed(0)).images
    assert (both - rl.generate(RECORDS, SAMPLING, torch.Generator().manual_seed(0))).abs().max() < 1e-4


@pytest.mark.component
def test_fuse_errors_name_the_file_and_the_entry(tmp_path):
    from psrl.models.lora_merge import fuse_lora_weights

    _policy(targets="attn_ff").save_lora(tmp_path / "ff")
    with pytest.raises(ModelLoadError, match="before the trainable adapter"):
        fuse_lora_weights(_policy().transformer, tmp_path / "ff")
    from psrl.models.tiny_more import tiny_sd3_components

    with pytest.raises(ModelLoadError, match=r"ff.*layers this model does not have.*another model"):
        fuse_lora_weights(tiny_sd3_components()["transformer"], tmp_path / "ff")
    with pytest.raises(ModelLoadError, match="has no pytorch_lora_weights"):
        FluxPolicy(tiny_flux_components(), ModelConfig(lora=LoraConfig(fuse=[str(tmp_path)]), max_sequence_length=16))
    with pytest.raises(ValueError, match=r"lora.fuse\[1\]"):
        LoraConfig(fuse=["a", {"path": "b", "weight": 2}])
    with pytest.raises(ValueError, match=r"lora.fuse\[0\].scale"):
        LoraConfig(fuse=[{"path": "b", "scale": "big"}])
    assert LoraConfig(fuse="x").fuse == [{"path": "x", "scale": 1.0}]


@pytest.mark.e2e
def test_combined_lora_is_both_stages_in_one_file_for_diffusers_and_psrl(tmp_path, capsys):
    from diffusers import FluxPipeline

    from psrl.cli.main import main
    from psrl.models.lora import FUSED_METADATA_KEY
    from psrl.models.lora_merge import combine_lora_files

    sft = _policy(rank=8, targets="attn_ff")
    _perturb(sft, std=0.3)
    sft.save_lora(tmp_path / "sft")
    rl = FluxPolicy(tiny_flux_components(), ModelConfig(lora=LoraConfig(rank=4, alpha=8, fuse=[str(tmp_path / "sft")]),
                                                        max_sequence_length=16))
    _perturb(rl, seed=1)
    rl.save_lora(tmp_path / "rl")
    expected = rl.generate(RECORDS, SAMPLING, torch.Generator().manual_seed(0))

    assert main(["lora", "combine", str(tmp_path / "sft"), str(tmp_path / "rl"), "--out", str(tmp_path / "both")]) == 0
    _, tensors, meta = read_lora_file(tmp_path / "both")
    assert meta["transformer.r"] == 12 and meta["transformer.lora_alpha"] == 12 and FUSED_METADATA_KEY not in meta
    assert {v.shape[0] for k, v in tensors.items() if ".lora_A." in k} == {12}

    # combining the RL LoRA with anything but its SFT base is refused, naming the recorded base; --force writes
    # it and keeps the record of what must be fused under it
    _policy(rank=2).save_lora(tmp_path / "other")
    capsys.readouterr()
    assert main(["lora", "combine", str(tmp_path / "other"), str(tmp_path / "rl"), "--out",
                 str(tmp_path / "rl_other")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--force" in err
    assert str(tmp_path / "sft" / LORA_WEIGHT_NAME) in err and not (tmp_path / "rl_other").exists()
    combine_lora_files([tmp_path / "rl", tmp_path / "other"], tmp_path / "rl_other", force=True)
    fused = read_lora_file(tmp_path / "rl_other")[2][FUSED_METADATA_KEY]
    assert [e["path"] for e in fused] == [str((tmp_path / "sft" / LORA_WEIGHT_NAME).resolve())]

    bare = FluxPolicy(tiny_flux_components(), ModelConfig(lora=None, max_sequence_length=16))
    bare.load_lora(tmp_path / "both")
    assert (bare.generate(RECORDS, SAMPLING, torch.Generator().manual_seed(0)) - expected).abs().max() < 1e-4
    pipe = FluxPipeline(**tiny_flux_components())
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(tmp_path / "both"))
    theirs = pipe("a red dog", num_inference_steps=2, height=16, width=16, max_sequence_length=16, output_type="pt",
                  guidance_scale=3.5, generator=torch.Generator().manual_seed(0)).images
    assert (theirs - expected).abs().max() < 1e-4

    capsys.readouterr()
    assert main(["lora", "info", str(tmp_path / "rl")]) == 0
    out = capsys.readouterr().out
    assert "rank         4" in out and "scale 2" in out and "sft" in out.split("fused under")[1]
    assert main(["lora", "info", str(tmp_path / "both")]) == 0
    assert "fused under  nothing" in capsys.readouterr().out
    assert main(["lora", "combine", str(tmp_path / "rl"), "--out", str(tmp_path / "x")]) == 2
    assert main(["lora", "combine", str(tmp_path / "sft"), str(tmp_path / "rl"), "--out", str(tmp_path / "x"),
                 "--scale", "1"]) == 2
    assert "once per input" in capsys.readouterr().err


@pytest.mark.component
def test_combine_with_scales_equals_fusing_each(tmp_path):
    from psrl.models.lora_merge import combine_lora_files, fuse_lora_weights

    a, b = _policy(rank=8, targets="attn_ff"), _policy(rank=2, targets="attn")
    _perturb(a, seed=2)
    _perturb(b, seed=3)
    a.save_lora(tmp_path / "a")
    b.save_lora(tmp_path / "b")
    combine_lora_files([tmp_path / "a", tmp_path / "b"], tmp_path / "ab.safetensors", scales=[0.5, 2.0])
    one, two = tiny_flux_transformer(), tiny_flux_transformer()
    fuse_lora_weights(one, tmp_path / "a", scale=0.5)
    fuse_lora_weights(one, tmp_path / "b", scale=2.0)
    fuse_lora_weights(two, tmp_path / "ab.safetensors")
    other = dict(two.named_parameters())
    with torch.no_grad():
        assert max(float((p - other[n]).abs().max()) for n, p in one.named_parameters()) < 1e-5
