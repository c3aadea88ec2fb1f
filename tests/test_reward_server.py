"""Reward server on loopback with tiny models: concurrent clients get the in-process scores, requests are
batched, a wrong key is refused, a server restarted mid-run is retried, bad requests are rejected clearly."""
import base64
import io
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from launch import free_port
from PIL import Image

from psrl.config import ConfigError, from_dict
from psrl.data.records import Record, SubjectRef, resolve_records
from psrl.errors import PsrlError
from psrl.rewards import build_reward
from psrl.serve.client import RemoteRewardError
from psrl.serve.server import ServerConfig, check_bind, create_app

uvicorn = pytest.importorskip("uvicorn")


class ServerThread:
    def __init__(self, app, port, host="127.0.0.1"):
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            if time.time() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def data_root(tmp_path):
    g = torch.Generator().manual_seed(0)
    Image.fromarray((torch.rand(40, 40, 3, generator=g) * 255).byte().numpy()).save(tmp_path / "a.png")
    return tmp_path


def _cfg(data_root, **kw):
    return from_dict(ServerConfig, {
        "rewards": [{"name": "sc", "reward": "subject_consistency",
                     "args": {"path": "tiny", "detector": {"kind": "grounding_dino", "box_threshold": 0.0}}},
                    {"name": "mean_color"}, {"name": "clip_t", "args": {"path": "tiny"}}],
        "data_root": str(data_root), "batch_window_ms": 200, **kw})


def _recs(n, root=None):
    """Records, resolved under ``root`` when given (as a loader hands them over)."""
    recs = [Record(id=f"r{i}", prompt=f"a cat number {i}", subjects=(SubjectRef("a.png", "cat"),)) for i in range(n)]
    return resolve_records(recs, root) if root is not None else recs


def _png_bytes():
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 200, 10)).save(buf, format="PNG")
    return buf.getvalue()


def _images(n, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, 32, 32, generator=g) * 255).round() / 255  # exact through PNG


@pytest.mark.component
def test_concurrent_clients_match_in_process_and_are_batched(data_root):
    """The client's records are resolved under its own copy of the data; they travel relative to that root and
    the server resolves them under its data_root: the same file content, scored the same."""
    cfg = _cfg(data_root)
    client_root = data_root / "client_copy"
    client_root.mkdir()
    shutil.copy(data_root / "a.png", client_root / "a.png")
    port = free_port()
    with ServerThread(create_app(cfg), port):
        import httpx

        assert httpx.get(f"http://127.0.0.1:{port}/health").json()["rewards"] == ["clip_t", "mean_color", "sc"]
        for served, local_name, local_args in [
                ("sc", "subject_consistency", dict(cfg.rewards[0].args)),
                ("mean_color", "mean_color", {}), ("clip_t", "clip_t", {"path": "tiny"})]:
            local = build_reward(local_name, local_args)
            client = build_reward("remote", {"url": f"http://127.0.0.1:{port}", "reward": served, "retries": 0})
            jobs = [(_images(2, s), _recs(2, client_root)) for s in range(4)]
            with ThreadPoolExecutor(4) as pool:
                remote_outs = list(pool.map(lambda j, c=client: c(*j), jobs))
            for (imgs, recs), out in zip(jobs, remote_outs):
                expected = local(imgs, recs)
                assert torch.allclose(out.scores, expected.scores, atol=1e-5), served
                assert out.failures == expected.failures
            if served == "sc":
                assert len(remote_outs[0].details["per_subject"]) == 2
        health = httpx.get(f"http://127.0.0.1:{port}/health").json()
        assert health["requests"]["sc"] == 4 and health["batches"]["sc"] < 4  # concurrent requests shared batches


@pytest.mark.component
def test_api_key_required_off_loopback_and_wrong_key_refused(data_root, monkeypatch):
    with pytest.raises(PsrlError, match="without an API key"):
        check_bind("0.0.0.0", None)
    check_bind("0.0.0.0", "k")
    check_bind("::1", None)
    monkeypatch.setenv("TEST_RM_KEY", "right-key")
    cfg = from_dict(ServerConfig, {"rewards": [{"name": "mean_color"}], "api_key_env": "TEST_RM_KEY"})
    port = free_port()
    with ServerThread(create_app(cfg), port):
        url = f"http://127.0.0.1:{port}"
        good = build_reward("remote", {"url": url, "reward": "mean_color", "api_key": "right-key"})
        assert good(_images(1, 0), _recs(1)).scores.shape == (1,)
        bad = build_reward("remote", {"url": url, "reward": "mean_color", "api_key": "wrong", "retries": 3})
        t0 = time.time()
        with pytest.raises(RemoteRewardError, match="refused the API key"):
            bad(_images(1, 0), _recs(1))
        assert time.time() - t0 < 2  # not retried
        unknown = build_reward("remote", {"url": url, "reward": "nope", "api_key": "right-key"})
        with pytest.raises(RemoteRewardError, match="unknown reward"):
            unknown(_images(1, 0), _recs(1))


