"""Load diffusers/transformers pipeline components with ``from_pretrained``, exactly as a user with weights would,
from a hub id (``black-forest-labs/FLUX.1-dev``) or a local directory laid out like a diffusers pipeline
(``transformer/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``, ...).

Every failure becomes a :class:`psrl.errors.ModelLoadError` whose message names the path or hub id, the component and
the fix. Two traps are handled on purpose:

* a hub id while ``HF_HUB_OFFLINE`` is set fails up front with a message suggesting a local directory, instead of a
  deep ``OSError`` from the hub client;
* transformers 5 tokenizer classes (``CLIPTokenizer``, ``T5Tokenizer``, ...) "load" a missing or empty folder as an
  almost empty tokenizer without any error, so tokenizers are loaded through
  ``AutoTokenizer`` and then probed: a tokenizer that cannot tokenize plain text into known tokens is rejected.

Reused by every policy: pass a spec mapping component names to the class that loads them.
"""
from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path
from typing import Mapping

from psrl.errors import ModelLoadError
from psrl.hub import hub_offline

logger = logging.getLogger(__name__)

# alike on purpose: a (library, class) table per pipeline, as sd3.py and qwen_edit_plus.py have theirs
# What FLUX.1-dev / FLUX.1-schnell ship, as (library, class) per subfolder. "tokenizer" means AutoTokenizer.
FLUX_COMPONENT_SPEC: dict[str, tuple[str, str]] = {
    "transformer": ("diffusers", "FluxTransformer2DModel"),
    "vae": ("diffusers", "AutoencoderKL"),
    "text_encoder": ("transformers", "CLIPTextModel"),
    "text_encoder_2": ("transformers", "T5EncoderModel"),
    "tokenizer": ("transformers", "AutoTokenizer"),
    "tokenizer_2": ("transformers", "AutoTokenizer"),
    "scheduler": ("diffusers", "FlowMatchEulerDiscreteScheduler"),
}

_PROBE_TEXT = "a photo of a dog"


def looks_like_hub_id(path: str) -> bool:
    """``org/name`` (one slash, no leading ``/``, ``.`` or ``~``) that is not an existing local path."""
    if os.path.exists(path):
        return False
    if path.startswith(("/", ".", "~")) or "\\" in path:
        return False
    parts = path.split("/")
    return len(parts) == 2 and all(parts)


def hub_cached(repo_id: str, revision: str | None = None) -> bool:
    """Whether the local Hugging Face cache holds ``repo_id`` at ``revision`` (default ``main``): its
    ``model_index.json`` or ``config.json``, or ``transformer/config.json`` (what psrl's own per-component loading
    downloads: it never fetches the pipeline's ``model_index.json``)."""
    from huggingface_hub import try_to_load_from_cache

    for filename in ("model_index.json", "config.json", "transformer/config.json"):
        try:
            if isinstance(try_to_load_from_cache(repo_id, filename, revision=revision), str):
                return True
        except Exception:  # noqa: BLE001 - a malformed id is simply not cached
            return False
    return False


