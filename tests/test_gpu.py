"""The same oracles on a CUDA device (skipped without one): FluxPolicy against FluxPipeline on the GPU, the
log-prob recompute in bf16, a GRPO run through the CLI, and the Kontext memory script's measuring path."""
import runpy
import sys
from pathlib import Path

import pytest
import torch

from psrl.data.records import Record
from psrl.sampling import SamplingConfig
from psrl.models.config import LoraConfig, ModelConfig
from psrl.models.flux import FluxPolicy
from psrl.models.tiny import tiny_flux_components

TINY = str(Path(__file__).resolve().parents[1] / "configs" / "tiny_flux.yaml")  # the tiny random FLUX run

pytestmark = pytest.mark.gpu
pytest.importorskip("diffusers")

SEQ = 16


def _gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


@pytest.mark.component
def test_ode_generation_equals_flux_pipeline_on_the_gpu():
    from diffusers import FluxPipeline

    pipe = FluxPipeline(**tiny_flux_components()).to("cuda")
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(["a red dog", "a cat"], num_inference_steps=3, height=16, width=24, guidance_scale=4.0,
                    max_sequence_length=SEQ, output_type="pt", generator=_gens(0, 1)).images
    policy = FluxPolicy(tiny_flux_components(), ModelConfig(lora=LoraConfig(rank=4, alpha=8), max_sequence_length=SEQ),
                        "cuda")
    got = policy.generate([Record(id="0", prompt="a red dog"), Record(id="1", prompt="a cat")],
                          SamplingConfig(num_steps=3, height=16, width=24, guidance_scale=4.0), _gens(0, 1))
    assert got.device.type == "cuda" and (got - expected.to(got.device)).abs().max() < 1e-4


@pytest.mark.component
def test_bf16_log_prob_recompute_on_the_gpu():
    policy = FluxPolicy(tiny_flux_components(), ModelConfig(lora=LoraConfig(rank=4, alpha=8), dtype="bfloat16",
                                                            max_sequence_length=SEQ), "cuda")
    ro = policy.rollout([Record(id="a", prompt="a dog")] * 2, SamplingConfig(num_steps=3, height=16, width=16),
                        torch.Generator().manual_seed(0))
    assert ro.latents.dtype == torch.float32
    for step in ro.trained_steps:
        assert (policy.log_prob(ro, step).log_prob - ro.log_probs[:, step].to("cuda")).abs().max() < 1e-3


@pytest.mark.e2e
def test_grpo_cli_run_on_the_gpu(tmp_path):
    from psrl.cli.main import main
    from psrl.rl.tracking import read_metrics

    assert main(["train", "--config", TINY, "--set", f"run.output_dir={tmp_path}", "--set", "train.max_steps=2",
                 "--set", "train.device=cuda"]) == 0
    assert [m["step"] for m in read_metrics(tmp_path / "tiny_flux" / "metrics.jsonl")] == [1, 2]


@pytest.mark.e2e
def test_kontext_memory_script_measures_cuda_peaks(monkeypatch, capsys):
    benchmarks = Path(__file__).resolve().parents[1] / "benchmarks"
    monkeypatch.setattr(sys, "argv", ["kontext_memory.py", "--device", "cuda", "--shape", "small", "--size", "64",
                                      "--steps", "2", "--refs", "2", "--group-size", "2", "--batch", "2",
                                      "--lora-rank", "4", "--max-sequence-length", "16"])
    monkeypatch.syspath_prepend(str(benchmarks))
    runpy.run_path(str(benchmarks / "kontext_memory.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "peak CUDA allocated" in out and "iteration peak:" in out
