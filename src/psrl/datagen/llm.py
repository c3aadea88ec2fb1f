"""A small client for OpenAI-compatible chat completions (text and image inputs) and the strict reply parsing the
prompt and instruction stages share.

Strictness, as for the VLM judge: a reply is used only when it has the requested ``[Tag]: text`` field and the text
names every subject; otherwise the sample is rejected with the reason and the raw reply is kept. Nothing is ever
filled in with a default.
"""
from __future__ import annotations

import base64
import io
import logging
import os
import re
import time
from pathlib import Path

from psrl.datagen.config import EndpointConfig
from psrl.errors import PsrlError

log = logging.getLogger(__name__)


class EndpointError(PsrlError):
    """The endpoint failed after all retries (connection error, timeout, HTTP error, malformed response)."""


class ChatClient:
    """``complete(content) -> str`` against ``<url>/chat/completions``, with a timeout per request and retries with
    exponential backoff (1 s, 2 s, 4 s, ...) on connection errors, timeouts, 429 and 5xx responses."""

    def __init__(self, cfg: EndpointConfig, *, backoff_s: float = 1.0):
        if not cfg.url:
            raise ValueError("ChatClient needs an endpoint url")
        import httpx

        self.cfg = cfg
        self.url = cfg.url.rstrip("/") + "/chat/completions"
        self.backoff_s = backoff_s
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._http = httpx.Client(timeout=cfg.timeout_s, headers=headers)

    def complete(self, content: str | list[dict]) -> str:
        """One user turn (a string, or OpenAI content parts with images) -> the assistant's text."""
        import httpx

        body = {"model": self.cfg.model, "messages": [{"role": "user", "content": content}],
                "temperature": self.cfg.temperature, "max_tokens": self.cfg.max_tokens}
        last_error = "no attempt"
        for attempt in range(self.cfg.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                resp = self._http.post(self.url, json=body)
            except httpx.HTTPError as e:
                last_error = f"{type(e).__name__}: {e}"
                log.warning("%s: attempt %d failed: %s", self.url, attempt + 1, last_error)
                continue
            if resp.status_code == 429 or resp.status_code >= 500:
                last_error = f"HTTP {resp.status_code}: {resp.text[:200]}"
                log.warning("%s: attempt %d failed: %s", self.url, attempt + 1, last_error)
                continue
            if resp.status_code != 200:  # 4xx other than 429: retrying will not help
                raise EndpointError(f"{self.url}: HTTP {resp.status_code}: {resp.text[:300]}")
            try:
                text = resp.json()["choices"][0]["message"]["content"]
            except (ValueError, KeyError, IndexError, TypeError) as e:
                raise EndpointError(f"{self.url}: not a chat-completions response: {resp.text[:300]!r}") from e
            if not isinstance(text, str):
                raise EndpointError(f"{self.url}: message content is not text: {text!r}")
            return text
        raise EndpointError(f"{self.url}: failed after {self.cfg.retries + 1} attempts; last error: {last_error}")

    def close(self) -> None:
        self._http.close()


def image_part(path: str | Path) -> dict:
    """An ``image_url`` content part carrying the file as a base64 PNG data URL."""
    from PIL import Image

    buf = io.BytesIO()
    with Image.open(path) as im:
        im.convert("RGB").save(buf, format="PNG")
    return {"type": "image_url",
            "image_url": {"url": "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()}}


def parse_tagged(reply: str, tag: str) -> str | None:
    """The text after ``[tag]:`` up to the next ``[Word]:`` tag or the end, whitespace-collapsed; ``None`` when the
    tag is absent or empty. Markdown emphasis around the tag (``**[Prompt]:**``) is tolerated."""
    m = re.search(rf"\[{re.escape(tag)}\]\s*\**\s*:\s*\**(.*?)(?=\n\s*\**\[[A-Za-z ]+\]\s*\**\s*:|\Z)", reply,
                  flags=re.DOTALL | re.IGNORECASE)
    if not m:
        return None
    text = " ".join(m.group(1).split()).strip().strip('"').strip()
    return text or None


def mentions(text: str, phrase: str) -> bool:
    """Whether ``text`` names ``phrase`` as whole words (case-insensitive; a plural ``s``/``es`` is accepted)."""
    words = r"\s+".join(re.escape(w) for w in phrase.lower().split())
    return re.search(rf"(?<![a-z0-9]){words}(?:e?s)?(?![a-z0-9])", text.lower()) is not None


def missing_phrases(text: str, phrases: list[str]) -> list[str]:
    return [p for p in phrases if not mentions(text, p)]
