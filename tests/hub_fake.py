"""A local stand-in for the Hugging Face Hub on 127.0.0.1: enough of its HTTP API for ``huggingface_hub`` to create
a repository, upload a folder (every file as a "regular" base64 blob in the ndjson commit), describe a revision,
list a tree and download files (``HEAD``/``GET .../resolve/<revision>/<path>``). Repositories live in memory as
commits of ``{path: bytes}``; every request is recorded, so tests can check what was sent and that the token only
ever travelled in the Authorization header.

The endpoint shapes follow huggingface_hub 2.x (``hf_api.py``: ``create_repo``, ``_validate_yaml``,
``repo_info``/``dataset_info``, ``list_repo_tree``; ``_commit_api.py``: ``_fetch_upload_modes``, ``_send_commit``;
``file_download.py``: ``get_hf_file_metadata``)."""
from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import pytest
import yaml

USER = "psrl-tester"


@dataclass
class FakeRepo:
    private: bool = False
    commits: list = field(default_factory=list)  # [(sha, message, {path: bytes})], oldest first
    refs: dict = field(default_factory=dict)     # branch -> sha

    def files(self, revision: str) -> tuple[str, dict] | None:
        sha = self.refs.get(revision, revision)
        for c_sha, _, files in self.commits:
            if c_sha == sha:
                return sha, files
        return None


class FakeHub:
    """``with FakeHub(token="hf_x") as hub:`` -> ``hub.url``; ``hub.repos[("model", "org/name")]``."""

    def __init__(self, token: str = "hf_fake_token"):
        self.token = token
        self.repos: dict[tuple[str, str], FakeRepo] = {}
        self.requests: list[dict] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeHub":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    # ------------------------------------------------------------------ test helpers
    def add_repo(self, repo_type: str, repo_id: str, files: dict[str, bytes], *, message: str = "init",
                 branch: str = "main", private: bool = False) -> str:
        repo = self.repos.setdefault((repo_type, repo_id), FakeRepo(private=private))
        return self.commit(repo, branch, message, files)

    def commit(self, repo: FakeRepo, branch: str, message: str, added: dict[str, bytes]) -> str:
        parent = repo.files(branch)
        files = dict(parent[1]) if parent else {}
        files.update(added)
        digest = hashlib.sha1(json.dumps([parent[0] if parent else None, message, sorted(
            (p, hashlib.sha256(b).hexdigest()) for p, b in files.items())]).encode()).hexdigest()
        repo.commits.append((digest, message, files))
        repo.refs[branch] = digest
        return digest

    def file(self, repo_type: str, repo_id: str, path: str, revision: str = "main") -> bytes:
        return self.repos[(repo_type, repo_id)].files(revision)[1][path]


