"""The reward server under bad requests (issue #10 section 7): one bad request or sample fails alone, limits are
answered with 413/422 before the work they guard, the host is taken literally and the API key is never echoed."""
import base64
import io
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image
from launch import free_port
from test_reward_server import ServerThread  # skips this module too when uvicorn is missing

from psrl.config import ConfigError, from_dict
from psrl.data.records import Record, SubjectRef, resolve_records
from psrl.errors import PsrlError
from psrl.rewards import build_reward
from psrl.serve.server import ServerConfig, create_app, load_server_config
from psrl.serve.wire import encode_png

uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

LONG_PHRASE = " ".join(["cat"] * 5000)  # the 5,000-word subject phrase


@pytest.fixture
def data_root(tmp_path):
    g = torch.Generator().manual_seed(0)
    Image.fromarray((torch.rand(40, 40, 3, generator=g) * 255).byte().numpy()).save(tmp_path / "a.png")
    return tmp_path


def _rec(i, phrase="cat"):
    return Record(id=f"r{i}", prompt=f"a cat number {i}", subjects=(SubjectRef("a.png", phrase),))


def _png_b64(seed, size=32):
    g = torch.Generator().manual_seed(seed)
    arr = (torch.rand(size, size, 3, generator=g) * 255).byte().numpy()
    return encode_png(Image.fromarray(arr))


