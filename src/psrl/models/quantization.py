"""Quantized frozen weights (``model.quantization``): the base denoiser, and the big text encoder where it stays on
the accelerator, are loaded through diffusers' / transformers' quantization configs, while the trainable LoRA on top
stays in fp32 master weights (``psrl.models.lora``) and computes in ``model.dtype``.

=========  =====================================================  ============================================
mode       weights                                                 kernels (pip package), device
=========  =====================================================  ============================================
``nf4``    4-bit NormalFloat, double-quantized scales, compute in  bitsandbytes >= 0.48, CUDA
           ``model.dtype`` (QLoRA, arXiv 2305.14314 sections 2-3)
``int8``   LLM.int8(): row-wise int8 weights, outlier activation   bitsandbytes >= 0.48, CUDA
           features multiplied in 16 bit (arXiv 2208.07339 s. 3)
``fp8``    float8 e4m3 weight-only, one scale per output row       torchao >= 0.15, CUDA compute capability
           (FP8 formats, arXiv 2209.05433)                         >= 8.9 (Ada, Hopper)
=========  =====================================================  ============================================

bitsandbytes 0.48 is the first release whose quantized models may be moved between devices with ``.to()``
(diffusers' ``ModelMixin.to`` refuses older ones), which the policies do. The VAE and CLIP are small and stay in
``model.dtype``; text encoders are quantized only without ``model.offload_frozen`` (offloading already keeps them off
the accelerator). Fusing a LoRA (``model.lora.fuse``) writes into the base weights and so needs them unquantized.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass
from typing import Any, Mapping

from packaging.version import Version

from psrl.errors import ConfigError


@dataclass(frozen=True)
class QuantizationScheme:
    """What a ``model.quantization`` mode needs: the pip ``package`` (at ``min_version``) that supplies its kernels
    and the lowest CUDA compute capability ``(major, minor)`` they run on."""

    package: str
    min_version: str
    min_capability: tuple[int, int]


QUANTIZATION_SCHEMES: dict[str, QuantizationScheme] = {
    "nf4": QuantizationScheme("bitsandbytes", "0.48.0", (0, 0)),
    "int8": QuantizationScheme("bitsandbytes", "0.48.0", (0, 0)),
    "fp8": QuantizationScheme("torchao", "0.15.0", (8, 9)),
}

# frozen text encoders big enough to matter (T5-XXL 4.7 B, Qwen2.5-VL-7B); CLIP (0.1-0.7 B) is not worth the error
LARGE_TEXT_ENCODERS = frozenset({"T5EncoderModel", "Qwen2_5_VLForConditionalGeneration"})
DENOISER = "transformer"


def quantization_problem(mode: str, *, installed: str | None, device_type: str, cuda_available: bool = False,
                         capability: tuple[int, int] | None = None) -> str | None:
    """Why ``model.quantization: mode`` cannot run, or ``None`` when it can. Pure: the environment comes in as
    ``installed`` (the backend package's version, ``None`` when absent), ``device_type`` (the run's device:
    ``"cuda"``, ``"cpu"``, ...), ``cuda_available`` (torch sees a GPU) and ``capability`` (its CUDA compute
    capability).

    Checks, in order: the backend package is installed at its minimum version, the device is CUDA, and its compute
    capability is high enough (:data:`QUANTIZATION_SCHEMES`).
    """
    scheme = QUANTIZATION_SCHEMES[mode]
    if installed is None:
        extra = "psrl[bnb]" if scheme.package == "bitsandbytes" else scheme.package
        return f"needs {scheme.package} >= {scheme.min_version}, which is not installed (pip install '{extra}')"
    if Version(installed) < Version(scheme.min_version):
        return f"needs {scheme.package} >= {scheme.min_version}, found {installed}"
    if device_type != "cuda":
        return f"needs a CUDA device ({scheme.package} kernels), but the run's device is {device_type}"
    if not cuda_available:
        return f"needs a CUDA device ({scheme.package} kernels), and torch sees none"
    if capability is not None and tuple(capability) < scheme.min_capability:
        need = ".".join(map(str, scheme.min_capability))
        return f"needs CUDA compute capability >= {need}, the GPU has {capability[0]}.{capability[1]}"
    return None


def probe_environment(mode: str, device: Any) -> dict:
    """The arguments of :func:`quantization_problem` for ``mode`` on ``device`` here: the backend's installed
    version (without importing it), the device type, whether torch sees a GPU and that GPU's compute capability."""
    import torch

    package = QUANTIZATION_SCHEMES[mode].package
    installed = None
    if importlib.util.find_spec(package) is not None:
        try:
            installed = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            installed = "0"
    dev = torch.device(device)
    cuda = dev.type == "cuda" and torch.cuda.is_available()
    return {"installed": installed, "device_type": dev.type, "cuda_available": cuda,
            "capability": tuple(torch.cuda.get_device_capability(dev)) if cuda else None}


