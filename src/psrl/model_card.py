"""The model card of a pushed run, in the diffusers LoRA style: YAML metadata (``huggingface_hub.ModelCardData``:
``base_model``, ``library_name: diffusers``, ``widget`` sample images, ``tags`` with ``template:sd-lora``) and the
sections of the cards diffusers' LoRA training scripts write (huggingface/diffusers@5700e52
examples/dreambooth/train_dreambooth_lora_flux.py ``save_model_card``: title, ``<Gallery />``, model description,
trigger words, download, the ``load_lora_weights`` snippet), plus what an RL run adds: the recipe, the rewards, the
steps and the evaluation metrics from ``metrics.jsonl``.

Pure: :func:`render_model_card` turns a :class:`RunSummary` (built by :mod:`psrl.push`) into the card's text.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

#: policy registry name -> (diffusers pipeline class, Hub pipeline tag, model-family tag)
PIPELINES: dict[str, tuple[str, str, str]] = {
    "flux": ("FluxPipeline", "text-to-image", "flux"),
    "flux_kontext": ("FluxKontextPipeline", "image-to-image", "flux"),
    "sd3": ("StableDiffusion3Pipeline", "text-to-image", "sd3"),
    "qwen_image_edit_plus": ("QwenImageEditPlusPipeline", "image-to-image", "qwen-image"),
}
_GENERIC = ("DiffusionPipeline", "text-to-image", "")

#: config keys whose values are secrets (a reward's ``api_key``); ``*_env`` / ``*_file`` only say where one is
_SECRET_KEY = re.compile(r"(key|token|secret|password)", re.IGNORECASE)

_EVAL_ROWS = 8  # evaluation rows shown in the card (first, last and evenly spaced between)


@dataclass
class SampleImage:
    """An image of the run shown in the card's gallery: ``path`` in the repository and its caption."""

    path: str
    caption: str


@dataclass
class RunSummary:
    """What a model card says about a run (see :func:`psrl.push.summarize_run`).

    Attributes:
        name: the run's name.
        kind: ``grpo`` or ``sft``.
        config: the run's ``config.yaml`` as plain data (secrets already redacted).
        step: the step of the pushed checkpoint; ``ema``: whether its EMA weights are the ones pushed.
        fused: LoRAs fused into the base under the trained one (``{path, scale}``); non-empty means the main file
            is the combined LoRA.
        metrics: the rows of ``metrics.jsonl``.
        model: where the base weights came from (``path``, ``revision``, ``variant``, ``commit``).
        psrl_version: the version that trained the run.
        weight_name: the main LoRA file; ``stage_weight_name``: the trained stage alone (when ``fused``).
        images: the gallery.
    """

    name: str
    kind: str
    config: dict
    step: int
    ema: bool = False
    fused: list = field(default_factory=list)
    metrics: list = field(default_factory=list)
    model: dict = field(default_factory=dict)
    psrl_version: str | None = None
    weight_name: str = "pytorch_lora_weights.safetensors"
    stage_weight_name: str | None = None
    images: list = field(default_factory=list)


def redact(value, key: str = ""):
    """``value`` with every secret-looking key's value (``api_key``, ``token``, ...) replaced by ``"***"``,
    recursively; ``*_env`` and ``*_file`` keys (where a secret lives, not the secret) are kept. Pure."""
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, key) for v in value]
    if key and _SECRET_KEY.search(key) and not key.endswith(("_env", "_file")) and value is not None:
        return "***"
    return value


def _hub_id(path: str) -> bool:
    parts = str(path).split("/")
    return len(parts) == 2 and all(parts) and not str(path).startswith((".", "/", "~"))


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4g}"  # nan and inf print as themselves
    return str(v)


def _section(cfg: dict, name: str) -> dict:
    value = cfg.get(name)
    return value if isinstance(value, dict) else {}


def example_prompts(cfg: dict, n: int = 3, sections: tuple[str, ...] = ("eval", "data")) -> list[str]:
    """Up to ``n`` prompts the run used, when they are inline: eval records first, then training records."""
    out = []
    for section in sections:
        records = _section(cfg, section).get("records")
        if isinstance(records, list):
            out += [r for r in records if isinstance(r, str) and r not in out]
    return out[:n]


def card_metadata(s: RunSummary, *, license: str | None = None) -> dict:
    """The YAML metadata of the card (as ``ModelCardData`` keyword arguments)."""
    model = _section(s.config, "model")
    pipe, task, family = PIPELINES.get(model.get("name"), _GENERIC)
    base = s.model.get("path") or model.get("path")
    tags = [task, "diffusers", "lora", "template:sd-lora", "psrl", s.kind] + \
        (["flow-grpo"] if s.kind == "grpo" else []) + ([family] if family else [])
    meta = {"library_name": "diffusers", "pipeline_tag": task, "tags": tags,
            "widget": [{"text": im.caption, "output": {"url": im.path}} for im in s.images]}
    if base and _hub_id(base):
        meta["base_model"] = base
        meta["base_model_relation"] = "adapter"
    if license:
        meta["license"] = license
    datasets = [r.removeprefix("hf://").removeprefix("datasets/").split("@")[0].split("/", 2)[:2]
                for r in (_section(s.config, "data").get("records"),) if isinstance(r, str) and r.startswith("hf://")]
    if datasets:
        meta["datasets"] = ["/".join(d) for d in datasets]
    return meta


