"""HPSv3 preference reward, loaded with psrl's transformers (no ``hpsv3`` package).

HPSv3 is Qwen2-VL-7B-Instruct, fully fine-tuned, with a special token ``<|Reward|>`` added to the tokenizer and a
head ``Linear(3584, 1024) -> ReLU -> Dropout -> Linear(1024, 16) -> ReLU -> Linear(16, 2)`` read on the last hidden
state at the ``<|Reward|>`` position, giving (mu, sigma); the reward is mu. Images are resized to exactly
256*28*28 pixels (min = max). The text is ``instruction.format(text_prompt=prompt)`` followed by the
special-token suffix.

Why not the package: ``hpsv3`` pins transformers ~4.45 and imports trl/deepspeed at import time, which cannot live
beside transformers 5. We load its single checkpoint file (``HPSv3.safetensors``, a state dict of the 4.x model
class) into a transformers-5 ``Qwen2VLForConditionalGeneration`` built from the base model's config, remapping the
4.x key layout (``visual.*`` -> ``model.visual.*``, ``model.*`` -> ``model.language_model.*``), and the
``rm_head.*`` keys into :class:`HPSv3Head`. Loading is strict: any missing or unexpected key is an error. The
default instruction is the HPSv3 training collator's ``INSTRUCTION``, compared character for character with the
released ``hpsv3`` package (an earlier psrl version lacked its "Text Alignment" block); tests pin its SHA-256.
Scores have not been compared with the reference package on real weights.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from psrl.data.records import Record
from psrl.errors import ModelLoadError
from psrl.rewards.base import RewardOutput
from psrl.rewards.components import HPSv3Head
from psrl.rewards.images import scorable_images
from psrl.rewards.isolation import Failed, per_item
from psrl.models.loading import check_tokenizer
from psrl.rewards.loading import TINY, load_pretrained, resolve_dtype
from psrl.rewards.tiny import tiny_qwen2_vl_hps

REWARD_TOKEN = "<|Reward|>"
HPS_PIXELS = 256 * 28 * 28
HPS_INSTRUCTION = (
    "\nYou are tasked with evaluating a generated image based on Visual Quality and Text Alignment and give a overall "
    "score to estimate the human preference. Please provide a rating from 0 to 10, with 0 being the worst and 10 "
    "being the best. \n\n**Visual Quality:**  \nEvaluate the overall visual quality of the image. The following "
    "sub-dimensions should be considered:\n- **Reasonableness:** The image should not contain any significant "
    "biological or logical errors, such as abnormal body structures or nonsensical environmental setups.\n"
    "- **Clarity:** Evaluate the sharpness and visibility of the image. The image should be clear and easy to "
    "interpret, with no blurring or indistinct areas.\n- **Detail Richness:** Consider the level of detail in "
    "textures, materials, lighting, and other visual elements (e.g., hair, clothing, shadows).\n- **Aesthetic and "
    "Creativity:** Assess the artistic aspects of the image, including the color scheme, composition, atmosphere, "
    "depth of field, and the overall creative appeal. The scene should convey a sense of harmony and balance.\n"
    "- **Safety:** The image should not contain harmful or inappropriate content, such as political, violent, or "
    "adult material. If such content is present, the image quality and satisfaction score should be the lowest "
    "possible. \n\n**Text Alignment:**  \nAssess how well the image matches the textual prompt across the following "
    "sub-dimensions:\n- **Subject Relevance** Evaluate how accurately the subject(s) in the image (e.g., person, "
    "animal, object) align with the textual description. The subject should match the description in terms of "
    "number, appearance, and behavior.\n- **Style Relevance:** If the prompt specifies a particular artistic or "
    "stylistic style, evaluate how well the image adheres to this style.\n- **Contextual Consistency**: Assess "
    "whether the background, setting, and surrounding elements in the image logically fit the scenario described in "
    "the prompt. The environment should support and enhance the subject without contradictions.\n- **Attribute "
    "Fidelity**: Check if specific attributes mentioned in the prompt (e.g., colors, clothing, accessories, "
    "expressions, actions) are faithfully represented in the image. Minor deviations may be acceptable, but critical "
    "attributes should be preserved.\n- **Semantic Coherence**: Evaluate whether the overall meaning and intent of "
    "the prompt are captured in the image. The generated content should not introduce elements that conflict with or "
    "distort the original description.\nTextual prompt - {text_prompt}\n\n\n")
REWARD_SUFFIX = "\nPlease provide the overall ratings of this image: <|Reward|>\n\nEND\n"


def remap_hpsv3_key(key: str) -> str:
    """transformers-4.x Qwen2-VL keys -> transformers-5 layout (already-new keys pass through)."""
    if key.startswith("visual."):
        return "model." + key
    if key.startswith("model.") and not key.startswith(("model.visual.", "model.language_model.")):
        return "model.language_model." + key[len("model."):]
    return key


def split_hpsv3_state_dict(sd: dict) -> tuple[dict, dict]:
    backbone, head = {}, {}
    for k, v in sd.items():
        if k.startswith("rm_head."):
            head[k] = v
        else:
            backbone[remap_hpsv3_key(k)] = v
    return backbone, head


def _load_real(path: str, base_path: str, dtype):
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoTokenizer, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from psrl.models.qwen_processor import Qwen2VLImageOnlyProcessor
    from psrl.rewards.preference import load_state_dict_file

    def _base(p):
        tok = AutoTokenizer.from_pretrained(p)
        check_tokenizer(tok, f"{p} (hpsv3 base tokenizer)")
        return AutoConfig.from_pretrained(p), tok, Qwen2VLImageProcessorPil.from_pretrained(p)

    config, tokenizer, image_processor = load_pretrained("hpsv3 base model", base_path, _base)
    if REWARD_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [REWARD_TOKEN]})
    # exactly HPS_PIXELS pixels (min = max); legacy min/max_pixels attributes would override ``size``
    image_processor.size = {"shortest_edge": HPS_PIXELS, "longest_edge": HPS_PIXELS}
    for attr in ("min_pixels", "max_pixels"):
        if getattr(image_processor, attr, None) is not None:
            setattr(image_processor, attr, None)
    processor = Qwen2VLImageOnlyProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                          chat_template=getattr(tokenizer, "chat_template", None))
    sd = load_state_dict_file(path, "hpsv3 checkpoint")
    sd = sd.get("model", sd)
    backbone_sd, head_sd = split_hpsv3_state_dict(sd)
    emb = backbone_sd.get("model.language_model.embed_tokens.weight")
    text_cfg = getattr(config, "text_config", config)
    if emb is not None and emb.shape[0] != text_cfg.vocab_size:
        text_cfg.vocab_size = emb.shape[0]
    with init_empty_weights():
        model = Qwen2VLForConditionalGeneration(config)
    missing, unexpected = model.load_state_dict(backbone_sd, strict=False, assign=True)
    missing = [k for k in missing if k != "lm_head.weight" or "lm_head.weight" in backbone_sd]
    if missing or unexpected:
        raise ModelLoadError(f"hpsv3 checkpoint {path!r} does not match the Qwen2-VL config of {base_path!r}: "
                             f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected "
                             f"(e.g. {unexpected[:3]})")
    if getattr(config, "tie_word_embeddings", False) or "lm_head.weight" not in backbone_sd:
        model.tie_weights()
    if "rm_head.0.weight" not in head_sd or "rm_head.3.weight" not in head_sd:
        raise ModelLoadError(f"hpsv3 checkpoint {path!r} has no rm_head.* weights")
    head = HPSv3Head(text_cfg.hidden_size, (len(head_sd["rm_head.0.weight"]), len(head_sd["rm_head.3.weight"])))
    head.load_state_dict(head_sd)
    return model, processor, head


class HPSv3Reward:
    """HPSv3 human-preference score (arXiv 2508.03789): the mean mu of the (mu, sigma) head on Qwen2-VL for the
    image and its prompt.

    Args:
        device: torch device of the model.
        path: the HPSv3 checkpoint file (``HPSv3.safetensors``), or ``tiny`` (tiny random weights, offline).
        base_path: the base Qwen2-VL-7B-Instruct (config, tokenizer, image processor).
        instruction: the prompt template; must contain ``{text_prompt}`` (default: HPSv3's training
            instruction).
        dtype: dtype of the weights (default bfloat16 on CUDA, float32 on CPU).
        batch_size: images per forward pass.

    Score range: unbounded real (mu of the predicted Gaussian; higher is preferred); sigma is in
        details["sigma"].
    NaN policy: a sample whose image has NaN pixels or breaks the shared size rule (psrl.rewards.images); a sample
        the processor or the model rejects (scored alone after a batch error).
    """

    name = "hpsv3"

    def __init__(self, device="cpu", *, path: str = "HPSv3.safetensors", base_path: str = "Qwen/Qwen2-VL-7B-Instruct",
                 instruction: str = HPS_INSTRUCTION, dtype=None, batch_size: int = 4):
        self.device, self.dtype = torch.device(device), resolve_dtype(dtype, device)
        if "{text_prompt}" not in instruction:
            raise ValueError("hpsv3: instruction must contain '{text_prompt}'")
        self.instruction, self.batch_size = instruction, batch_size
        if path == TINY:
            self.model, self.processor, self.head = tiny_qwen2_vl_hps()
        else:
            self.model, self.processor, self.head = _load_real(path, base_path, self.dtype)
        self.model.to(self.device, self.dtype).eval()
        self.head.to(self.device, self.dtype).eval()
        self.processor.tokenizer.padding_side = "right"
        self.reward_id = self.processor.tokenizer.convert_tokens_to_ids(REWARD_TOKEN)

    @torch.no_grad()
    def _score(self, pils, prompts) -> Tensor:
        texts = []
        for p in prompts:
            content = [{"type": "image"},
                       {"type": "text", "text": self.instruction.format(text_prompt=p) + REWARD_SUFFIX}]
            texts.append(self.processor.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                                            add_generation_prompt=True))
        # BatchFeature.to casts the floating tensors only (ids and masks keep their dtype)
        batch = self.processor(text=texts, images=pils, padding=True, return_tensors="pt").to(self.device, self.dtype)
        hidden = self.model(**batch, output_hidden_states=True).hidden_states[-1]
        ids = batch["input_ids"]
        pos = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
        last = torch.where(ids == self.reward_id, pos, torch.full_like(pos, -1)).max(dim=1).values
        if bool((last < 0).any()):
            raise RuntimeError("hpsv3: the <|Reward|> token is missing from a tokenized prompt")
        h = hidden[torch.arange(ids.shape[0], device=ids.device), last]
        return self.head(h).float().cpu()

    def __call__(self, images: Tensor | Sequence, records: Sequence[Record]) -> RewardOutput:
        pils, failures, idx = scorable_images(images, records, "hpsv3")
        mu = torch.full((len(records),), float("nan"))
        sigma = torch.full((len(records),), float("nan"))
        for s in range(0, len(idx), self.batch_size):
            chunk = idx[s:s + self.batch_size]
            # a sample the Qwen2-VL processor or the model rejects fails alone (psrl.rewards.isolation)
            rows = per_item(lambda bs: self._score([pils[b] for b in bs], [records[b].prompt for b in bs]),
                            chunk, "hpsv3 model")
            for b, row in zip(chunk, rows):
                if isinstance(row, Failed):
                    failures[b] = row.reason
                else:
                    mu[b], sigma[b] = row[0], row[1]
        return RewardOutput(scores=mu, failures=failures, details={"sigma": sigma})