def _handler(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep pytest output clean
            pass

        # -------------------------------------------------------------- plumbing
        def _body(self) -> bytes:
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n else b""

        def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False):
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _json(self, status: int, data, headers: dict | None = None):
            self._send(status, json.dumps(data).encode(), {"Content-Type": "application/json", **(headers or {})})

        def _error(self, status: int, code: str | None, message: str, head: bool = False, extra=None):
            headers = {"X-Error-Message": message, **(extra or {})}
            if code:
                headers["X-Error-Code"] = code
            self._send(status, json.dumps({"error": message}).encode(), headers, head=head)

        def _authorised(self) -> bool:
            return self.headers.get("Authorization") == f"Bearer {hub.token}"

        def _record(self, body: bytes = b""):
            hub.requests.append({"method": self.command, "path": self.path, "auth": self._authorised(),
                                 "headers": dict(self.headers), "body": body})

        def _repo(self, repo_type: str, repo_id: str, head: bool = False) -> FakeRepo | None:
            repo = hub.repos.get((repo_type, repo_id))
            if repo is None or (repo.private and not self._authorised()):
                self._error(404 if repo is None else 401, "RepoNotFound", f"Repository {repo_id} not found",
                            head=head)
                return None
            return repo

        # -------------------------------------------------------------- routes
        def do_POST(self):
            body = self._body()
            self._record(body)
            parts = [unquote(p) for p in urlsplit(self.path).path.strip("/").split("/")]
            if parts[:3] == ["api", "repos", "create"]:
                return self._create(json.loads(body))
            if parts[:2] == ["api", "validate-yaml"]:
                return self._validate_yaml(json.loads(body))
            if len(parts) == 6 and parts[0] == "api" and parts[4] in ("preupload", "commit"):
                repo_type = parts[1][:-1]
                repo = self._repo(repo_type, f"{parts[2]}/{parts[3]}")
                if repo is None:
                    return
                if not self._authorised():
                    return self._error(401, None, "Invalid credentials in Authorization header")
                if parts[4] == "preupload":
                    files = json.loads(body)["files"]
                    return self._json(200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                       "shouldIgnore": False, "oid": None} for f in files]})
                return self._commit(repo, parts[5], body, f"{parts[2]}/{parts[3]}")
            self._error(404, None, f"no route POST {self.path}")

        def do_GET(self):
            self._get(head=False)

        def do_HEAD(self):
            self._get(head=True)

        def _get(self, head: bool):
            self._record()
            split = urlsplit(self.path)
            parts = [unquote(p) for p in split.path.strip("/").split("/")]
            if parts[0] == "api" and len(parts) >= 4 and parts[1] in ("models", "datasets"):
                repo_type, repo_id = parts[1][:-1], f"{parts[2]}/{parts[3]}"
                repo = self._repo(repo_type, repo_id)
                if repo is None:
                    return
                if len(parts) == 4 or parts[4] == "revision":
                    return self._info(repo, repo_id, parts[5] if len(parts) > 5 else "main")
                if parts[4] == "tree":
                    return self._tree(repo, parts[5], "/".join(parts[6:]))
            repo_type = "dataset" if parts[0] == "datasets" else "model"
            if repo_type == "dataset":
                parts = parts[1:]
            if len(parts) >= 5 and parts[2] == "resolve":
                return self._resolve(repo_type, f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]), head)
            self._error(404, None, f"no route GET {self.path}", head=head)

        # -------------------------------------------------------------- handlers
        def _create(self, payload: dict):
            if not self._authorised():
                return self._error(401, None, "Invalid credentials in Authorization header")
            repo_type = payload.get("type") or "model"
            repo_id = f"{payload.get('organization') or USER}/{payload['name']}"
            prefix = "" if repo_type == "model" else f"{repo_type}s/"
            url = f"{hub.url}/{prefix}{repo_id}"
            if (repo_type, repo_id) in hub.repos:  # the Hub names the existing repository in its 409
                return self._json(409, {"error": "You already created this model repo", "url": url},
                                  {"X-Error-Message": "You already created this model repo"})
            private = payload.get("visibility") == "private" or bool(payload.get("private"))
            hub.repos[(repo_type, repo_id)] = FakeRepo(private=private)
            hub.add_repo(repo_type, repo_id, {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs\n"},
                         message="initial commit")
            self._json(200, {"url": url, "name": repo_id})

        def _validate_yaml(self, payload: dict):
            text = payload.get("content", "")
            errors = []
            if text.startswith("---"):
                try:
                    meta = yaml.safe_load(text.split("---", 2)[1])
                    if not isinstance(meta, dict):
                        errors.append({"message": "metadata must be a mapping"})
                except yaml.YAMLError as e:
                    errors.append({"message": f"invalid YAML: {e}"})
            self._json(400 if errors else 200, {"errors": errors, "warnings": []})

        def _commit(self, repo: FakeRepo, revision: str, body: bytes, repo_id: str):
            lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
            header = next(item["value"] for item in lines if item["key"] == "header")
            added = {}
            for item in lines:
                if item["key"] == "file":
                    added[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                elif item["key"] != "header":
                    return self._error(400, None, f"the fake hub only takes regular files, got {item['key']}")
            sha = hub.commit(repo, revision, header["summary"], added)
            self._json(200, {"commitUrl": f"{hub.url}/{repo_id}/commit/{sha}", "commitOid": sha,
                             "success": True})

        def _info(self, repo: FakeRepo, repo_id: str, revision: str):
            found = repo.files(revision)
            if found is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            sha, files = found
            self._json(200, {"id": repo_id, "sha": sha, "private": repo.private,
                             "siblings": [{"rfilename": p} for p in sorted(files)]})

        def _tree(self, repo: FakeRepo, revision: str, folder: str):
            found = repo.files(revision)
            if found is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            entries = [{"type": "file", "path": p, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                       for p, b in sorted(found[1].items()) if not folder or p.startswith(folder + "/")]
            self._json(200, entries)

        def _resolve(self, repo_type: str, repo_id: str, revision: str, path: str, head: bool):
            repo = self._repo(repo_type, repo_id, head=head)
            if repo is None:
                return
            found = repo.files(revision)
            if found is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", head=head)
            sha, files = found
            if path not in files:
                return self._error(404, "EntryNotFound", f"{path} does not exist", head=head,
                                   extra={"X-Repo-Commit": sha})
            data = files[path]
            self._send(200, data, {"X-Repo-Commit": sha, "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                                   "Content-Type": "application/octet-stream"}, head=head)

    return Handler


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):  # a test module takes it with `fake_hub = hub_fake.fake_hub`
    """huggingface_hub pointed at a FakeHub on 127.0.0.1, online, with a token and a private HF_HOME."""
    from huggingface_hub import constants

    with FakeHub() as hub:
        monkeypatch.setattr(constants, "ENDPOINT", hub.url)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                            hub.url + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_HOME", str(tmp_path / "hf"))
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("HF_TOKEN", hub.token)
        yield hub


def go_offline(monkeypatch):
    """What HF_HUB_OFFLINE=1 does, for the rest of a test."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
