"""Reward server: loads the configured rewards once and scores images over HTTP, batching concurrent requests.

Routes: ``GET /health`` (no auth; reward names and counters), ``POST /score/{name}`` with
``{"images": [base64 PNG], "records": [record JSON]}`` -> ``{"scores", "failures", "details"}``.
Binds 127.0.0.1 by default; on any other host it refuses to start without an API key, which clients then send as
``Authorization: Bearer <key>``. Requests for one reward wait up to ``batch_window_ms`` for company, are grouped
by image size (a batch is one tensor) up to ``max_batch`` images, and run on one worker thread per reward.
"""
from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from fastapi import Request  # module level: FastAPI resolves the (postponed) annotation in this module's globals

from psrl.data.records import Record, RecordError
from psrl.errors import PsrlError
from psrl.rewards.base import RewardOutput, build_reward
from psrl.rewards.images import pil_to_tensor
from psrl.serve.wire import decode_png, output_to_json, slice_output

logger = logging.getLogger(__name__)


@dataclass
class ServedReward:
    name: str
    reward: str | None = None  # registered reward name or module:attr; defaults to ``name``
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class ServerConfig:
    rewards: list[ServedReward] = field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = 8765
    api_key: str | None = None
    api_key_env: str | None = "PSRL_REWARD_API_KEY"
    device: str = "cpu"
    data_root: str | None = None  # given to rewards that take data_root and do not set it
    batch_window_ms: float = 10.0
    max_batch: int = 64

    def __post_init__(self):
        if not self.rewards:
            raise ValueError("rewards: at least one reward must be configured")
        names = [r.name for r in self.rewards]
        if len(set(names)) != len(names):
            raise ValueError(f"rewards: duplicate names in {names}")
        if self.batch_window_ms < 0 or self.max_batch < 1:
            raise ValueError("batch_window_ms must be >= 0 and max_batch >= 1")

    def resolved_api_key(self) -> str | None:
        if self.api_key:
            return self.api_key
        return os.environ.get(self.api_key_env) if self.api_key_env else None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, api_key: str | None) -> None:
    if not is_loopback(host) and not api_key:
        raise PsrlError(f"refusing to serve rewards on {host!r} without an API key: set api_key or the environment "
                        f"variable named by api_key_env (default PSRL_REWARD_API_KEY), or bind 127.0.0.1")


class Batcher:
    """Collects concurrent requests for one reward and scores them together."""

    def __init__(self, reward, window_s: float, max_batch: int):
        self.reward, self.window_s, self.max_batch = reward, window_s, max_batch
        self.queue: asyncio.Queue = asyncio.Queue()
        self.batches = 0
        self.requests = 0
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
            by_size: dict[tuple, list] = {}
            for item in items:
                by_size.setdefault(tuple(item[0][0].shape), []).append(item)
            for group in by_size.values():
                await self._score(group)

    async def _score(self, group: list) -> None:
        images = torch.stack([im for item in group for im in item[0]])
        records = [r for item in group for r in item[1]]
        try:
            out = await asyncio.to_thread(self.reward, images, records)
        except Exception as e:  # noqa: BLE001 - every waiting request gets the error
            for *_, fut in group:
                if not fut.done():
                    fut.set_exception(e)
            return
        self.batches += 1
        start = 0
        for imgs, _, fut in group:
            self.requests += 1
            if not fut.done():
                fut.set_result(slice_output(out, start, start + len(imgs)))
            start += len(imgs)


def _reward_args(spec: ServedReward, cfg: ServerConfig) -> dict:
    args = dict(spec.args)
    if cfg.data_root and "data_root" not in args:
        import inspect

        from psrl.rewards.base import REWARDS, _ensure_builtin_rewards

        _ensure_builtin_rewards()
        target = REWARDS.get(spec.reward or spec.name)
        try:
            params = inspect.signature(target).parameters
        except (TypeError, ValueError):
            params = {}
        if "data_root" in params:
            args["data_root"] = cfg.data_root
    return args


def build_rewards(cfg: ServerConfig) -> dict:
    rewards = {}
    for spec in cfg.rewards:
        logger.info("loading reward %s (%s)", spec.name, spec.reward or spec.name)
        rewards[spec.name] = build_reward(spec.reward or spec.name, _reward_args(spec, cfg), device=cfg.device)
    return rewards


def create_app(cfg: ServerConfig, rewards: dict | None = None):
    """The FastAPI app; ``rewards`` (name -> Reward) may be passed pre-built (tests, embedding)."""
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import JSONResponse

    api_key = cfg.resolved_api_key()
    check_bind(cfg.host, api_key)
    rewards = rewards if rewards is not None else build_rewards(cfg)
    batchers = {name: Batcher(r, cfg.batch_window_ms / 1000.0, cfg.max_batch) for name, r in rewards.items()}
    app = FastAPI(title="psrl reward server")

    @app.get("/health")
    async def health():
        return {"status": "ok", "rewards": sorted(rewards),
                "batches": {n: b.batches for n, b in batchers.items()},
                "requests": {n: b.requests for n, b in batchers.items()}}

    @app.post("/score/{name}")
    async def score(name: str, request: Request):
        if api_key is not None:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                raise HTTPException(status_code=401, detail="missing or wrong API key")
        if name not in batchers:
            raise HTTPException(status_code=404, detail=f"unknown reward {name!r}; served: {sorted(batchers)}")
        try:
            body = await request.json()
            images_b64, records_json = body["images"], body["records"]
            if not isinstance(images_b64, list) or not isinstance(records_json, list) or not images_b64:
                raise ValueError("'images' and 'records' must be non-empty lists")
            if len(images_b64) != len(records_json):
                raise ValueError(f"{len(images_b64)} images for {len(records_json)} records")
            images = [pil_to_tensor(decode_png(d, f"images[{i}]")) for i, d in enumerate(images_b64)]
            if len({tuple(t.shape) for t in images}) != 1:
                raise ValueError("all images of one request must have the same size")
            records = [Record.from_json(r, where=f"records[{i}]") for i, r in enumerate(records_json)]
        except (ValueError, KeyError, TypeError, RecordError) as e:
            raise HTTPException(status_code=422, detail=f"bad request: {type(e).__name__}: {e}") from e
        batcher = batchers[name]
        batcher.start()
        try:
            out = await batcher.submit(images, records)
        except ValueError as e:
            raise HTTPException(status_code=422, detail=f"reward {name!r} rejected the input: {e}") from e
        except Exception as e:  # noqa: BLE001
            logger.exception("reward %s failed", name)
            return JSONResponse(status_code=500,
                                content={"detail": f"reward {name!r} failed: {type(e).__name__}: {e}"})
        return output_to_json(out)

    return app


def serve(cfg: ServerConfig) -> None:
    import uvicorn

    app = create_app(cfg)
    logger.info("serving rewards %s on http://%s:%d", [r.name for r in cfg.rewards], cfg.host, cfg.port)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="info")
