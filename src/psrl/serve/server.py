"""Reward server: loads the configured rewards once and scores images over HTTP, batching concurrent requests.

Routes: ``GET /health`` (no auth; reward names and counters), ``POST /score/{name}`` with
``{"images": [base64 PNG], "records": [record JSON]}`` -> ``{"scores", "failures", "details"}``.
Binds 127.0.0.1 by default; on any other host it refuses to start without an API key, which clients then send as
``Authorization: Bearer <key>``. Requests for one reward wait up to ``batch_window_ms`` for company, are grouped
by image size (a batch is one tensor) up to ``max_batch`` images, and run on one worker thread per reward.

One request never fails another: a batch the reward raises on is split in halves until the failing requests stand
alone (the others get their scores), and a lone failing request is scored sample by sample, so only the samples the
reward cannot score become NaN with the reason. A request all of whose samples fail gets 422 (the reward rejected
the input: a ``ValueError``) or 500 (anything else). Limits (see :class:`ServerConfig`) are answered before the
work they guard: 413 for the body size (from ``Content-Length``, or while streaming) and for an image's pixel count
(from its header, before decoding), 422 for the image count and overlong texts.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging

import torch
from fastapi import Request  # module level: FastAPI resolves the (postponed) annotation in this module's globals

from psrl.data.records import Record, RecordError
from psrl.rewards.base import RewardOutput, build_reward
from psrl.images import group_by_size, pil_to_tensor
from psrl.serve.config import ServedReward, ServerConfig, check_bind, is_loopback, load_server_config, url_host
from psrl.serve.wire import TooLarge, decode_png, join_outputs, output_to_json, slice_output

logger = logging.getLogger(__name__)

__all__ = ["Batcher", "ServedReward", "ServerConfig", "TooLarge", "build_rewards", "check_bind", "create_app",
           "is_loopback", "load_server_config", "parse_request", "serve"]


class Batcher:
    """Collects concurrent requests for one reward and scores them together; failures stay with their request."""

    def __init__(self, reward, window_s: float, max_batch: int, name: str = "reward"):
        self.reward, self.window_s, self.max_batch, self.name = reward, window_s, max_batch, name
        self.queue: asyncio.Queue = asyncio.Queue()
        self.batches = 0  # successful reward calls
        self.requests = 0  # requests answered with scores
        self.isolated = 0  # reward calls that failed and were split up
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def submit(self, images: list, records: list[Record]) -> RewardOutput:
        fut = asyncio.get_running_loop().create_future()
        await self.queue.put((images, records, fut))
        return await fut

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self.queue.get()]
            deadline = loop.time() + self.window_s
            while sum(len(i[0]) for i in items) < self.max_batch:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    items.append(await asyncio.wait_for(self.queue.get(), timeout))
                except asyncio.TimeoutError:
                    break
            for group in group_by_size(items, lambda item: tuple(item[0][0].shape)):
                await self._score(group)

    async def _call(self, images: list, records: list[Record]) -> RewardOutput:
        out = await asyncio.to_thread(self.reward, torch.stack(images), records)
        if len(out.scores) != len(records):
            raise ValueError(f"reward {self.name!r} returned {len(out.scores)} scores for {len(records)} samples")
        return out

    async def _score(self, group: list) -> None:
        try:
            out = await self._call([im for item in group for im in item[0]], [r for item in group for r in item[1]])
        except Exception as e:  # noqa: BLE001 - find the request(s) it belongs to instead of failing them all
            self.isolated += 1
            if len(group) == 1:
                await self._score_alone(group[0], e)
                return
            logger.warning("reward %s failed on a batch of %d requests (%s: %s); scoring them apart", self.name,
                           len(group), type(e).__name__, e)
            half = len(group) // 2
            await self._score(group[:half])
            await self._score(group[half:])
            return
        self.batches += 1
        start = 0
        for imgs, _, fut in group:
            self.requests += 1
            if not fut.done():
                fut.set_result(slice_output(out, start, start + len(imgs)))
            start += len(imgs)

    async def _score_alone(self, item: tuple, error: Exception) -> None:
        """A request the reward raised on: score each sample alone; NaN with the reason for the ones that fail."""
        images, records, fut = item
        if len(images) > 1:
            parts: list[RewardOutput | None] = []
            reasons: list[str | None] = []
            for im, rec in zip(images, records):
                try:
                    parts.append(await self._call([im], [rec]))
                    reasons.append(None)
                except Exception as e:  # noqa: BLE001 - this sample alone
                    parts.append(None)
                    reasons.append(f"reward {self.name!r} failed on this sample: {type(e).__name__}: {e}")
                    error = e
            if any(p is not None for p in parts):
                self.batches += 1
                self.requests += 1
                logger.warning("reward %s: %d of %d samples of one request failed (%s)", self.name,
                               sum(p is None for p in parts), len(parts), next(r for r in reasons if r))
                if not fut.done():
                    fut.set_result(join_outputs(parts, reasons))
                return
        logger.warning("reward %s failed on every sample of a request: %s: %s", self.name, type(error).__name__, error)
        if not fut.done():
            fut.set_exception(error)


def build_rewards(cfg: ServerConfig) -> dict:
    rewards = {}
    for spec in cfg.rewards:
        logger.info("loading reward %s (%s)", spec.name, spec.reward or spec.name)
        rewards[spec.name] = build_reward(spec.reward or spec.name, dict(spec.args), device=cfg.device)
    return rewards


def parse_request(body: bytes, cfg: ServerConfig) -> tuple[list, list[Record]]:
    """A ``/score`` body -> ``(images [3, H, W] float in [0, 1], records)``, checking the limits in the order that
    costs least: the image count and text lengths before any image is decoded, each image's pixel count before its
    pixels are decoded.

    Raises:
        TooLarge: an image over ``max_pixels`` (413).
        ValueError, KeyError, TypeError, RecordError: anything else wrong with the request (422), an image path
            outside the server's data root included (:meth:`ServerConfig.resolve_records`).
    """
    data = json.loads(body)
    if not isinstance(data, dict):
        raise TypeError("the body must be a JSON object with 'images' and 'records'")
    images_b64, records_json = data["images"], data["records"]
    if not isinstance(images_b64, list) or not isinstance(records_json, list) or not images_b64:
        raise ValueError("'images' and 'records' must be non-empty lists")
    if len(images_b64) > cfg.max_images:
        raise ValueError(f"{len(images_b64)} images in one request; max_images={cfg.max_images}")
    if len(images_b64) != len(records_json):
        raise ValueError(f"{len(images_b64)} images for {len(records_json)} records")
    records = [Record.from_json(r, where=f"records[{i}]") for i, r in enumerate(records_json)]
    for i, r in enumerate(records):
        texts = [("prompt", r.prompt)] + [(f"subjects[{j}].phrase", s.phrase) for j, s in enumerate(r.subjects)]
        for what, text in texts:
            if len(text) > cfg.max_text_chars:
                raise ValueError(f"records[{i}].{what} has {len(text)} characters; max_text_chars="
                                 f"{cfg.max_text_chars}")
    records = cfg.resolve_records(records)
    images = [pil_to_tensor(decode_png(d, f"images[{i}]", max_pixels=cfg.max_pixels))
              for i, d in enumerate(images_b64)]
    if len({tuple(t.shape) for t in images}) != 1:
        raise ValueError("all images of one request must have the same size")
    return images, records


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused (:class:`TooLarge`) as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"request body of {int(declared)} bytes exceeds max_body_bytes={limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"request body exceeds max_body_bytes={limit}")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(cfg: ServerConfig, rewards: dict | None = None):
    """The FastAPI app; ``rewards`` (name -> Reward) may be passed pre-built (tests, embedding)."""
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import JSONResponse

    api_key = cfg.resolved_api_key()
    check_bind(cfg.host, api_key)
    rewards = rewards if rewards is not None else build_rewards(cfg)
    batchers = {name: Batcher(r, cfg.batch_window_ms / 1000.0, cfg.max_batch, name) for name, r in rewards.items()}
    app = FastAPI(title="psrl reward server")

    @app.get("/health")
    async def health():
        return {"status": "ok", "rewards": sorted(rewards),
                "batches": {n: b.batches for n, b in batchers.items()},
                "requests": {n: b.requests for n, b in batchers.items()},
                "isolated_failures": {n: b.isolated for n, b in batchers.items()},
                "limits": {k: getattr(cfg, k) for k in ("max_body_bytes", "max_images", "max_pixels",
                                                         "max_text_chars")}}

    @app.post("/score/{name}")
    async def score(name: str, request: Request):
        if api_key is not None:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                raise HTTPException(status_code=401, detail="missing or wrong API key")
        if name not in batchers:
            raise HTTPException(status_code=404, detail=f"unknown reward {name!r}; served: {sorted(batchers)}")
        try:
            body = await _read_body(request, cfg.max_body_bytes)
            # decoding is CPU work: off the event loop, so other requests keep being read and answered
            images, records = await asyncio.to_thread(parse_request, body, cfg)
        except TooLarge as e:
            raise HTTPException(status_code=413, detail=f"too large: {e}") from e
        except (ValueError, KeyError, TypeError, RecordError) as e:
            raise HTTPException(status_code=422, detail=f"bad request: {type(e).__name__}: {e}") from e
        batcher = batchers[name]
        batcher.start()
        try:
            out = await batcher.submit(images, records)
        except ValueError as e:
            raise HTTPException(status_code=422, detail=f"reward {name!r} rejected the input: {e}") from e
        except Exception as e:
            logger.exception("reward %s failed", name)
            return JSONResponse(status_code=500,
                                content={"detail": f"reward {name!r} failed: {type(e).__name__}: {e}"})
        return output_to_json(out)

    return app


def serve(cfg: ServerConfig) -> None:
    import uvicorn

    app = create_app(cfg)
    logger.info("serving rewards %s on http://%s:%d", [r.name for r in cfg.rewards], url_host(cfg.host), cfg.port)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="info")
