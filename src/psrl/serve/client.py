"""``remote`` reward: scores through a psrl reward server (``psrl serve rewards``).

Arguments: :class:`RemoteReward`. Connection errors, timeouts, 429 and 5xx are retried (``backoff * 2**attempt``),
so a server restarted mid-run is picked up again; a wrong key (401/403), an unknown reward (404) or rejected input
(422) raise at once with the server's message. Images travel as PNG.

Records travel as their JSON (:meth:`psrl.data.records.Record.to_json`): reference paths relative to the data root
the records were resolved against where they were loaded, never absolute. The server resolves them under its own
root (:meth:`psrl.serve.config.ServerConfig.resolve_records`), so the same files must sit under both roots (the same
dataset copied, or one shared folder); the client never sends a root, and the server never opens a path outside
its own.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence

import torch
from torch import Tensor

from psrl.data.records import Record
from psrl.errors import PsrlError
from psrl.rewards.base import RewardOutput
from psrl.rewards.images import scorable_images
from psrl.serve.config import read_key_file
from psrl.serve.wire import encode_png, output_from_json

logger = logging.getLogger(__name__)


class RemoteRewardError(PsrlError):
    pass


class RemoteReward:
    """A reward computed by a psrl reward server (``psrl serve rewards``); images travel as PNG.

    Args:
        device: unused (the server holds the model).
        url: the server, ``http://host:port``.
        reward: the served reward's name (required).
        api_key: the key itself (prefer api_key_env or api_key_file: a key in a config can end up in a run
            folder).
        api_key_env: environment variable holding the key.
        api_key_file: file holding the key.
        timeout: seconds per request.
        retries: retries of connection errors, timeouts, 429 and 5xx (a restarted server is picked up again).
        backoff: first retry delay in seconds, doubled each attempt.
        on_error: ``raise`` (an unreachable server stops the run) or ``nan`` (every sample NaN with the reason).

    Score range: the served reward's.
    NaN policy: the served reward's, per sample, with its reasons; with ``on_error: nan`` every sample of a batch
        the server could not score.
    """

    name = "remote"

    def __init__(self, device="cpu", *, url: str = "http://127.0.0.1:8765", reward: str | None = None,
                 api_key: str | None = None, api_key_env: str | None = "PSRL_REWARD_API_KEY",
                 api_key_file: str | None = None, timeout: float = 300.0, retries: int = 5, backoff: float = 1.0,
                 on_error: str = "raise"):
        import httpx

        if not reward:
            raise ValueError("remote reward: 'reward' (the name served by the reward server) is required")
        if on_error not in ("raise", "nan"):
            raise ValueError(f"remote reward: on_error must be 'raise' or 'nan', got {on_error!r}")
        if api_key is not None and api_key_file:
            raise ValueError("remote reward: set api_key or api_key_file, not both")
        if api_key_file:
            api_key = read_key_file(api_key_file)
        if api_key is None and api_key_env:
            api_key = os.environ.get(api_key_env)
        self.url, self.reward = url.rstrip("/"), reward
        self.name = f"remote:{reward}"
        self.retries, self.backoff, self.on_error = retries, backoff, on_error
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(timeout=timeout, headers=headers)

    def _post(self, body: dict) -> dict:
        import httpx

        endpoint = f"{self.url}/score/{self.reward}"
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                delay = self.backoff * 2 ** (attempt - 1)
                logger.warning("reward server %s: %s; retry %d/%d in %.1fs", self.url, last, attempt, self.retries,
                               delay)
                time.sleep(delay)
            try:
                resp = self.client.post(endpoint, json=body)
            except httpx.TimeoutException:
                last = "timed out"
                continue
            except httpx.TransportError as e:
                last = f"unreachable ({type(e).__name__})"
                continue
            if resp.status_code == 200:
                try:
                    return resp.json()
                except ValueError as e:
                    raise RemoteRewardError(f"reward server {self.url} sent a reply that is not JSON") from e
            detail = _detail(resp)
            if resp.status_code in (401, 403):
                raise RemoteRewardError(f"reward server {self.url} refused the API key ({resp.status_code}: {detail})")
            if resp.status_code == 404:
                raise RemoteRewardError(f"reward server {self.url}: {detail}")
            if resp.status_code == 422:
                raise ValueError(f"reward server {self.url} rejected the request: {detail}")
            last = f"HTTP {resp.status_code}: {detail}"
            if resp.status_code != 429 and resp.status_code < 500:
                break
        raise RemoteRewardError(f"reward server {endpoint} failed after {self.retries + 1} attempts: {last}")

    def __call__(self, images: Tensor | Sequence, records: Sequence[Record]) -> RewardOutput:
        pils, failures, idx = scorable_images(images, records, self.name)
        scores = torch.full((len(records),), float("nan"))
        if not idx:
            return RewardOutput(scores=scores, failures=failures)
        body = {"images": [encode_png(pils[b]) for b in idx], "records": [records[b].to_json() for b in idx]}
        try:
            remote = output_from_json(self._post(body), len(idx))
        except RemoteRewardError as e:
            if self.on_error == "raise":
                raise
            return RewardOutput(scores=scores, failures=[f or str(e) for f in failures])
        scores[idx] = remote.scores
        for row, b in enumerate(idx):
            failures[b] = remote.failures[row]
        details = {}
        for k, v in remote.details.items():  # re-spread per-sample lists over the full batch
            if isinstance(v, list) and len(v) == len(idx):
                full = [None] * len(records)
                for row, b in enumerate(idx):
                    full[b] = v[row]
                details[k] = full
            else:
                details[k] = v
        return RewardOutput(scores=scores, failures=failures, details=details)


def _detail(resp) -> str:
    try:
        return str(resp.json().get("detail", resp.text))[:300]
    except ValueError:
        return resp.text[:300]
