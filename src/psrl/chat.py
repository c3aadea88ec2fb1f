"""The one client for OpenAI-compatible chat completions (vLLM, sglang, llama.cpp, OpenAI), over ``httpx``: the VLM
judge's remote transport (:mod:`psrl.rewards.vlm.transports`) and the data pipeline's LLM and VLM stages
(:mod:`psrl.datagen.llm`) both send their requests through :class:`ChatClient`.

Protocol: ``POST {url}/chat/completions`` with a JSON body ``{"model", "messages", ...}``; the reply's text is
``choices[0].message.content`` (OpenAI API reference, "Create chat completion"). Images travel as base64 data URLs
in ``image_url`` content parts (:func:`image_data_url`).
"""
from __future__ import annotations

import base64
import io
import logging
import time
from typing import Any

from PIL import Image

from psrl.errors import PsrlError

log = logging.getLogger(__name__)


class ChatError(PsrlError):
    """A chat request failed: the endpoint stayed unreachable, timed out or answered 429/5xx through every retry,
    refused the request (another 4xx), or replied with something that is not a chat completion. The message names
    the endpoint and the reason."""


class ChatClient:
    """``post(body) -> reply JSON`` and ``complete(content) -> text`` against ``{url}/chat/completions``.

    Args:
        url: base URL such as ``http://127.0.0.1:8000/v1`` (``/chat/completions`` is appended).
        model: the ``model`` field of every request (a body may set its own).
        api_key: sent as ``Authorization: Bearer <key>`` when given (never logged).
        timeout: seconds per request.
        retries: extra attempts after a connection error, a timeout, a 429 or a 5xx, waiting
            ``backoff * 2 ** (attempt - 1)`` seconds before each (1 s, 2 s, 4 s, ... with the default). Other
            4xx replies are not retried: the same request would be refused again.
        what: how messages name the endpoint (``"judge endpoint"``, ``"llm endpoint"``).
        defaults: fields added to every request body unless it sets them (``temperature``, ``max_tokens``).

    Raises:
        ValueError: an empty ``url``, ``timeout <= 0`` or ``retries < 0``.
    """

    def __init__(self, url: str | None, *, model: str = "default", api_key: str | None = None, timeout: float = 60.0,
                 retries: int = 3, backoff: float = 1.0, what: str = "chat endpoint",
                 defaults: dict[str, Any] | None = None):
        import httpx

        if not url:
            raise ValueError(f"{what}: a url is required (e.g. http://127.0.0.1:8000/v1)")
        if timeout <= 0 or retries < 0:
            raise ValueError(f"{what}: timeout must be > 0 and retries >= 0, got {timeout}, {retries}")
        self.url = url.rstrip("/") + "/chat/completions"
        self.model, self.timeout, self.retries, self.backoff, self.what = model, timeout, retries, backoff, what
        self.defaults = dict(defaults or {})
        headers = {"Content-Type": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._http = httpx.Client(timeout=timeout, headers=headers)

    def post(self, body: dict) -> dict:
        """Send one request (``model`` and :attr:`defaults` filled in) and return the reply's JSON object.

        Raises:
            ChatError: every attempt failed, a 4xx other than 429, or a reply that is not a JSON object.
        """
        import httpx

        body = {"model": self.model, **self.defaults, **body}
        last = "no attempt"
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                resp = self._http.post(self.url, json=body)
            except httpx.TimeoutException as e:
                last = f"timed out after {self.timeout:g}s ({type(e).__name__})"
            except httpx.HTTPError as e:
                last = f"unreachable ({type(e).__name__}: {e})"
            else:
                if resp.status_code == 429 or resp.status_code >= 500:
                    last = f"HTTP {resp.status_code}: {resp.text[:200]}"
                elif resp.status_code != 200:
                    raise ChatError(f"{self.what} {self.url}: HTTP {resp.status_code}: {resp.text[:300]}")
                else:
                    try:
                        data = resp.json()
                    except ValueError:
                        raise ChatError(f"{self.what} {self.url}: reply is not JSON: {resp.text[:200]!r}") from None
                    if not isinstance(data, dict):
                        raise ChatError(f"{self.what} {self.url}: reply is not a JSON object: {str(data)[:200]!r}")
                    return data
            log.warning("%s %s: attempt %d of %d failed: %s", self.what, self.url, attempt + 1, self.retries + 1,
                        last)
        raise ChatError(f"{self.what} {self.url}: failed after {self.retries + 1} attempts; last error: {last}")

    def complete(self, content: str | list[dict], **fields: Any) -> str:
        """One user turn (a string, or content parts with images) -> the assistant's text. ``fields`` go into the
        body (``max_tokens``, ``temperature``, ...).

        Raises:
            ChatError: as :meth:`post`, or a reply without text in ``choices[0].message.content``.
        """
        data = self.post({"messages": [{"role": "user", "content": content}], **fields})
        return message_text(data, f"{self.what} {self.url}")

    def close(self) -> None:
        self._http.close()


def message_text(data: dict, where: str = "chat endpoint") -> str:
    """``choices[0].message.content`` of a chat-completions reply.

    Raises:
        ChatError: the field is missing or not text; the message names ``where`` and shows the reply's start.
    """
    try:
        text = data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError) as e:
        raise ChatError(f"{where}: reply has no message content ({type(e).__name__}): {str(data)[:200]!r}") from None
    if not isinstance(text, str):
        raise ChatError(f"{where}: reply content is not text: {str(text)[:200]!r}")
    return text


def image_data_url(img: Image.Image, fmt: str = "png") -> str:
    """``data:image/png;base64,...`` (or JPEG for ``fmt`` ``jpg``/``jpeg``) of an image, converted to RGB."""
    jpeg = fmt.lower() in ("jpg", "jpeg")
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG" if jpeg else "PNG")
    return f"data:image/{'jpeg' if jpeg else 'png'};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


__all__ = ["ChatClient", "ChatError", "image_data_url", "message_text"]