def _snippet(s: RunSummary, repo_id: str) -> str:
    model = _section(s.config, "model")
    pipe, task, _ = PIPELINES.get(model.get("name"), _GENERIC)
    base = s.model.get("path") or model.get("path") or "<base model>"
    pin = s.model.get("commit") or s.model.get("revision")
    extra = f', revision="{pin}"' if pin and _hub_id(base) else ""
    if s.model.get("variant"):
        extra += f', variant="{s.model["variant"]}"'
    prompt = (example_prompts(s.config, 1) or ["a photo of a dog"])[0].replace('"', '\\"')
    lines = ["import torch", f"from diffusers import {pipe}"]
    if task == "image-to-image":
        lines.append("from diffusers.utils import load_image")
    lines += ["", f'pipeline = {pipe}.from_pretrained("{base}"{extra}, torch_dtype=torch.bfloat16).to("cuda")',
              f'pipeline.load_lora_weights("{repo_id}", weight_name="{s.weight_name}")']
    if task == "image-to-image":
        images = '[load_image("subject1.png"), load_image("subject2.png")]' \
            if pipe == "QwenImageEditPlusPipeline" else 'load_image("subject.png")'
        lines.append(f'image = pipeline(image={images}, prompt="{prompt}").images[0]')
    else:
        lines.append(f'image = pipeline("{prompt}").images[0]')
    return "\n".join(lines)


def _recipe(s: RunSummary) -> list[str]:
    cfg = s.config
    model, lora = _section(cfg, "model"), _section(_section(cfg, "model"), "lora")
    rows = [("policy", model.get("name")), ("base model", s.model.get("path") or model.get("path")),
            ("base revision / commit", " / ".join(_fmt(v) for v in (s.model.get("revision"), s.model.get("commit")))),
            ("LoRA rank / alpha / targets", f"{lora.get('rank')} / {lora.get('alpha')} / {lora.get('targets')}")]
    if s.kind == "grpo":
        t, smp, adv = _section(cfg, "train"), _section(cfg, "sampling"), _section(cfg, "advantage")
        groups, size = t.get("groups_per_step"), t.get("group_size")
        rows += [("steps", f"{s.step} of {t.get('max_steps')}"),
                 ("images per step", f"{groups} groups x {size}" if groups and size else "n/a"),
                 ("loss / advantage", f"{t.get('loss', 'ppo')} / {adv.get('mode')}"),
                 ("learning rate / clip range / KL beta", f"{t.get('lr')} / {t.get('clip_range')} / {t.get('beta')}"),
                 ("sampling", f"{smp.get('num_steps')} steps at {smp.get('height')}x{smp.get('width')}, "
                              f"{smp.get('sde_kind')} noise level {smp.get('noise_level')}, trained steps "
                              f"{smp.get('train_steps')}"),
                 ("seed", t.get("seed"))]
    else:
        t = _section(cfg, "sft")
        rows += [("steps", f"{s.step} of {t.get('max_steps')}"),
                 ("batch size x accumulation", f"{t.get('batch_size')} x {t.get('gradient_accumulation')}"),
                 ("learning rate", t.get("lr")), ("resolution", f"{t.get('height')}x{t.get('width')}"),
                 ("seed", t.get("seed"))]
    records = _section(cfg, "data").get("records")
    rows.append(("training records", f"{len(records)} inline prompts" if isinstance(records, list) else records))
    rows.append(("weights pushed", f"step {s.step}, {'EMA' if s.ema else 'raw'} LoRA weights"))
    if s.psrl_version:
        rows.append(("psrl version", s.psrl_version))
    out = ["| setting | value |", "|---|---|"] + [f"| {k} | {_fmt(v)} |" for k, v in rows]
    rewards = cfg.get("rewards") if isinstance(cfg.get("rewards"), list) else []
    if rewards:
        out += ["", "Rewards (the advantage combines them with these weights):", "",
                "| reward | weight | arguments |", "|---|---|---|"]
        out += [f"| `{r.get('name')}` | {_fmt(r.get('weight'))} | `{json.dumps(r.get('args') or {})}` |"
                for r in rewards if isinstance(r, dict)]
    return out


def _spread(rows: list, n: int) -> list:
    if len(rows) <= n:
        return rows
    idx = sorted({round(i * (len(rows) - 1) / (n - 1)) for i in range(n)})
    return [rows[i] for i in idx]


