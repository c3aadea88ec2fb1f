"""``model.quantization``: the bitsandbytes / torchao configs handed to ``from_pretrained``, which components get
them, the one-line errors before anything is loaded (CPU), and nf4 / int8 / fp8 for real under a LoRA (GPU)."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from psrl.config import ConfigError, from_dict
from psrl.models.config import ModelConfig
from psrl.models.loading import FLUX_COMPONENT_SPEC
from psrl.models.quantization import (QUANTIZATION_SCHEMES, bnb_config_kwargs, check_quantization, is_quantized,
                                      quantization_problem, quantized_components)
from psrl.models.qwen_edit_plus import QWEN_EDIT_PLUS_COMPONENT_SPEC
from psrl.models.sd3 import SD3_COMPONENT_SPEC

TINY_CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "tiny_flux.yaml")  # the tiny random FLUX run


# ------------------------------------------------------------------------------------------------------------ unit
@pytest.mark.unit
def test_bitsandbytes_kwargs_are_qlora_nf4_and_llm_int8():
    assert bnb_config_kwargs("nf4", torch.bfloat16) == {
        "load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
        "bnb_4bit_compute_dtype": torch.bfloat16}
    assert bnb_config_kwargs("int8", torch.bfloat16) == {"load_in_8bit": True}
    with pytest.raises(ValueError, match="bitsandbytes has no 'fp8' mode"):
        bnb_config_kwargs("fp8", torch.bfloat16)
    assert {m: s.package for m, s in QUANTIZATION_SCHEMES.items()} == {"nf4": "bitsandbytes",
                                                                        "int8": "bitsandbytes", "fp8": "torchao"}


@pytest.mark.unit
def test_the_denoiser_and_big_text_encoders_are_quantized_unless_offloaded():
    assert quantized_components(FLUX_COMPONENT_SPEC, "nf4") == ["transformer", "text_encoder_2"]  # T5-XXL, not CLIP
    assert quantized_components(FLUX_COMPONENT_SPEC, "nf4", offload_frozen=True) == ["transformer"]
    assert quantized_components(SD3_COMPONENT_SPEC, "int8") == ["transformer", "text_encoder_3"]
    assert quantized_components(QWEN_EDIT_PLUS_COMPONENT_SPEC, "fp8") == ["transformer", "text_encoder"]
    assert quantized_components(FLUX_COMPONENT_SPEC, None) == []


@pytest.mark.unit
def test_environment_problems_are_named_in_order():
    ok = {"installed": "0.48.1", "device_type": "cuda", "cuda_available": True, "capability": (9, 0)}
    assert quantization_problem("nf4", **ok) is None and quantization_problem("fp8", **ok) is None
    cases = [("nf4", {"installed": None}, r"needs bitsandbytes >= 0.48.0, which is not installed \(pip install "
                                          r"'psrl\[bnb\]'\)"),
             ("fp8", {"installed": None}, r"needs torchao >= 0.15.0, which is not installed \(pip install 'torchao"),
             ("int8", {"installed": "0.45.5"}, "needs bitsandbytes >= 0.48.0, found 0.45.5"),
             ("nf4", {"device_type": "cpu", "cuda_available": False}, "needs a CUDA device .*run's device is cpu"),
             ("nf4", {"cuda_available": False}, "torch sees none"),
             ("fp8", {"capability": (8, 0)}, "compute capability >= 8.9, the GPU has 8.0")]
    for mode, env, why in cases:
        problem = quantization_problem(mode, **{**ok, **env})
        assert problem is not None and re.search(why, problem), (mode, env, problem)
    assert quantization_problem("nf4", **{**ok, "capability": (7, 5)}) is None  # bitsandbytes runs on Turing


@pytest.mark.unit
def test_quantization_is_a_config_key_refused_with_tiny_and_fuse():
    assert from_dict(ModelConfig, {"path": "org/m", "quantization": "nf4"}).quantization == "nf4"
    assert from_dict(ModelConfig, {"path": "org/m"}).quantization is None
    for bad, why in [({"path": "org/m", "quantization": "nf5"}, r"'model.quantization': 'nf5'"),
                     ({"path": "tiny", "quantization": "nf4"}, r"model.quantization='nf4'.*'tiny'"),
                     ({"path": "org/m", "quantization": "int8", "lora": {"fuse": ["sft.safetensors"]}},
                      r"model.quantization='int8' cannot be combined with model.lora.fuse")]:
        with pytest.raises(ConfigError, match=why) as e:
            from_dict(ModelConfig, bad, prefix="model")
        assert "\n" not in str(e.value)


@pytest.mark.unit
def test_check_on_this_machine_is_one_line_naming_key_and_value():
    check_quantization(None, "cpu")  # nothing asked, nothing checked
    with pytest.raises(ConfigError, match=r"^model.quantization: 'nf4' needs ") as e:
        check_quantization("nf4", "cpu")  # no bitsandbytes, or no CUDA: either way refused on a CPU device
    assert "\n" not in str(e.value)


@pytest.mark.component
def test_unquantized_models_are_not_taken_for_quantized_ones():
    from psrl.models.tiny import tiny_flux_components

    comps = tiny_flux_components()
    assert not any(is_quantized(comps[k]) for k in ("transformer", "vae", "text_encoder", "text_encoder_2"))
    assert not is_quantized(torch.nn.Linear(2, 2))


# ------------------------------------------------------------------------------------------------------------- e2e
@pytest.mark.e2e
def test_train_refuses_quantization_on_the_cpu_before_the_run_directory(tmp_path):
    from diffusers import FluxPipeline

    from psrl.models.tiny import tiny_flux_components

    FluxPipeline(**tiny_flux_components()).save_pretrained(tmp_path / "model")
    out = subprocess.run([sys.executable, "-m", "psrl", "train", "--config", TINY_CONFIG,
                          "--set", f"run.output_dir={tmp_path / 'runs'}",
                          "--set", f"model.path={tmp_path / 'model'}", "--set", "model.quantization=nf4",
                          "--set", "train.device=cpu"],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert "model.quantization: 'nf4' needs" in last, out.stderr[-2000:]
    assert not (tmp_path / "runs").exists()  # refused before any run directory


# -------------------------------------------------------------------------------------------------------------- gpu
@pytest.mark.gpu
@pytest.mark.component
@pytest.mark.parametrize("mode", ["nf4", "int8", "fp8"])
def test_quantized_base_under_a_lora_trains_on_the_gpu(tmp_path, mode):
    """A tiny FLUX saved with save_pretrained and loaded quantized: the transformer's linears are quantized, the
    LoRA is fp32 and trainable, the recomputed log-prob equals the rollout's (ratio 1 before an update), and one
    AdamW step moves only the LoRA."""
    from psrl.models.quantization import probe_environment

    problem = quantization_problem(mode, **probe_environment(mode, "cuda"))
    if problem:
        pytest.skip(problem)
    from diffusers import FluxPipeline

    from psrl.data.records import Record
    from psrl.models.flux import FluxPolicy
    from psrl.models.tiny import tiny_flux_components
    from psrl.sampling import SamplingConfig

    FluxPipeline(**tiny_flux_components()).save_pretrained(tmp_path / "m")
    cfg = from_dict(ModelConfig, {"path": str(tmp_path / "m"), "dtype": "bfloat16", "quantization": mode,
                                  "max_sequence_length": 16, "lora": {"rank": 4, "alpha": 8, "targets": "attn"}})
    policy = FluxPolicy.from_config(cfg, device="cuda")
    assert is_quantized(policy.transformer) and is_quantized(policy.text_encoder_2)
    assert not is_quantized(policy.text_encoder)  # CLIP stays as it is
    if QUANTIZATION_SCHEMES[mode].package == "bitsandbytes":
        import bitsandbytes as bnb

        kind = bnb.nn.Linear4bit if mode == "nf4" else bnb.nn.Linear8bitLt
        assert any(isinstance(m, kind) for m in policy.transformer.modules())
    params = list(policy.trainable_parameters())
    assert params and all(p.dtype == torch.float32 and p.device.type == "cuda" for p in params)
    frozen = {n: p.detach().clone() for n, p in policy.transformer.named_parameters() if not p.requires_grad}
    ro = policy.rollout([Record(id="a", prompt="a dog")] * 2, SamplingConfig(num_steps=3, height=16, width=16),
                        torch.Generator().manual_seed(0))
    step = ro.trained_steps[0]
    lp = policy.log_prob(ro, step).log_prob
    assert torch.isfinite(lp).all() and (lp - ro.log_probs[:, step].to(lp.device)).abs().max() < 1e-3
    opt = torch.optim.AdamW(params, lr=1e-2)
    (-lp.mean()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)
    before = [p.detach().clone() for p in params]
    opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, params))
    assert all(torch.equal(v, dict(policy.transformer.named_parameters())[n]) for n, v in frozen.items())
