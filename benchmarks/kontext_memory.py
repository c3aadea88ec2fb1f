"""Peak accelerator memory of one GRPO iteration of a FLUX.1-Kontext-shaped policy with n references, per phase.

``--shape flux12b`` builds the FLUX.1-Kontext-dev transformer layout (19 double + 38 single blocks, 24 heads x 128,
joint width 4096, guidance embedding: 11.9 B parameters) and the real FLUX VAE layout with random weights, directly
on the device in the frozen dtype. The text encoders are tiny stand-ins whose outputs have the real widths (T5 4096,
CLIP 768): the frozen T5-XXL / CLIP-L add a constant ~9.7 GB in bf16 that ``model.offload_frozen`` removes, and
the script prints that constant beside the measurement instead of allocating it. ``--shape small`` is the
2 + 4 block "small FLUX" of ``rollout_overhead.py`` for a quick CPU check of the script itself.

The iteration is the real ``GRPOTrainer`` (rollout, reward, update) on records with ``--refs`` reference images,
LoRA on the PSR / Flow-GRPO Kontext targets; the first iteration warms up, the second is measured.

``--quantization nf4`` (CUDA, bitsandbytes) saves the random components to a temporary pipeline folder and loads
them back through ``FluxKontextPolicy.from_config`` with ``model.quantization: nf4``, exactly as a user's run loads
a quantized base (the transformer in NF4, LoRA fp32 on top); the folder is deleted afterwards.

    python benchmarks/kontext_memory.py --device meta                      # exact parameter / LoRA-state bytes
    python benchmarks/kontext_memory.py --shape small --size 128 --steps 3  # CPU smoke run of the script
    python benchmarks/kontext_memory.py --device cuda --dtype bfloat16 --refs 4 --gradient-checkpointing
    python benchmarks/kontext_memory.py --device cuda --dtype bfloat16 --refs 4 --gradient-checkpointing \
        --quantization nf4
"""
from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grpo_iteration import instrument  # noqa: E402
from rollout_overhead import small_flux_components  # noqa: E402

# Flow-GRPO's Kontext LoRA targets (yifan123/flow_grpo@74db691 scripts/train_flux_kontext.py), which
# configs/psr_kontext.yaml uses
PSR_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
               "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2", "proj_mlp"]
T5_XXL_CLIP_L_BF16_GB = (4.76e9 + 0.123e9) * 2 / 1e9  # frozen text encoders the script does not allocate


def flux12b_transformer():
    """FLUX.1-[Kontext-]dev's transformer config (its ``config.json``), random weights."""
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(
        patch_size=1, in_channels=64, out_channels=None, num_layers=19, num_single_layers=38, attention_head_dim=128,
        num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
        axes_dims_rope=(16, 56, 56))


def flux_vae():
    """FLUX's 16-channel VAE layout (84 M parameters), random weights."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2,
        use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.1159, scaling_factor=0.3611)


def flux12b_components(device: torch.device, dtype: torch.dtype) -> dict:
    """The 12 B transformer and the VAE built on ``device`` in ``dtype`` (no fp32 copy on the host), and text
    encoders with FLUX's output widths (T5 d_model 4096, CLIP 768) but two tiny layers each."""
    from psrl.models.tiny import (tiny_clip_text_encoder, tiny_clip_tokenizer, tiny_flux_scheduler, tiny_t5_encoder,
                                  tiny_t5_tokenizer)

    tok, tok2 = tiny_clip_tokenizer(), tiny_t5_tokenizer()
    previous = torch.get_default_dtype()
    torch.manual_seed(0)
    try:
        torch.set_default_dtype(dtype)
        with device:
            transformer = flux12b_transformer().eval()
            vae = flux_vae().eval()
            clip = tiny_clip_text_encoder(tok, hidden_size=768)
            t5 = tiny_t5_encoder(tok2, d_model=4096)
    finally:
        torch.set_default_dtype(previous)
    return dict(scheduler=tiny_flux_scheduler(), transformer=transformer, vae=vae, text_encoder=clip, tokenizer=tok,
                text_encoder_2=t5, tokenizer_2=tok2)