def check_quantization(mode: str | None, device: Any) -> None:
    """Raise before anything is loaded when ``model.quantization`` cannot run here.

    Raises:
        ConfigError: one line naming ``model.quantization``, the value and what is missing (package, CUDA device,
            compute capability).
    """
    if mode is None:
        return
    problem = quantization_problem(mode, **probe_environment(mode, device))
    if problem:
        raise ConfigError(f"model.quantization: {mode!r} {problem}; set model.quantization: null to load "
                          "unquantized weights")


def quantized_components(spec: Mapping[str, tuple[str, str]], mode: str | None, *,
                         offload_frozen: bool = False) -> list[str]:
    """Names of the components of ``spec`` (name -> ``(library, class)``) that ``mode`` quantizes: the denoiser
    (``transformer``) always, the large text encoders (:data:`LARGE_TEXT_ENCODERS`) unless ``offload_frozen``.
    Empty for ``mode=None``. Pure."""
    if mode is None:
        return []
    return [name for name, (_, cls_name) in spec.items()
            if name == DENOISER or (cls_name in LARGE_TEXT_ENCODERS and not offload_frozen)]


def bnb_config_kwargs(mode: str, compute_dtype: Any) -> dict:
    """Keyword arguments of ``BitsAndBytesConfig`` (diffusers' and transformers' take the same) for ``nf4`` or
    ``int8``. ``compute_dtype`` (a ``torch.dtype``) is what 4-bit weights are dequantized to for each matmul: the
    model's ``model.dtype``. Pure.

    Raises:
        ValueError: a mode that bitsandbytes does not implement (``fp8``).
    """
    if mode == "nf4":
        # QLoRA's recipe (arXiv 2305.14314 section 3): NF4 weights, quantized quantization constants
        return {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
                "bnb_4bit_compute_dtype": compute_dtype}
    if mode == "int8":
        return {"load_in_8bit": True}
    raise ValueError(f"bitsandbytes has no {mode!r} mode (use nf4 or int8)")


def quantization_config(mode: str, library: str, compute_dtype: Any):
    """The ``quantization_config=`` object that ``library`` (``"diffusers"`` or ``"transformers"``)
    ``from_pretrained`` takes for ``mode``: ``BitsAndBytesConfig`` (nf4, int8) or ``TorchAoConfig`` with
    ``Float8WeightOnlyConfig`` (fp8). Needs the backend package (see :func:`check_quantization`)."""
    lib = importlib.import_module(library)
    if QUANTIZATION_SCHEMES[mode].package == "bitsandbytes":
        return lib.BitsAndBytesConfig(**bnb_config_kwargs(mode, compute_dtype))
    from torchao.quantization import Float8WeightOnlyConfig

    return lib.TorchAoConfig(Float8WeightOnlyConfig())


def quantization_kwargs(spec: Mapping[str, tuple[str, str]], mode: str | None, compute_dtype: Any, *,
                        offload_frozen: bool = False) -> dict[str, dict]:
    """``{component name: {"quantization_config": ...}}`` for the components :func:`quantized_components` picks;
    ``{}`` when ``mode`` is ``None``."""
    return {name: {"quantization_config": quantization_config(mode, spec[name][0], compute_dtype)}
            for name in quantized_components(spec, mode, offload_frozen=offload_frozen)}


def is_quantized(module) -> bool:
    """Whether ``module`` was loaded quantized: diffusers sets ``is_quantized`` on the model, transformers keeps an
    ``hf_quantizer``. Such a model refuses ``.to(dtype)``; its dtype was fixed at load time."""
    return bool(getattr(module, "is_quantized", False)) or getattr(module, "hf_quantizer", None) is not None


__all__ = ["LARGE_TEXT_ENCODERS", "QUANTIZATION_SCHEMES", "QuantizationScheme", "bnb_config_kwargs",
           "check_quantization", "is_quantized", "probe_environment", "quantization_config", "quantization_kwargs",
           "quantization_problem", "quantized_components"]