def _metrics(s: RunSummary) -> list[str]:
    rows = [r for r in s.metrics if isinstance(r, dict)]
    evals = [r for r in rows if any(k.startswith("eval/") for k in r)]
    out = []
    if evals:
        keys = sorted({k for r in evals for k in r if k.startswith("eval/")})
        out += ["Evaluation (ODE samples of the fixed eval prompts, scored by the training rewards; n/a = no sample "
                "could be scored):", "", "| step | " + " | ".join(f"`{k}`" for k in keys) + " |",
                "|---|" + "---|" * len(keys)]
        out += [f"| {r.get('step')} | " + " | ".join(_fmt(r.get(k)) for k in keys) + " |"
                for r in _spread(evals, _EVAL_ROWS)]
    else:
        out.append("No evaluation ran during training (`eval.every` was 0), so there are no eval metrics.")
    key = "reward/total/mean" if s.kind == "grpo" else "loss"
    train = [r for r in rows if key in r]
    if train:
        first, last = train[0], train[-1]
        spread = "reward/total/std" if s.kind == "grpo" else ""
        a, b = (_fmt(r.get(key)) + (f" +- {_fmt(r.get(spread))}" if spread in r else "") for r in (first, last))
        out += ["", f"Training `{key}`: {a} at step {first.get('step')} -> {b} at step {last.get('step')} "
                    "(`metrics.jsonl` in this repository has every logged step)."]
    return out


def render_model_card(s: RunSummary, repo_id: str, *, license: str | None = None) -> str:
    """The README.md of the model repository ``repo_id`` for run ``s``: YAML metadata then markdown."""
    from huggingface_hub import ModelCardData

    model = _section(s.config, "model")
    pipe, task, _ = PIPELINES.get(model.get("name"), _GENERIC)
    base = s.model.get("path") or model.get("path") or "the base model"
    if _hub_id(base):
        base_text = f"[{base}](https://huggingface.co/{base})"
    elif base == "tiny":
        base_text = "psrl's tiny random-weight model (built in code for tests and demos; the LoRA only fits it)"
    else:
        base_text = f"the local model `{base}`"
    meta = ModelCardData(**card_metadata(s, license=license)).to_yaml()
    method = ("GRPO for flow matching (Flow-GRPO, arXiv 2505.05470): SDE rollouts in groups per prompt, "
              "group-relative advantages from the rewards below, clipped policy-gradient updates of the LoRA"
              if s.kind == "grpo" else
              "supervised flow-matching fine-tuning on records with target images (PSR stage 1, arXiv 2512.01236)")
    lines = ["---", meta, "---", "",
             "<!-- This model card was generated by `psrl push` from the run's config.yaml, metrics.jsonl and "
             "samples/. Proofread and complete it. -->", "",
             f"# {repo_id}: LoRA for {base} trained with psrl ({s.kind.upper()})", "", "<Gallery />", "",
             "## Model description", "",
             f"These are LoRA weights for {base_text}, trained with psrl by {method}. Run `{s.name}`, checkpoint step "
             f"{s.step}."]
    if s.fused:
        fused = ", ".join(f"`{e.get('path')}` (scale {_fmt(e.get('scale'))})" for e in s.fused)
        lines += ["", f"The run trained its LoRA on a base with {fused} fused into it (PSR's two stages). "
                      f"`{s.weight_name}` is the exact sum of both (ranks stacked, as `psrl lora combine` writes it), "
                      f"so it loads on the plain base model; `{s.stage_weight_name}` is the trained stage alone, "
                      "for a base that already has the first stage fused."]
    lines += ["", "## Trigger words", ""]
    prompts = example_prompts(s.config)
    if task == "image-to-image":
        lines.append("No trigger word. Give an instruction and the subject reference image(s), as for the base "
                     "model; multi-subject prompts name each subject by its phrase.")
    else:
        lines.append("No trigger word: prompt as for the base model.")
    if prompts:
        lines += ["Prompts from the run: " + "; ".join(f"`{p}`" for p in prompts) + "."]
    lines += ["", "## Download model", "",
              f"[Download the *.safetensors LoRA](https://huggingface.co/{repo_id}/tree/main) in the Files & "
              "versions tab.", "",
              "## Use it with the [🧨 diffusers library](https://github.com/huggingface/diffusers)", "",
              "```py", _snippet(s, repo_id), "```", ""]
    if model.get("name") == "flux_kontext":
        lines += ["diffusers' `FluxKontextPipeline` takes one reference image; for several references with the "
                  "position ids the run trained with, use `psrl generate --config psrl_config.yaml --lora "
                  f"{s.weight_name}`.", ""]
    command = "train" if s.kind == "grpo" else "sft"
    lines += ["For more details, including weighting, merging and fusing LoRAs, check the [documentation on loading "
              "LoRAs in diffusers](https://huggingface.co/docs/diffusers/main/en/using-diffusers/loading_adapters)",
              "", "## Training details", ""]
    lines += _recipe(s)
    lines += ["", f"The full config is `psrl_config.yaml` in this repository (`psrl {command} --config "
                  "psrl_config.yaml` reruns it; secret values are replaced by `***`).", "", "## Evaluation", ""]
    lines += _metrics(s)
    lines += ["", "## Intended uses & limitations", "",
              "A research artifact from RL post-training: rewards are proxies, so check the samples for reward "
              "hacking before relying on it. The base model's license and use restrictions apply.", ""]
    return "\n".join(lines)


__all__ = ["PIPELINES", "RunSummary", "SampleImage", "card_metadata", "example_prompts", "redact",
           "render_model_card"]
