"""How a judge request reaches a VLM: in-process transformers, or an OpenAI-compatible chat-completions endpoint
(vLLM, sglang). Both answer two questions for a batch of requests (images + one text turn):

* ``first_token_logprobs(requests, answer_tokens)`` -> per request a :class:`FirstToken`: ``{token: logprob}`` of
  the first answer token (the top-k tokens, plus ``answer_tokens`` exactly where the transport can compute them),
  and whether the listing is a top-k list or only the sampled token;
* ``generate(requests, max_new_tokens, temperature)`` -> per request the reply text.

A request that cannot be answered yields :class:`Failed` with the reason instead of raising, so one bad sample or
an unreachable endpoint becomes NaN + reason in the reward. The local transport batches requests; a batch the
processor or the model rejects (the Qwen2-VL processor refuses an image with an aspect ratio over 200 for the whole
batch) is retried one request at a time (:func:`psrl.rewards.isolation.per_item`), so only the bad request fails.
"""
from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import torch
from PIL import Image

from psrl.chat import ChatClient, ChatError, image_data_url, message_text
from psrl.errors import ModelLoadError
from psrl.rewards.isolation import Failed, describe, per_item
from psrl.models.loading import check_tokenizer
from psrl.rewards.loading import TINY, load_pretrained, resolve_dtype
from psrl.rewards.tiny import tiny_qwen2_5_vl

logger = logging.getLogger(__name__)


@dataclass
class JudgeRequest:
    images: list[Image.Image]
    text: str


@dataclass
class FirstToken:
    """Log-probabilities of the first answer token. ``top_k``: the listed tokens are the model's most probable
    ones (so an unlisted token is at most as probable as the least probable listed one); ``False`` when only the
    sampled token is known (a server that returns no ``top_logprobs``)."""

    logprobs: dict[str, float]
    top_k: bool = True


class Transport(Protocol):
    def first_token_logprobs(self, requests: Sequence[JudgeRequest], answer_tokens: Sequence[str]
                             ) -> list[FirstToken | Failed]: ...

    def generate(self, requests: Sequence[JudgeRequest], max_new_tokens: int, temperature: float | None
                 ) -> list[str | Failed]: ...


# ---------------------------------------------------------------------------------------------- local
_LOCAL_CACHE: dict[tuple, tuple] = {}
_LOCAL_LOCK = threading.Lock()


def _load_local_vlm(path: str, adapter_path: str | None, device, dtype):
    """(model, processor), loaded once per (path, adapter, device, dtype) in the process and shared by rewards."""
    key = (path, adapter_path, str(device), str(dtype))
    with _LOCAL_LOCK:
        if key in _LOCAL_CACHE:
            return _LOCAL_CACHE[key]
        model, processor = load_vlm(path, dtype)
        if adapter_path:
            from peft import PeftModel

            model = load_pretrained("vlm judge LoRA adapter", adapter_path,
                                    lambda p: PeftModel.from_pretrained(model, p).merge_and_unload())
        model.to(device, dtype).eval()
        processor.tokenizer.padding_side = "left"  # batched last-token logits and generation need left padding
        _LOCAL_CACHE[key] = (model, processor)
        return model, processor


def load_vlm(path: str, dtype, what: str = "vlm judge"):
    """``(model, processor)`` of a Qwen-VL judge, as built (not moved to a device, not put in eval mode): ``tiny``
    builds psrl's random tiny judge (:func:`psrl.rewards.tiny.tiny_qwen2_5_vl`), anything else loads with
    ``from_pretrained`` (the image-only processor when torchvision is missing). The one loader of the judge
    rewards and of the reward model (:mod:`psrl.reward_model.judge_model`).

    Raises:
        ModelLoadError: the path cannot be loaded; the message names ``what`` and the path.
    """
    if path == TINY:
        return tiny_qwen2_5_vl()
    return load_pretrained(what, path, lambda p: _load_hf_vlm(p, dtype))


def single_token_id(tokenizer, word: str, where: str) -> int:
    """The id of ``word`` as one token of ``tokenizer`` (no special tokens added): a first-token P(word) judge reads
    the logit of exactly that id.

    Raises:
        ModelLoadError: the tokenizer splits ``word`` into several tokens (or none); the message starts with
            ``where``.
    """
    ids = tokenizer.encode(word, add_special_tokens=False)
    if len(ids) != 1:
        raise ModelLoadError(f"{where}: the tokenizer splits {word!r} into {len(ids)} tokens; a first-token "
                             f"P({word}) judge needs it to be one token")
    return ids[0]


