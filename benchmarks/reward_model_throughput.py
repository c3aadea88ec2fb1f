"""Training throughput and peak memory of one reward-model step: psrl's ``RewardModelTrainer`` step (weighted
first-token loss on the reply's logits only) against the baseline of the same model, batch and LoRA trained with
transformers' built-in causal-LM loss (``model(**inputs, labels=labels)``: logits of every position).

``--shape 7b`` builds Qwen2.5-VL-7B-Instruct's layout with random weights, directly on the device in ``--dtype``:
language model 28 layers x 3584 (28 heads, 4 KV heads, MLP 18944, vocabulary 152064), vision tower 32 blocks x 1280
(16 heads, MLP 3420, window 112, full attention in blocks 7/15/23/31), merger to 3584 (the shapes of the
checkpoint's ``config.json``). ``--layers`` / ``--vision-depth`` keep only the first blocks (a quick look at a
smaller GPU); ``--shape small`` is a width-256 model for a CPU run of the script. The tokenizer is psrl's tiny one
(token ids only matter through the sequence length) with the real image processor's pixel limits (3136 to 12845056
pixels, 14 px patches merged 2 x 2), so an image costs the tokens it costs the real judge.

The data are ``--batch`` pairs of random ``--image-size`` px images with the PaCo v1 prompt and a reply of
``--reply-tokens`` tokens. Each side runs a warm-up step, then ``--steps`` measured ones; the table shows seconds
per step, pairs/s, tokens/s and peak memory (CUDA ``max_memory_allocated``; on the CPU the peak RSS the step added),
and the psrl / transformers ratios.

    python benchmarks/reward_model_throughput.py --shape small --steps 2                       # CPU smoke run
    python benchmarks/reward_model_throughput.py --device cuda --dtype bfloat16 --batch 8 --gradient-checkpointing
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grpo_iteration import measure  # noqa: E402

SHAPES = {
    # Qwen/Qwen2.5-VL-7B-Instruct config.json
    "7b": {"text": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                    "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
                    "rope_parameters": {"rope_type": "default", "mrope_section": [16, 24, 24],
                                        "rope_theta": 1000000.0}},
           "vision": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                      "out_hidden_size": 3584, "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31]}},
    "small": {"text": {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4,
                       "num_key_value_heads": 2, "vocab_size": 4096,
                       "rope_parameters": {"rope_type": "default", "mrope_section": [8, 12, 12],
                                           "rope_theta": 1000000.0}},
              "vision": {"depth": 2, "hidden_size": 128, "intermediate_size": 256, "num_heads": 4,
                         "out_hidden_size": 256, "window_size": 112, "fullatt_block_indexes": [1]}},
}


def build(args, device: torch.device, dtype: torch.dtype):
    """``(model, processor)``: random weights in the chosen layout, built on ``device`` in ``dtype``."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from psrl.models.qwen_processor import Qwen2_5_VLImageOnlyProcessor
    from psrl.models.tiny_more import QWEN_SPECIALS
    from psrl.rewards.tiny import tiny_qwen_tokenizer

    tok = tiny_qwen_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in ["<|endoftext|>", "<|im_end|>", *QWEN_SPECIALS]}
    shape = SHAPES[args.shape]
    text, vision = dict(shape["text"]), dict(shape["vision"])
    if args.layers:
        text["num_hidden_layers"] = args.layers
    if args.vision_depth:
        vision["depth"] = args.vision_depth
        vision["fullatt_block_indexes"] = [i for i in vision["fullatt_block_indexes"] if i < args.vision_depth] \
            or [args.vision_depth - 1]
    text.update(bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                              video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                              vision_end_token_id=ids["<|vision_end|>"])
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        torch.manual_seed(0)
        with device:
            model = Qwen2_5_VLForConditionalGeneration(config).eval()
    finally:
        torch.set_default_dtype(old)
    processor = Qwen2_5_VLImageOnlyProcessor(
        image_processor=Qwen2VLImageProcessorPil(min_pixels=3136, max_pixels=12845056), tokenizer=tok,
        chat_template=tok.chat_template)
    return model, processor