def lora_parameter_count(transformer, rank: int) -> int:
    """Exact LoRA parameters ``rank * (in + out)`` over the PSR targets of ``transformer`` (meta device is fine)."""
    from psrl.models.lora import resolve_target_modules

    modules = dict(transformer.named_modules())
    return sum(rank * (modules[n].in_features + modules[n].out_features)
               for n in resolve_target_modules(transformer, PSR_TARGETS))


def count_only(rank: int) -> None:
    from accelerate import init_empty_weights

    with init_empty_weights():
        transformer = flux12b_transformer()
    n = sum(p.numel() for p in transformer.parameters())
    n_lora = lora_parameter_count(transformer, rank)
    print(f"FLUX-12B-shaped transformer: {n / 1e9:.3f} B parameters -> {n * 2 / 1e9:.1f} GB in bf16")
    print(f"LoRA r{rank} on the PSR Kontext targets: {n_lora / 1e6:.1f} M parameters; fp32 weight + grad + AdamW "
          f"states = 16 B each -> {n_lora * 16 / 1e9:.2f} GB (8-bit AdamW: {n_lora * 10 / 1e9:.2f} GB)")
    print(f"frozen T5-XXL + CLIP-L in bf16 (not counted above): {T5_XXL_CLIP_L_BF16_GB:.1f} GB")