def probe_hub_id(repo_id: str, timeout: float = 10.0, revision: str | None = None) -> None:
    """Ask the hub whether ``repo_id`` exists, once and with a short timeout, so a mistyped id or an unreachable
    hub is one clear sentence instead of a 30 s wait and a complaint about a missing ``config.json``.

    Raises:
        ModelLoadError: the repository does not exist (or is private without a token), or the hub did not answer.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        HfApi().model_info(repo_id, timeout=timeout, revision=revision)
    except GatedRepoError:
        return  # exists; from_pretrained will say what access it needs
    except RevisionNotFoundError as e:
        raise ModelLoadError(f"model.revision {revision!r}: the hub repository {repo_id!r} has no such branch, tag "
                             "or commit") from e
    except RepositoryNotFoundError as e:
        raise ModelLoadError(f"model path {repo_id!r} is not a local directory, and the Hugging Face hub has no "
                             "repository of that name (check the id for a typo; a private repository needs "
                             "`huggingface-cli login`)") from e
    except Exception as e:  # noqa: BLE001 - every transport failure means the same thing to the user
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        raise ModelLoadError(f"model path {repo_id!r} is not a local directory or a cached hub id, and the "
                             f"Hugging Face hub ({endpoint}) is unreachable ({type(e).__name__}); the id may be "
                             "wrong. Use a local directory for model.path, or set HF_HUB_OFFLINE=1 after "
                             "downloading the model") from e


def resolve_model_source(path: str | os.PathLike, revision: str | None = None) -> tuple[str, bool]:
    """Check a model location (and the ``revision`` pinned for a hub id) before loading anything. Returns
    ``(path, is_local)``.

    Raises:
        ModelLoadError: the local path does not exist or is not a readable directory; a revision for a local
            path; or a hub id (at that revision) not cached while the hub is offline.
    """
    text = os.path.expanduser(str(path))
    if not text:
        raise ModelLoadError("model path is empty; set model.path to a local directory or a hub id")
    if revision is not None and not looks_like_hub_id(text):
        raise ModelLoadError(f"model.revision {revision!r} pins a Hugging Face hub id, but model.path {text!r} is a "
                             "local folder; remove model.revision")
    if looks_like_hub_id(text):
        if hub_cached(text, revision):
            return text, False
        if hub_offline():
            raise ModelLoadError(
                f"model path {text!r} is not a local directory and looks like a Hugging Face hub id that is not in "
                f"the local cache{f' at revision {revision!r}' if revision else ''}, but the hub is offline "
                f"(HF_HUB_OFFLINE is set); the id may be wrong. Download "
                f"the model once (e.g. `huggingface-cli download {text} --local-dir <dir>`) and set model.path to "
                "that local directory, or unset HF_HUB_OFFLINE.")
        probe_hub_id(text, revision=revision)
        return text, False
    p = Path(text)
    if not p.exists():
        raise ModelLoadError(f"model path {text!r} does not exist; set model.path to a local pipeline directory "
                             "(with transformer/, vae/, ... subfolders) or a hub id like 'org/name'")
    if not p.is_dir():
        raise ModelLoadError(f"model path {text!r} is not a directory; expected a diffusers pipeline folder "
                             "(with transformer/, vae/, ... subfolders)")
    if not os.access(p, os.R_OK | os.X_OK):
        raise ModelLoadError(f"model path {text!r} is not readable (permission denied)")
    return text, True


def check_tokenizer(tokenizer, where: str) -> None:
    """Reject the silently empty tokenizers transformers 5 returns for a missing vocabulary."""
    vocab_size = len(tokenizer)
    ids = tokenizer(_PROBE_TEXT, add_special_tokens=False)["input_ids"]
    unk = tokenizer.unk_token_id
    known = [i for i in ids if i != unk and i not in (tokenizer.all_special_ids or [])]
    if vocab_size < 3 or not known:
        raise ModelLoadError(
            f"tokenizer at {where} has no usable vocabulary ({vocab_size} tokens; {_PROBE_TEXT!r} -> {ids}). "
            "Its vocabulary files are missing or unreadable; re-download the model or fix the folder.")


def load_component(path: str, subfolder: str, library: str, class_name: str, *, is_local: bool,
                   torch_dtype=None, revision: str | None = None, variant: str | None = None, **kwargs):
    """``Class.from_pretrained(path, subfolder=...)`` with errors turned into :class:`ModelLoadError`.

    ``nn.Module`` classes get ``torch_dtype`` (diffusers) / ``dtype`` (transformers), ``variant`` (a weight-file
    variant such as ``fp16``; tokenizers and schedulers have none) and ``.eval()``; every class gets ``revision``
    (a hub branch, tag or commit). Tokenizers (and the tokenizer inside a processor) are probed for a usable
    vocabulary.
    """
    where = f"{path}/{subfolder}" if is_local else f"hub id {path!r}, subfolder {subfolder!r}"
    if is_local and not (Path(path) / subfolder).is_dir():
        raise ModelLoadError(f"model path {path!r} has no {subfolder!r} folder; expected a diffusers pipeline "
                             f"folder with one subfolder per component (missing: {subfolder})")
    import torch

    cls = getattr(importlib.import_module(library), class_name)
    is_model = isinstance(cls, type) and issubclass(cls, torch.nn.Module)
    load_kwargs = dict(kwargs, subfolder=subfolder)
    if torch_dtype is not None and is_model:
        load_kwargs["torch_dtype" if library == "diffusers" else "dtype"] = torch_dtype
    if revision is not None:
        load_kwargs["revision"] = revision
    if variant is not None and is_model:
        load_kwargs["variant"] = variant
    try:
        obj = cls.from_pretrained(path, **load_kwargs)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"could not load {subfolder} ({class_name}) from {where}: {exc}") from exc
    if is_model:
        obj.eval()
    elif "Tokenizer" in class_name:
        check_tokenizer(obj, where)
    elif "Processor" in class_name and getattr(obj, "tokenizer", None) is not None:
        check_tokenizer(obj.tokenizer, where)  # a processor bundles a tokenizer that can be silently empty too
    return obj


def load_components(path: str | os.PathLike, spec: Mapping[str, tuple[str, str]] = FLUX_COMPONENT_SPEC, *,
                    torch_dtype=None, revision: str | None = None, variant: str | None = None,
                    component_kwargs: Mapping[str, dict] | None = None, **kwargs) -> dict:
    """Load every component of ``spec`` (name -> ``(library, class)``; the name is the subfolder), at hub
    ``revision`` (``model.revision``) with weight files of ``variant`` (``model.variant``) when given.
    ``component_kwargs[name]`` adds ``from_pretrained`` keywords for one component (its ``quantization_config``).

    Returns a dict suitable for ``Pipeline(**components)``. All models come back in eval mode.
    """
    source, is_local = resolve_model_source(path, revision)
    extra = dict(component_kwargs or {})
    logger.info("loading %s from %s%s%s", ", ".join(spec), source, f" at revision {revision}" if revision else "",
                f" (variant {variant})" if variant else "")
    return {name: load_component(source, name, lib, cls_name, is_local=is_local, torch_dtype=torch_dtype,
                                 revision=revision, variant=variant, **{**kwargs, **extra.get(name, {})})
            for name, (lib, cls_name) in spec.items()}


def load_policy_components(model_cfg, spec: Mapping[str, tuple[str, str]], device="cpu") -> dict:
    """A policy's components as ``model_cfg`` (a :class:`psrl.models.config.ModelConfig`) asks: ``path`` at
    ``revision`` with ``variant`` weight files, frozen weights in ``dtype``, and the components
    :func:`psrl.models.quantization.quantized_components` picks loaded with ``quantization``. Every policy's
    ``from_config`` loads through this one function.

    Raises:
        ConfigError: ``model.quantization`` cannot run on ``device`` here (checked before anything is read).
        ModelLoadError: see :func:`load_components`.
    """
    from psrl.models.quantization import check_quantization, quantization_kwargs

    dtype = torch_dtype_from_name(model_cfg.dtype)
    quantization = getattr(model_cfg, "quantization", None)
    check_quantization(quantization, device)
    per_component = quantization_kwargs(spec, quantization, dtype, offload_frozen=model_cfg.offload_frozen)
    return load_components(model_cfg.path, spec, torch_dtype=dtype, revision=model_cfg.revision,
                           variant=model_cfg.variant, component_kwargs=per_component)


def model_source(model_cfg) -> dict:
    """Where a policy's weights came from, for the run directory (``env.json``) and model cards: ``path``,
    ``revision``, ``variant`` and ``commit``, the hub commit they were loaded at (the pinned commit, else the one
    the revision resolved to in the local Hub cache when the model was downloaded; a local folder inside a Hub
    cache snapshot gives its snapshot's commit). ``commit`` is ``None`` for ``tiny``, other local folders, and
    hub ids the cache does not know. Call it after the policy is built; no network."""
    from psrl.hub import resolved_commit, snapshot_commit

    path = str(model_cfg.path)
    revision = getattr(model_cfg, "revision", None)  # a reward-model config has no pins
    out = {"path": path, "revision": revision, "variant": getattr(model_cfg, "variant", None), "commit": None}
    if path == "tiny":
        return out
    text = os.path.expanduser(path)
    if looks_like_hub_id(text):
        out["commit"] = resolved_commit(text, revision)
    elif os.path.isdir(text):
        out["path"] = os.path.abspath(text)
        out["commit"] = snapshot_commit(os.path.realpath(text)) or snapshot_commit(text)
    return out


# psrl's one dtype vocabulary: the torch names, plus the short forms accelerate's --mixed_precision uses
DTYPE_NAMES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
               "float16": "float16", "fp16": "float16"}


def torch_dtype_from_name(name: str):
    """A name of :data:`DTYPE_NAMES` (``"float32" | "bfloat16" | "float16"`` or ``fp32 | bf16 | fp16``) ->
    ``torch.dtype``.

    Raises:
        ValueError: any other name, listing the accepted ones.
    """
    import torch

    if name not in DTYPE_NAMES:
        raise ValueError(f"unknown dtype {name!r}; use one of {sorted(DTYPE_NAMES)}")
    return getattr(torch, DTYPE_NAMES[name])


__all__ = [
    "DTYPE_NAMES",
    "FLUX_COMPONENT_SPEC",
    "check_tokenizer",
    "load_component",
    "load_components",
    "load_policy_components",
    "looks_like_hub_id",
    "model_source",
    "resolve_model_source",
    "torch_dtype_from_name",
]