def write_pairs(folder: Path, n: int, size: int, reply_tokens: int) -> Path:
    from psrl.rewards.vlm.prompts import paco_prompt

    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        for k in "ab":
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}{k}.png")
        # the tiny tokenizer has one token per byte: the answer token, then reply_tokens - 1 bytes of reasons
        reasons = (". " + "the subject keeps its look " * reply_tokens)[:reply_tokens - 1]
        reply = ("Yes" if i % 2 == 0 else "No") + reasons
        rows.append({"id": f"p{i}", "images": [f"{i}a.png", f"{i}b.png"], "response": reply,
                     "prompt": paco_prompt("v1", "a cat in four seasons")})
    path = folder / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="7b")
    ap.add_argument("--layers", type=int, help="keep only the first N language-model layers")
    ap.add_argument("--vision-depth", type=int, help="keep only the first N vision blocks")
    ap.add_argument("--batch", type=int, default=2, help="pairs per step")
    ap.add_argument("--image-size", type=int, default=512)
    ap.add_argument("--reply-tokens", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3, help="measured steps (after one warm-up step)")
    ap.add_argument("--lora-rank", type=int, default=32)
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--threads", type=int, default=1, help="CPU threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from psrl.reward_model.judge_model import PairwiseJudgeModel
    from psrl.reward_model.reward_model_config import (JudgeLoraConfig, JudgeModelConfig, PairDataConfig,
                                                       RewardModelConfig, RewardModelRunConfig)
    from psrl.reward_model.reward_model_trainer import RewardModelTrainer
    from psrl.rl.run_config import RunSection

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    t0 = time.perf_counter()
    model, processor = build(args, device, dtype)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"built {args.shape} ({n_params / 1e6:.1f} M parameters, {args.dtype}) on {device} in "
          f"{time.perf_counter() - t0:.1f} s")
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pairs = write_pairs(tmp, args.batch * (args.steps + 1), args.image_size, args.reply_tokens)
        cfg = RewardModelRunConfig(
            model=JudgeModelConfig(path=f"random {args.shape}", dtype=args.dtype,
                                   gradient_checkpointing=args.gradient_checkpointing,
                                   lora=JudgeLoraConfig(rank=args.lora_rank)),
            train=RewardModelConfig(max_steps=args.steps + 1, batch_size=args.batch, gradient_accumulation=1,
                                    cutoff_len=10**6, device="cuda" if device.type == "cuda" else "cpu",
                                    mixed_precision="bf16" if dtype == torch.bfloat16 else "no",
                                    save_merged=False, warmup_ratio=0.0, lr_scheduler="constant"),
            data=PairDataConfig(train=str(pairs), num_workers=4),
            run=RunSection(output_dir=str(tmp / "runs"), name="bench"))
        trainer = RewardModelTrainer(cfg, model=PairwiseJudgeModel(cfg.model, components=(model, processor)))
        step = trainer.run_step

        def timed(s):
            with measure("psrl" if s else "psrl warm-up", device, results):
                out = step(s)
            results.setdefault("psrl tokens", []).append(out["tokens"])
            return out

        trainer.run_step = timed
        trainer.train()

        # the baseline: transformers' own loss (logits of every position), same pairs, same LoRA and optimizer
        module, opt = trainer.policy.module, trainer.optimizer
        module.train(True)
        for s in range(args.steps + 1):
            items = trainer.train_items[s * args.batch:(s + 1) * args.batch]
            name = "transformers" if s else "transformers warm-up"
            with measure(name, device, results):
                enc = trainer._encode(items).to(trainer.accelerator.device, trainer.policy.dtype)
                opt.zero_grad(set_to_none=True)
                with trainer.autocast():
                    loss = module(**enc.inputs, labels=enc.labels, use_cache=False).loss
                loss.backward()
                opt.step()
            results.setdefault("transformers tokens", []).append(int(enc.inputs["attention_mask"].sum()))

    memory = "peak CUDA allocated" if device.type == "cuda" else "peak RSS added"
    print(f"{args.batch} pairs per step, {args.image_size} px images, {args.reply_tokens}-token replies, LoRA rank "
          f"{args.lora_rank}, gradient checkpointing {'on' if args.gradient_checkpointing else 'off'}")
    print(f"| loss | s/step | pairs/s | tokens/s | {memory} |")
    print("|---|---|---|---|---|")
    row = {}
    for name in ("psrl", "transformers"):
        secs = float(np.median([s for s, _ in results[name]]))
        mem = max(m for _, m in results[name])
        tokens = results[f"{name} tokens"][1:]
        row[name] = (secs, mem)
        label = "psrl (weighted first-token, reply logits)" if name == "psrl" else "transformers (labels=, all logits)"
        print(f"| {label} | {secs:.3f} | {args.batch / secs:.2f} | {np.mean(tokens) / secs:.0f} | "
              f"{mem / 2**30:.2f} GiB |")
    print(f"ratio psrl/transformers: time {row['psrl'][0] / row['transformers'][0]:.3f}, memory "
          f"{row['psrl'][1] / max(row['transformers'][1], 1):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