@pytest.mark.component
def test_server_restarted_mid_run_is_retried(data_root):
    cfg = from_dict(ServerConfig, {"rewards": [{"name": "mean_color"}]})
    port = free_port()
    client = build_reward("remote", {"url": f"http://127.0.0.1:{port}", "reward": "mean_color", "retries": 6,
                                     "backoff": 0.2, "timeout": 5})
    imgs, recs = _images(2, 1), _recs(2)
    with ServerThread(create_app(cfg), port):
        first = client(imgs, recs)
    restarted = []

    def restart_later():
        time.sleep(0.8)
        srv = ServerThread(create_app(cfg), port)
        srv.__enter__()
        restarted.append(srv)

    threading.Thread(target=restart_later, daemon=True).start()
    try:
        second = client(imgs, recs)  # the first attempts hit a closed port, later ones the new server
    finally:
        for srv in restarted:
            srv.__exit__()
    assert torch.allclose(first.scores, second.scores)
    down = build_reward("remote", {"url": f"http://127.0.0.1:{free_port()}", "reward": "mean_color",
                                   "retries": 1, "backoff": 0.01})
    with pytest.raises(RemoteRewardError, match="failed after 2 attempts"):
        down(imgs, recs)
    nan = build_reward("remote", {"url": f"http://127.0.0.1:{free_port()}", "reward": "mean_color",
                                  "retries": 0, "on_error": "nan"})
    out = nan(imgs, recs)
    assert torch.isnan(out.scores).all() and "unreachable" in out.failures[0]


@pytest.mark.component
def test_bad_requests_are_rejected_clearly(data_root):
    import httpx

    cfg = from_dict(ServerConfig, {"rewards": [{"name": "mean_color"}]})
    port = free_port()
    with ServerThread(create_app(cfg), port):
        url = f"http://127.0.0.1:{port}/score/mean_color"
        r = httpx.post(url, json={"images": ["not base64!"], "records": [_recs(1)[0].to_json()]})
        assert r.status_code == 422 and "images[0]" in r.json()["detail"]
        r = httpx.post(url, json={"images": [], "records": []})
        assert r.status_code == 422
        r = httpx.post(url, json={"images": ["aGk="], "records": [{"id": "x"}]})
        assert r.status_code == 422
        img = base64.b64encode(_png_bytes()).decode()
        absolute = dict(_recs(1)[0].to_json(), subjects=[{"image": str(data_root / "a.png"), "phrase": "cat"}])
        r = httpx.post(url, json={"images": [img], "records": [absolute]})  # a client never picks server files
        assert r.status_code == 422 and "is absolute; send paths relative to the data root" in r.json()["detail"]
        r = httpx.post(url, json={"images": [img], "records": [_recs(1)[0].to_json()]})  # relative, unused here
        assert r.status_code == 200
    rooted = from_dict(ServerConfig, {"rewards": [{"name": "mean_color"}], "data_root": str(data_root)})
    port = free_port()
    with ServerThread(create_app(rooted), port):
        escaping = dict(_recs(1)[0].to_json(), subjects=[{"image": "../a.png", "phrase": "cat"}])
        r = httpx.post(f"http://127.0.0.1:{port}/score/mean_color", json={"images": [img], "records": [escaping]})
        assert r.status_code == 422 and "'../a.png' escapes the data root" in r.json()["detail"]
    with pytest.raises(ConfigError, match="at least one reward"):
        from_dict(ServerConfig, {"rewards": []})
    with pytest.raises(ConfigError, match="unknown config key"):
        from_dict(ServerConfig, {"rewards": [{"name": "x"}], "hosst": "0.0.0.0"})


@pytest.mark.unit
def test_the_server_config_is_the_one_resolver_of_request_records(tmp_path):
    from psrl.data.records import RecordError

    sent = Record(id="r", prompt="a cat", subjects=(SubjectRef(image="refs/a.png", phrase="cat"),))
    rooted = from_dict(ServerConfig, {"rewards": [{"name": "mean_color"}], "data_root": str(tmp_path)})
    (got,) = rooted.resolve_records([sent])
    assert got.subjects[0].image == str(tmp_path.resolve() / "refs" / "a.png") and got.root == str(tmp_path.resolve())
    bare = from_dict(ServerConfig, {"rewards": [{"name": "mean_color"}]})
    assert bare.resolve_records([sent]) == [sent] and bare.resolve_records([sent])[0].root is None  # as sent
    absolute = Record(id="r", prompt="x", subjects=(SubjectRef(image=str(tmp_path / "a.png"), phrase="cat"),))
    for cfg in (rooted, bare):
        with pytest.raises(RecordError, match="absolute|must be relative"):
            cfg.resolve_records([absolute])


@pytest.mark.e2e
def test_cli_serve_rewards(tmp_path, capsys, monkeypatch):
    import subprocess
    import sys

    import httpx

    from psrl.cli.main import main

    cfg = tmp_path / "serve.yaml"
    cfg.write_text("rewards:\n  - {name: mean_color}\nbatch_window_ms: 5\n")
    monkeypatch.delenv("PSRL_REWARD_API_KEY", raising=False)
    assert main(["serve", "rewards", "--config", str(cfg), "--host", "0.0.0.0"]) == 2
    assert "without an API key" in capsys.readouterr().err
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "psrl", "serve", "rewards", "--config", str(cfg), "--port",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline, health = time.time() + 60, None
        while time.time() < deadline and proc.poll() is None:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).json()
                break
            except httpx.TransportError:
                time.sleep(0.2)
        assert health is not None and health["rewards"] == ["mean_color"], proc.stderr.read() if proc.poll() else ""
        client = build_reward("remote", {"url": f"http://127.0.0.1:{port}", "reward": "mean_color"})
        local = build_reward("mean_color")
        imgs = _images(2, 3)
        assert torch.allclose(client(imgs, _recs(2)).scores, local(imgs, _recs(2)).scores, atol=1e-6)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