def _load_hf_vlm(path: str, dtype):
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    check_tokenizer(tokenizer, f"{path} (vlm judge)")
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype)
    try:
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(path)
    except (OSError, ValueError, AttributeError, ImportError, TypeError) as e:
        # Qwen2(.5)-VL processors need torchvision for their video processor
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        from psrl.models.qwen_processor import image_only_processor_class

        model_type = getattr(model.config, "model_type", "")
        if model_type not in ("qwen2_vl", "qwen2_5_vl"):
            raise
        logger.info("AutoProcessor failed for %s (%s); using the image-only Qwen processor", path, e)
        processor = image_only_processor_class(model_type)(
            image_processor=Qwen2VLImageProcessorPil.from_pretrained(path), tokenizer=tokenizer,
            chat_template=getattr(tokenizer, "chat_template", None))
    return model, processor


class LocalTransport:
    """transformers ``AutoModelForImageTextToText`` (Qwen2.5-VL family), optional peft LoRA adapter merged in."""

    def __init__(self, path: str, *, device="cpu", dtype=None, adapter_path: str | None = None, batch_size: int = 4,
                 top_logprobs: int = 20):
        self.device, self.dtype = torch.device(device), resolve_dtype(dtype, device)
        self.model, self.processor = _load_local_vlm(path, adapter_path, self.device, self.dtype)
        self.tokenizer = self.processor.tokenizer
        self.batch_size, self.top_logprobs = batch_size, top_logprobs

    def _inputs(self, requests: Sequence[JudgeRequest]):
        texts, images = [], []
        for r in requests:
            content = [{"type": "image"} for _ in r.images] + [{"type": "text", "text": r.text}]
            texts.append(self.processor.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                                            add_generation_prompt=True))
            images += r.images
        # BatchFeature.to casts the floating tensors only (ids and masks keep their dtype)
        return self.processor(text=texts, images=images or None, padding=True, return_tensors="pt").to(
            self.device, self.dtype)

    @torch.no_grad()
    def first_token_logprobs(self, requests, answer_tokens):
        ids = {t: single_token_id(self.tokenizer, t, "vlm judge") for t in answer_tokens}

        def batch(reqs: list[JudgeRequest]) -> list[FirstToken]:
            logits = self.model(**self._inputs(reqs)).logits[:, -1].float()
            rows = []
            for row in torch.log_softmax(logits, dim=-1).cpu():
                top = torch.topk(row, min(self.top_logprobs, row.numel()))
                d = {self.tokenizer.decode([int(i)]): float(v) for v, i in zip(top.values, top.indices)}
                d.update({t: float(row[i]) for t, i in ids.items()})
                rows.append(FirstToken(d, top_k=True))
            return rows

        return self._batched(batch, requests)

    @torch.no_grad()
    def generate(self, requests, max_new_tokens: int = 512, temperature: float | None = None):
        sample = temperature is not None and temperature > 0
        kwargs = {"do_sample": True, "temperature": temperature} if sample else {"do_sample": False}

        def batch(reqs: list[JudgeRequest]) -> list[str]:
            inputs = self._inputs(reqs)
            seq = self.model.generate(**inputs, max_new_tokens=max_new_tokens, **kwargs)
            return self.tokenizer.batch_decode(seq[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)

        return self._batched(batch, requests)

    def _batched(self, fn, requests: Sequence[JudgeRequest]) -> list:
        """``fn`` over chunks of ``batch_size`` requests, each chunk isolated per request on error (``per_item``)."""
        out = []
        for s in range(0, len(requests), self.batch_size):
            out += per_item(fn, requests[s:s + self.batch_size], "vlm judge")
        return out


# ---------------------------------------------------------------------------------------------- remote
def parse_first_token(data: dict) -> FirstToken | Failed:
    """The first answer token of an OpenAI-compatible chat-completions reply (``logprobs: true``):
    ``choices[0].logprobs.content[0]`` gives the sampled ``token`` / ``logprob`` and its ``top_logprobs`` list.
    An empty or absent ``top_logprobs`` (a server that caps or ignores it) leaves only the sampled token:
    ``FirstToken(top_k=False)``. A reply without them, or with a NaN or positive logprob, is :class:`Failed`."""
    try:
        first = data["choices"][0]["logprobs"]["content"][0]
        tops = first.get("top_logprobs") or []
        d = {str(t["token"]): float(t["logprob"]) for t in tops}
        d.setdefault(str(first["token"]), float(first["logprob"]))
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as e:
        return Failed(f"judge reply has no first-token logprobs ({type(e).__name__}: {e}): {str(data)[:200]!r}")
    # a log-probability is finite or -inf, and <= 0 (a little rounding above 0 is tolerated)
    if not all((math.isfinite(v) or v == -math.inf) and v <= 1e-6 for v in d.values()):
        return Failed(f"judge reply has invalid logprobs: {str(data)[:200]!r}")
    return FirstToken(d, top_k=bool(tops))


class RemoteTransport:
    """OpenAI-compatible ``POST {url}/chat/completions`` through :class:`psrl.chat.ChatClient` (per-request
    timeout, retries with exponential backoff on connection errors, timeouts, 429 and 5xx), images as base64 data
    URLs, ``logprobs`` + ``top_logprobs`` for the first token. Requests of a batch run concurrently
    (``max_concurrency`` threads); a request that fails is :class:`Failed` with the client's reason."""

    def __init__(self, url: str, *, model: str = "default", api_key: str | None = None, api_key_env: str | None = None,
                 timeout: float = 60.0, retries: int = 3, backoff: float = 1.0, max_concurrency: int = 8,
                 image_format: str = "png", top_logprobs: int = 20):
        if not url:
            raise ValueError("remote vlm judge: 'url' is required (e.g. http://127.0.0.1:8000/v1)")
        if api_key is None and api_key_env:
            api_key = os.environ.get(api_key_env)
            if api_key is None:
                raise ValueError(f"remote vlm judge: environment variable {api_key_env!r} is not set")
        self.chat = ChatClient(url, model=model, api_key=api_key, timeout=timeout, retries=retries, backoff=backoff,
                               what="judge endpoint")
        self.url, self.model = self.chat.url, model
        self.image_format, self.top_logprobs, self.max_concurrency = image_format, top_logprobs, max_concurrency

    def _messages(self, r: JudgeRequest) -> list[dict]:
        content = [{"type": "image_url", "image_url": {"url": image_data_url(im, self.image_format)}}
                   for im in r.images]
        return [{"role": "user", "content": content + [{"type": "text", "text": r.text}]}]

    def _post(self, body: dict) -> dict | Failed:
        try:
            return self.chat.post(body)
        except ChatError as e:
            return Failed(str(e))

    def _map(self, fn, items):
        def safe(x):  # a request that cannot even be built (an image that fails to encode) fails alone
            try:
                return fn(x)
            except Exception as e:  # noqa: BLE001
                return Failed(describe("vlm judge request", e))

        if len(items) <= 1 or self.max_concurrency <= 1:
            return [safe(x) for x in items]
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(items))) as pool:
            return list(pool.map(safe, items))

    def first_token_logprobs(self, requests, answer_tokens):
        def one(r: JudgeRequest):
            data = self._post({"model": self.model, "messages": self._messages(r), "max_tokens": 1,
                               "temperature": 0.0, "logprobs": True, "top_logprobs": self.top_logprobs})
            if isinstance(data, Failed):
                return data
            return parse_first_token(data)

        return self._map(one, list(requests))

    def generate(self, requests, max_new_tokens: int = 512, temperature: float | None = None):
        def one(r: JudgeRequest):
            body = {"model": self.model, "messages": self._messages(r), "max_tokens": max_new_tokens}
            if temperature is not None:
                body["temperature"] = temperature
            data = self._post(body)
            if isinstance(data, Failed):
                return data
            try:
                return message_text(data, "judge reply")
            except ChatError as e:
                return Failed(str(e))

        return self._map(one, list(requests))


