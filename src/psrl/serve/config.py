"""The reward server's config: what it serves, where it binds, its API key and its request limits.

The API key is a secret, so it is handled apart from every other key: it is read from the environment variable named
by ``api_key_env`` (default ``PSRL_REWARD_API_KEY``) or from the file named by ``api_key_file``; an ``api_key`` in
the YAML file is still accepted (keep such a file private), but never on the command line (``--set api_key=...`` shows
the key to every user through ``ps``). No error message, log line or ``repr`` contains the key.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from psrl.config import ConfigError, apply_overrides, check_range, from_dict, load_yaml, parse_override
from psrl.data.records import Record, RecordError, misplaced_data_root, resolve_records
from psrl.errors import PsrlError

logger = logging.getLogger(__name__)

DEFAULT_API_KEY_ENV = "PSRL_REWARD_API_KEY"

# Top-level keys whose values are taken literally from the command line: YAML would turn ``host=::`` into a mapping,
# ``device=0`` into an integer.
_STRING_KEYS = ("host", "device", "data_root", "api_key_env", "api_key_file")
_SECRET_KEYS = ("api_key",)


@dataclass
class ServedReward:
    name: str
    reward: str | None = None  # registered reward name or module:attr; defaults to ``name``
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class ServerConfig:
    """``psrl serve rewards`` config.

    ``data_root``: the folder the records of requests are resolved against. A client sends reference paths relative
    to the root its records were resolved against (:meth:`psrl.data.records.Record.to_json`); the server resolves
    them under its own root (escapes refused: 422), so both sides must hold the same files under their roots.
    Without it, reference paths stay unresolved and only rewards that read no reference can score them (the others
    give those samples NaN with the reason); an absolute path is refused either way.

    Limits (each answered before the work it guards; all positive integers):
        max_body_bytes: request body size in bytes (413 from the ``Content-Length`` header, or as soon as the
            streamed body passes it); default 256 MiB.
        max_images: images per request (422 before any image is decoded); default 256.
        max_pixels: ``width * height`` of one image (413 from the PNG header, before the pixels are decoded);
            default 4096 * 4096.
        max_text_chars: characters of a record's prompt and of each subject phrase (422); default 4096, far above
            what a text encoder reads (T5: 512 tokens) and far below what stalls a tokenizer or detector.
    """

    rewards: list[ServedReward] = field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = 8765
    # ``Any``: a key YAML reads as a number must be refused without the generic "bad value ..." message, which
    # would print it; repr=False keeps it out of any dump of the config.
    api_key: Any = field(default=None, repr=False)
    api_key_env: str | None = DEFAULT_API_KEY_ENV
    api_key_file: str | None = None
    device: str = "cpu"
    data_root: str | None = None  # what request records are resolved against (see above)
    batch_window_ms: float = 10.0
    max_batch: int = 64
    max_body_bytes: int = 256 * 2**20
    max_images: int = 256
    max_pixels: int = 4096 * 4096
    max_text_chars: int = 4096

    def __post_init__(self):
        if not self.rewards:
            raise ValueError("rewards: at least one reward must be configured")
        names = [r.name for r in self.rewards]
        if len(set(names)) != len(names):
            raise ValueError(f"rewards: duplicate names in {names}")
        for i, r in enumerate(self.rewards):
            if why := misplaced_data_root(r.args, f"rewards.{i}.args"):
                raise ValueError(why)
        check_range(self, "batch_window_ms", 0)
        for key in ("max_body_bytes", "max_images", "max_pixels", "max_text_chars", "max_batch"):
            check_range(self, key, 1)
        if self.api_key is not None and (not isinstance(self.api_key, str) or not self.api_key):
            raise ValueError(f"api_key must be a non-empty string (quote it in YAML), got a "
                             f"{type(self.api_key).__name__}; its value is not shown")
        if self.api_key is not None and self.api_key_file:
            raise ValueError("set api_key or api_key_file, not both")

    def resolved_api_key(self) -> str | None:
        """The key from ``api_key_file``, else ``api_key``, else ``$api_key_env``; ``None`` when none is set.

        Raises:
            PsrlError: ``api_key_file`` is missing, unreadable or empty (the message names the file, never its text).
        """
        if self.api_key_file:
            return read_key_file(self.api_key_file)
        if self.api_key:
            return self.api_key
        if not self.api_key_env:
            return None
        return os.environ.get(self.api_key_env) or None

    def resolve_records(self, records: list[Record]) -> list[Record]:
        """Request records with their image paths resolved under ``data_root`` (the client sent them relative to
        its own root): the server's one resolver. Without a root they stay as sent, and a reward that reads
        references gives those samples NaN with the reason ("not resolved").

        Raises:
            RecordError: an absolute path (a client never chooses which files the server opens) or, with a root,
                one that escapes it (422).
        """
        if self.data_root:
            return resolve_records(records, self.data_root, source="records")
        for i, r in enumerate(records):
            for path in [s.image for s in r.subjects] + [r.target]:
                if path and Path(path).is_absolute():
                    raise RecordError(f"records[{i}]: image path {path!r} is absolute; send paths relative to the "
                                      "data root")
        return records


def read_key_file(path: str | Path) -> str:
    """The key in ``path`` (surrounding whitespace and the trailing newline stripped); warns when other users can
    read the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        mode = path.stat().st_mode
    except (OSError, UnicodeDecodeError) as e:
        raise PsrlError(f"api_key_file {path}: cannot read it ({type(e).__name__})") from e
    key = text.strip()
    if not key:
        raise PsrlError(f"api_key_file {path}: the file is empty")
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        logger.warning("api_key_file %s can be read by other users (mode %o); chmod 600 it", path,
                       stat.S_IMODE(mode))
    return key


def load_server_config(path: str | Path, overrides: list[str] | None = None, *, host: str | None = None,
                       port: int | None = None) -> ServerConfig:
    """YAML file + ``--set`` overrides + ``--host``/``--port`` -> :class:`ServerConfig`.

    String keys (``host``, ``device``, ``data_root``, ``api_key_env``, ``api_key_file``) are taken literally from the
    command line (``--host ::``, ``--set device=0``); everything else is parsed as YAML like every other ``--set``.

    Raises:
        ConfigError: a bad key or value, or ``api_key`` given on the command line (use the environment or a file).
    """
    data = load_yaml(path)
    rest = []
    for item in overrides or []:
        key = item.split("=", 1)[0].strip()
        if key in _SECRET_KEYS:
            raise ConfigError(f"--set {key}=... would show the key to every user of this machine (ps); put it in the "
                              f"environment variable {data.get('api_key_env') or DEFAULT_API_KEY_ENV} or in a file "
                              f"named by api_key_file")
        if key in _STRING_KEYS:
            parse_override(item)  # the same format errors as any other override
            data[key] = item.split("=", 1)[1]
        else:
            rest.append(item)
    apply_overrides(data, rest)
    if host is not None:
        data["host"] = host
    if port is not None:
        data["port"] = port
    return from_dict(ServerConfig, data, source=str(path))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, api_key: str | None) -> None:
    if not is_loopback(host) and not api_key:
        raise PsrlError(f"refusing to serve rewards on {host!r} without an API key: set the environment variable "
                        f"named by api_key_env (default {DEFAULT_API_KEY_ENV}) or api_key_file, or bind 127.0.0.1")


def url_host(host: str) -> str:
    """``host`` as it goes into a URL: IPv6 addresses in brackets."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
