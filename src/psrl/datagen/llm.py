"""The data pipeline's chat endpoints (a :class:`psrl.chat.ChatClient` per stage config) and the strict reply parsing
the prompt and instruction stages share.

Strictness, as for the VLM judge: a reply is used only when it has the requested ``[Tag]: text`` field and the text
names every subject; otherwise the sample is rejected with the reason and the raw reply is kept. Nothing is ever
filled in with a default.
"""
from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from psrl.chat import ChatClient, ChatError, image_data_url
from psrl.datagen.config import DataPipelineConfig, EndpointConfig
from psrl.datagen.runner import BaseStage, rejected
from psrl.images import load_image


def endpoint_client(cfg: EndpointConfig, *, backoff: float = 1.0) -> ChatClient:
    """The chat client of a stage's endpoint config: its url, model, timeout, retries, ``temperature`` and
    ``max_new_tokens`` (the request's ``max_tokens``); the key from the environment variable ``cfg.api_key_env``
    when it is set (a local server needs none)."""
    key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
    return ChatClient(cfg.url, model=cfg.model, api_key=key, timeout=cfg.timeout, retries=cfg.retries,
                      backoff=backoff, what="llm endpoint",
                      defaults={"temperature": cfg.temperature, "max_tokens": cfg.max_new_tokens})


class ChatStage(BaseStage):
    """A stage that fills a template per sample, or, with its endpoint's ``url`` set, asks the chat endpoint
    (``max_concurrency`` requests at once, one thread each). Subclasses name their endpoint (``cfg.<name>.<endpoint
    field>``) and write :meth:`from_template` and :meth:`from_endpoint`, each ``entry -> kept/rejected entry``;
    ``client`` replaces the endpoint's client (tests)."""

    endpoint_field = "llm"

    def __init__(self, cfg: DataPipelineConfig, dataset=None, device=None, client: ChatClient | None = None):
        super().__init__(cfg, dataset, device)
        self.endpoint: EndpointConfig = getattr(getattr(cfg, self.name), self.endpoint_field)
        self.client = client
        self.batch_size = self.endpoint.max_concurrency if self.endpoint.url else 256

    def setup(self) -> None:
        if self.endpoint.url and self.client is None:
            self.client = endpoint_client(self.endpoint)

    def process(self, batch: list[dict]) -> list[dict]:
        if not self.endpoint.url:
            return [self.from_template(e) for e in batch]
        with ThreadPoolExecutor(max_workers=len(batch)) as pool:
            return list(pool.map(self.from_endpoint, batch))

    def ask(self, e: dict, content, tag: str) -> tuple[str | None, str | None, dict | None]:
        """Send ``content`` for sample ``e``: ``(text, reply, None)`` when the reply has a ``[tag]:`` field naming
        every subject, else ``(None, None, rejected entry)``: ``<endpoint>_error`` (the request failed),
        ``<endpoint>_unparsable`` or ``<endpoint>_missing_subject`` (the raw reply kept), ``<endpoint>`` being
        ``llm`` or ``vlm``."""
        kind = self.endpoint_field
        try:
            reply = self.client.complete(content)
        except ChatError as err:
            return None, None, rejected(e, f"{kind}_error", str(err))
        text = parse_tagged(reply, tag)
        if text is None:
            return None, None, rejected(e, f"{kind}_unparsable", f"no '[{tag}]: ...' field in the reply",
                                        raw_reply=reply[:2000])
        if missing := missing_phrases(text, e["phrases"]):
            return None, None, rejected(e, f"{kind}_missing_subject", f"the {tag.lower()} does not name {missing}",
                                        raw_reply=reply[:2000])
        return text, reply, None


def image_part(path: str | Path) -> dict:
    """An ``image_url`` content part carrying the file (decoded by :func:`psrl.images.load_image`) as a PNG."""
    return {"type": "image_url", "image_url": {"url": image_data_url(load_image(path))}}


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


__all__ = ["ChatStage", "endpoint_client", "image_part", "mentions", "missing_phrases", "parse_tagged"]