def _tensor(b64):
    arr = torch.from_numpy(np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")).copy())
    return (arr.float() / 255).permute(2, 0, 1)[None]


def _body(pngs, recs):
    return {"images": pngs, "records": [r.to_json() for r in recs]}


SC_ARGS = {"path": "tiny", "detector": {"kind": "grounding_dino", "box_threshold": 0.0}}


@pytest.mark.component
def test_one_bad_request_in_a_batch_fails_alone(data_root):
    # The tiny grounding detector raises on a 5,000-word phrase (its text positions run out): the real failure.
    cfg = from_dict(ServerConfig, {"rewards": [{"name": "sc", "reward": "subject_consistency", "args": SC_ARGS}],
                                   "data_root": str(data_root), "batch_window_ms": 400,
                                   "max_text_chars": 10**6})  # let the long phrase reach the reward
    local = build_reward("subject_consistency", dict(SC_ARGS))  # scores records resolved here, under data_root
    port = free_port()
    url = f"http://127.0.0.1:{port}/score/sc"
    good = [(_png_b64(s), _rec(s)) for s in range(6)]
    mixed = _body([_png_b64(10), _png_b64(11)], [_rec(10), _rec(11, LONG_PHRASE)])  # one bad sample of two
    lone_bad = _body([_png_b64(12)], [_rec(12, LONG_PHRASE)])
    bodies = [_body([p], [r]) for p, r in good] + [mixed, lone_bad]
    with ServerThread(create_app(cfg), port):
        with ThreadPoolExecutor(len(bodies)) as pool:
            replies = list(pool.map(lambda b: httpx.post(url, json=b, timeout=120), bodies))
        health = httpx.get(f"http://127.0.0.1:{port}/health").json()
    for (png, rec), reply in zip(good, replies):
        assert reply.status_code == 200, reply.text
        expected = local(_tensor(png), resolve_records([rec], data_root)).scores
        assert reply.json()["scores"][0] == pytest.approx(float(expected[0]), abs=1e-5)
    mixed_reply = replies[len(good)].json()
    assert replies[len(good)].status_code == 200
    expected = local(_tensor(mixed["images"][0]), resolve_records([_rec(10)], data_root)).scores
    assert mixed_reply["scores"][0] == pytest.approx(float(expected[0]), abs=1e-5)
    assert mixed_reply["scores"][1] is None and mixed_reply["failures"][0] is None
    # the reward itself isolates the bad sample (the detector names the over-long phrase) ...
    assert "failed on this sample" in mixed_reply["failures"][1] and "5003 tokens" in mixed_reply["failures"][1]
    # ... so a request of only bad samples is answered too: every score null, each with its reason
    lone = replies[-1].json()
    assert replies[-1].status_code == 200 and lone["scores"] == [None] and "5003 tokens" in lone["failures"][0]
    assert health["requests"]["sc"] == len(good) + 2  # the lone bad request is answered too


def boom_reward(images, records):
    """A user's ``module:attr`` reward that raises for a whole batch when any record says "boom"."""
    from psrl.rewards.base import RewardOutput

    if any("boom" in r.prompt for r in records):
        raise RuntimeError("boom in the batch")
    return RewardOutput(scores=torch.full((len(records),), 0.5), failures=[None] * len(records))


@pytest.mark.component
def test_a_reward_that_raises_is_bisected_so_batch_mates_get_scores(data_root):
    cfg = from_dict(ServerConfig, {"rewards": [{"name": "b", "reward": "test_reward_server_limits:boom_reward"}],
                                   "data_root": str(data_root), "batch_window_ms": 400})
    port = free_port()
    url = f"http://127.0.0.1:{port}/score/b"
    bad = Record(id="bad", prompt="boom")
    bodies = [_body([_png_b64(s)], [_rec(s)]) for s in range(4)] + [_body([_png_b64(9)], [bad])]
    with ServerThread(create_app(cfg), port):
        with ThreadPoolExecutor(len(bodies)) as pool:
            replies = list(pool.map(lambda b: httpx.post(url, json=b, timeout=120), bodies))
        health = httpx.get(f"http://127.0.0.1:{port}/health").json()
    assert [r.status_code for r in replies[:4]] == [200] * 4
    assert all(r.json()["scores"] == [0.5] for r in replies[:4])
    assert replies[4].status_code == 500 and "boom in the batch" in replies[4].json()["detail"]
    assert health["isolated_failures"]["b"] >= 1


@pytest.mark.component
def test_overlong_text_gets_422_while_its_batch_mates_are_scored(data_root):
    cfg = from_dict(ServerConfig, {"rewards": [{"name": "mean_color"}], "batch_window_ms": 300})
    assert cfg.max_text_chars == 4096
    port = free_port()
    url = f"http://127.0.0.1:{port}/score/mean_color"
    bodies = [_body([_png_b64(s)], [_rec(s)]) for s in range(8)]
    bodies.insert(3, _body([_png_b64(99)], [_rec(99, LONG_PHRASE)]))
    prompt_too_long = _body([_png_b64(98)], [Record(id="p", prompt="x" * 5000)])
    with ServerThread(create_app(cfg), port):
        with ThreadPoolExecutor(len(bodies)) as pool:
            replies = list(pool.map(lambda b: httpx.post(url, json=b, timeout=60), bodies))
        long_prompt = httpx.post(url, json=prompt_too_long, timeout=60)
    assert [r.status_code for r in replies] == [200] * 3 + [422] + [200] * 5
    assert "records[0].subjects[0].phrase has 19999 characters; max_text_chars=4096" in replies[3].json()["detail"]
    assert long_prompt.status_code == 422 and "records[0].prompt" in long_prompt.json()["detail"]


def _big_png_b64(side):
    buf = io.BytesIO()
    Image.new("1", (side, side)).save(buf, format="PNG")  # a few KiB on disk, side*side pixels decoded
    return base64.b64encode(buf.getvalue()).decode("ascii")


@pytest.mark.component
def test_pixel_body_and_image_count_limits_are_answered_before_decoding():
    cfg = from_dict(ServerConfig, {"rewards": [{"name": "mean_color"}], "max_body_bytes": 200_000, "max_images": 3})
    lax = from_dict(ServerConfig, {"rewards": [{"name": "mean_color"}], "max_pixels": 10**9})
    port, port2 = free_port(), free_port()
    with ServerThread(create_app(cfg), port), ServerThread(create_app(lax), port2):
        url = f"http://127.0.0.1:{port}/score/mean_color"
        big = _big_png_b64(8000)
        assert len(big) < 20_000
        t0 = time.time()
        r = httpx.post(url, json=_body([big], [_rec(0)]), timeout=60)
        assert r.status_code == 413 and "8000x8000 = 64000000 pixels exceeds max_pixels=16777216" in r.json()["detail"]
        assert time.time() - t0 < 2.0  # the header was read, the 64 M pixels never decoded
        # over PIL's own decompression-bomb limit: 413 as well, never a 500
        bomb = _big_png_b64(14000)
        r = httpx.post(f"http://127.0.0.1:{port2}/score/mean_color", json=_body([bomb], [_rec(0)]), timeout=60)
        assert r.status_code == 413 and "too many pixels" in r.json()["detail"]
        # body over max_body_bytes: refused from Content-Length ...
        r = httpx.post(url, content=b"{" + b" " * 300_000 + b"}", headers={"content-type": "application/json"})
        assert r.status_code == 413 and "max_body_bytes=200000" in r.json()["detail"]

        # ... and while streaming when the client sends no length (chunked)
        def chunks():
            for _ in range(30):
                yield b" " * 10_000

        r = httpx.post(url, content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413 and "max_body_bytes" in r.json()["detail"]
        # too many images: 422 naming the limit
        r = httpx.post(url, json=_body([_png_b64(i) for i in range(4)], [_rec(i) for i in range(4)]))
        assert r.status_code == 422 and "4 images in one request; max_images=3" in r.json()["detail"]
        # a truncated PNG and a 1x1 image are decoded (not just their headers checked) and refused
        raw = base64.b64decode(_png_b64(0))
        r = httpx.post(url, json=_body([base64.b64encode(raw[: len(raw) // 2]).decode()], [_rec(0)]))
        assert r.status_code == 422 and "images[0]" in r.json()["detail"]
        r = httpx.post(url, json=_body([_png_b64(0, size=1)], [_rec(0)]))
        assert r.status_code == 422 and "minimum side" in r.json()["detail"]
        # within the limits all is well
        r = httpx.post(url, json=_body([_png_b64(i) for i in range(3)], [_rec(i) for i in range(3)]))
        assert r.status_code == 200 and len(r.json()["scores"]) == 3
    with pytest.raises(ConfigError, match="max_pixels must be >= 1, got 0"):
        from_dict(ServerConfig, {"rewards": [{"name": "mean_color"}], "max_pixels": 0})


def _cfg_file(tmp_path, extra=""):
    path = tmp_path / "serve.yaml"
    path.write_text("rewards:\n  - {name: mean_color}\nbatch_window_ms: 5\n" + extra)
    return path


@pytest.mark.e2e
def test_host_is_taken_literally(tmp_path, capsys, monkeypatch):
    from psrl.cli.main import main

    monkeypatch.delenv("PSRL_REWARD_API_KEY", raising=False)
    path = _cfg_file(tmp_path)
    assert load_server_config(path, host="::").host == "::"
    assert load_server_config(path, ["host=::"]).host == "::"
    assert load_server_config(path, ["device=0"]).device == "0"
    # '::' (all interfaces) is parsed as an address and so needs a key, like 0.0.0.0
    assert main(["serve", "rewards", "--config", str(path), "--host", "::"]) == 2
    err = capsys.readouterr().err
    assert "refusing to serve rewards on '::' without an API key" in err and "bad value" not in err
    # an IPv6 loopback is served without a key
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
            port = s.getsockname()[1]
    except OSError:
        pytest.skip("no IPv6 loopback here")
    cfg = load_server_config(path, host="::1", port=port)
    with ServerThread(create_app(cfg), port, host="::1"):
        assert httpx.get(f"http://[::1]:{port}/health").json()["rewards"] == ["mean_color"]


@pytest.mark.e2e
def test_api_key_is_never_echoed_nor_taken_from_the_command_line(tmp_path, capsys, monkeypatch, caplog):
    from psrl.cli.main import main

    monkeypatch.delenv("PSRL_REWARD_API_KEY", raising=False)
    numeric = _cfg_file(tmp_path, "api_key: 98765432\n")
    assert main(["serve", "rewards", "--config", str(numeric)]) == 2
    err = capsys.readouterr().err
    assert "api_key must be a non-empty string" in err and "98765432" not in err
    path = _cfg_file(tmp_path)
    assert main(["serve", "rewards", "--config", str(path), "--set", "api_key=s3cret-value"]) == 2
    err = capsys.readouterr().err
    assert "PSRL_REWARD_API_KEY" in err and "api_key_file" in err and "s3cret-value" not in err
    cfg = load_server_config(path)
    assert "api_key" not in repr(cfg).replace("api_key_env", "").replace("api_key_file", "")
    # from a file (surrounding whitespace stripped), served off loopback, wrong key refused, key not logged
    key_file = tmp_path / "key"
    key_file.write_text("file-key-123\n")
    key_file.chmod(0o600)
    cfg = load_server_config(path, [f"api_key_file={key_file}"])
    assert cfg.resolved_api_key() == "file-key-123"
    port = free_port()
    with caplog.at_level("DEBUG"), ServerThread(create_app(cfg), port):
        url = f"http://127.0.0.1:{port}/score/mean_color"
        body = _body([_png_b64(0)], [_rec(0)])
        assert httpx.post(url, json=body, headers={"Authorization": "Bearer file-key-123"}).status_code == 200
        assert httpx.post(url, json=body, headers={"Authorization": "Bearer nope"}).status_code == 401
        client = build_reward("remote", {"url": f"http://127.0.0.1:{port}", "reward": "mean_color",
                                         "api_key_file": str(key_file), "retries": 0})
        assert client(_tensor(_png_b64(0)), [_rec(0)]).scores.shape == (1,)
    assert "file-key-123" not in caplog.text
    # from the environment (the default)
    monkeypatch.setenv("PSRL_REWARD_API_KEY", "env-key")
    assert load_server_config(path).resolved_api_key() == "env-key"
    # a readable-by-others key file is named in a warning; a missing or empty one is an error naming the file only
    key_file.chmod(0o644)
    with caplog.at_level("WARNING"):
        cfg.resolved_api_key()
    assert "chmod 600" in caplog.text
    key_file.write_text("  \n")
    with pytest.raises(PsrlError, match="is empty"):
        cfg.resolved_api_key()
    with pytest.raises(PsrlError, match="cannot read it"):
        load_server_config(path, [f"api_key_file={tmp_path / 'absent'}"]).resolved_api_key()
    with pytest.raises(ConfigError, match="not both"):
        load_server_config(_cfg_file(tmp_path, "api_key: abc\n"), [f"api_key_file={key_file}"])