def write_records(root: Path, n_records: int, refs: int, ref_size: int) -> Path:
    import numpy as np
    from PIL import Image

    from psrl.data.records import Record, SubjectRef, write_records as write

    rng = np.random.default_rng(0)
    records = []
    for i in range(n_records):
        subjects = []
        for k in range(refs):
            name = f"ref{i}_{k}.png"
            Image.fromarray(rng.integers(0, 256, (ref_size, ref_size, 3), dtype=np.uint8)).save(root / name)
            subjects.append(SubjectRef(image=name, phrase=f"subject {k}"))
        records.append(Record(id=f"r{i}", prompt=f"the subjects together on a beach, scene {i}",
                              subjects=tuple(subjects)))
    path = root / "records.jsonl"
    write(records, path)
    return path


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu, cuda, or meta (parameter counts only)")
    p.add_argument("--shape", default="flux12b", choices=["flux12b", "small"])
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    p.add_argument("--refs", type=int, default=1, help="reference images per record (1..4)")
    p.add_argument("--size", type=int, default=512, help="target size; references follow UNO's 512/320 rule")
    p.add_argument("--steps", type=int, default=4, help="denoising steps (memory does not grow with them)")
    p.add_argument("--group-size", type=int, default=6)
    p.add_argument("--batch", type=int, default=3, help="sample and train micro-batch")
    p.add_argument("--lora-rank", type=int, default=64)
    p.add_argument("--max-sequence-length", type=int, default=512)
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--offload-frozen", action="store_true")
    p.add_argument("--quantization", default=None, choices=["nf4", "int8", "fp8"],
                   help="load the transformer quantized through model.quantization (CUDA only)")
    args = p.parse_args(argv)
    if args.device == "meta":
        count_only(args.lora_rank)
        return

    from psrl.models.config import LoraConfig, ModelConfig
    from psrl.models.flux_kontext import FluxKontextPolicy
    from psrl.rl.run_config import load_run_config
    from psrl.rl.grpo_trainer import GRPOTrainer

    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32  # of the hand-built flux12b weights
    if device.type == "cuda":
        # cuDNN's SDPA backward crashed on long joint sequences on our H100 image; flash/efficient kernels are fine
        torch.backends.cuda.enable_cudnn_sdp(False)
    root = Path(tempfile.mkdtemp(prefix="psrl-kontext-mem-"))
    records = write_records(root, 1, args.refs, args.size)
    cfg = load_run_config(None, [
        f"run.output_dir={root / 'runs'}", "run.name=mem", "train.max_steps=2", "train.groups_per_step=1",
        f"train.group_size={args.group_size}", f"train.sample_batch_size={args.batch}",
        f"train.train_batch_size={args.batch}", "train.lr=1e-5", "train.clip_range=1e-4",
        f"train.device={device.type}", f"sampling.num_steps={args.steps}", f"sampling.height={args.size}",
        f"sampling.width={args.size}", "sampling.noise_level=0.9", "sampling.guidance_scale=2.5",
        "eval.every=0", f"train.save_every={10**6}", f"data.records={records}", f"data.data_root={root}",
        "rewards=[{name: mean_color, weight: 1.0}]"])
    if args.shape == "flux12b":
        components = flux12b_components(device, dtype)
        resize = {}  # UNO's 512 / 320
    else:
        components = small_flux_components()
        resize = {"reference_long_side_single": args.size,
                  "reference_long_side_multi": args.size * 5 // 8 // 16 * 16}
    lora = LoraConfig(rank=args.lora_rank, alpha=2 * args.lora_rank, targets=PSR_TARGETS, init="gaussian")
    if args.quantization:
        policy = load_quantized(components, root / "pipeline", args, lora, device, resize)
    else:
        model_cfg = ModelConfig(name="flux_kontext", lora=lora, dtype=args.dtype, args=resize,
                                max_sequence_length=args.max_sequence_length,
                                gradient_checkpointing=args.gradient_checkpointing, offload_frozen=args.offload_frozen)
        policy = FluxKontextPolicy(components, model_cfg, device)
    trainer = GRPOTrainer(cfg, policy=policy)
    trainer.save = lambda step: None  # measure the iteration, not checkpoint I/O
    results: dict = {}
    instrument(trainer, device, results, count_flops=False)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with contextlib.suppress(KeyboardInterrupt):
        trainer.train()
    n_lora = sum(p.numel() for p in trainer.params)
    tokens = int(policy.encode_conditions(trainer.records[:1], policy_sampling(trainer))["ref_len"][0])
    print(f"shape={args.shape} device={device} dtype={args.dtype} size={args.size} refs={args.refs} "
          f"(reference tokens {tokens}) group={args.group_size} micro-batch={args.batch} steps={args.steps} "
          f"LoRA r{args.lora_rank} ({n_lora / 1e6:.1f} M) grad-ckpt={args.gradient_checkpointing} "
          f"offload_frozen={args.offload_frozen} quantization={args.quantization}")
    memory = "peak CUDA allocated" if device.type == "cuda" else "peak RSS added"
    for phase in ("rollout+reward", "train"):
        sec, mem = results[phase][-1]
        print(f"{phase:>15}: {sec:8.2f} s   {memory} {mem / 2**30:8.2f} GiB")
    if device.type == "cuda":
        print(f"iteration peak: {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB allocated "
              f"({torch.cuda.max_memory_reserved(device) / 2**30:.2f} GiB reserved); add "
              f"{T5_XXL_CLIP_L_BF16_GB:.1f} GB for the real T5-XXL + CLIP-L unless offload_frozen")


def load_quantized(components: dict, folder: Path, args, lora, device, resize: dict):
    """Save ``components`` as a pipeline folder, free them, and load a ``flux_kontext`` policy from it with
    ``model.quantization: args.quantization`` (psrl's own loader: ``load_policy_components``)."""
    import gc

    from psrl.models.config import ModelConfig
    from psrl.models.flux_kontext import FluxKontextPolicy

    for name, obj in components.items():
        obj.save_pretrained(folder / name)
    components.clear()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    cfg = ModelConfig(name="flux_kontext", path=str(folder), dtype=args.dtype, quantization=args.quantization,
                      gradient_checkpointing=args.gradient_checkpointing, offload_frozen=args.offload_frozen,
                      max_sequence_length=args.max_sequence_length, lora=lora, args=dict(resize))
    try:
        return FluxKontextPolicy.from_config(cfg, device=device)
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # 24 GB of random weights: not kept once loaded


def policy_sampling(trainer):
    from psrl.sampling import SamplingConfig

    s = trainer.cfg.sampling
    return SamplingConfig(num_steps=s.num_steps, height=s.height, width=s.width)


if __name__ == "__main__":
    main()