def build_transport(*, transport: str = "local", device="cpu", dtype=None, path: str | None = None,
                    adapter_path: str | None = None, batch_size: int = 4, url: str | None = None,
                    model: str = "default", api_key: str | None = None, api_key_env: str | None = None,
                    timeout: float = 60.0, retries: int = 3, backoff: float = 1.0, max_concurrency: int = 8,
                    image_format: str = "png", top_logprobs: int = 20) -> Transport:
    """A judge transport from its config keys. ``top_logprobs``: how many most probable first tokens to ask for
    (remote: the request's ``top_logprobs``; some servers cap it, OpenAI at 20) or to keep (local)."""
    if isinstance(top_logprobs, bool) or not isinstance(top_logprobs, int) or top_logprobs < 0:
        raise ValueError(f"vlm judge: top_logprobs must be an integer >= 0, got {top_logprobs!r}")
    if transport == "local":
        return LocalTransport(path or "Qwen/Qwen2.5-VL-7B-Instruct", device=device, dtype=dtype,
                              adapter_path=adapter_path, batch_size=batch_size, top_logprobs=top_logprobs)
    if transport == "remote":
        return RemoteTransport(url, model=model, api_key=api_key, api_key_env=api_key_env, timeout=timeout,
                               retries=retries, backoff=backoff, max_concurrency=max_concurrency,
                               image_format=image_format, top_logprobs=top_logprobs)
    raise ValueError(f"vlm judge transport must be 'local' or 'remote', got {transport!r}")
