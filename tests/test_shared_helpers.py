"""The helpers every layer shares, one of each (issue #11 item 4): stable seeds, the shard of a process, atomic
writes, tensor <-> PIL and image files, the dtype vocabulary, the OpenAI-compatible chat client and the bounded
cache of rewards and benchmarks. Oracles: the formulas the former copies used (so seeds, and with them datasets and
benchmark images, did not change), PIL and numpy, and a local HTTP server."""
import hashlib
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

from fake_chat import FakeChatServer
from psrl.chat import ChatClient, ChatError, image_data_url, message_text
from psrl.fileio import atomic_dir, atomic_path, step_dirs, write_jsonl_atomic
from psrl.images import ImageLoadError, image_size, load_image, pil_to_tensor, save_image, tensor_to_pil
from psrl.models.loading import torch_dtype_from_name
from psrl.cache import BoundedCache
from psrl.rewards.loading import resolve_dtype
from psrl.rl.sampler import sample_seed
from psrl.seeding import stable_seed
from psrl.sharding import Shard, shard_from_env

pytestmark = pytest.mark.unit


# ----------------------------------------------------------------------------- seeds
def _digest_int(text: str, nbytes: int) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:nbytes], "little")


@pytest.mark.parametrize("parts", [(7, 2, 0), ("rollout", 42, 3, 11), (0, "heldout", "0000017")])
def test_stable_seed_is_the_formula_of_every_former_copy(parts):
    text = ":".join(map(str, parts))
    assert stable_seed(*parts) == _digest_int(text, 8) & (2**63 - 1)       # rl/sampler.py, 63 bits
    assert stable_seed(*parts, bits=31) == _digest_int(text, 4) & 0x7FFFFFFF  # the data pipeline, 31 bits
    # the benchmark's "/"-joined key, one part
    assert stable_seed("3/Action/5") == _digest_int("3/Action/5", 8) & (2**63 - 1)


def test_sample_seed_keeps_its_argument_order():
    assert sample_seed(7, 2, 5) == stable_seed("rollout", 7, 2, 5)
    assert sample_seed(7, 2, 5, salt="eval") == stable_seed("eval", 7, 2, 5)


def test_stable_seed_range():
    assert all(0 <= stable_seed(i, bits=b) < 2**b for i in range(50) for b in (1, 31, 63, 64))
    with pytest.raises(ValueError, match="bits"):
        stable_seed(1, bits=65)


# ----------------------------------------------------------------------------- shards
def test_shard_partitions_and_validates():
    shards = [Shard(r, 3) for r in range(3)]
    assert [s.take("abcdefg") for s in shards] == [list("adg"), list("be"), list("cf")]
    assert [s.owns(4) for s in shards] == [False, True, False]
    assert shards[0].is_main and not shards[1].is_main and shards[2].distributed and not Shard().distributed
    with pytest.raises(ValueError, match="rank 3 of world 3"):
        Shard(3, 3)


def test_shard_device():
    assert Shard().device("cpu") == "cpu" and Shard().device("cuda:3") == "cuda:3"
    expected = "cuda:0" if torch.cuda.is_available() else "cpu"
    assert Shard().device(None) == Shard().device("auto") == expected


def test_shard_from_env(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert shard_from_env() == Shard(0, 1, 0)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert shard_from_env(init=False) == Shard(1, 2, 1)  # LOCAL_RANK defaults to RANK
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="RANK=2 WORLD_SIZE=2"):
        shard_from_env(init=False)


def test_a_barrier_without_a_process_group_is_an_error():
    Shard().barrier()  # one process: nothing to wait for
    with pytest.raises(RuntimeError, match="no process group"):
        Shard(0, 2).barrier()


# ----------------------------------------------------------------------------- atomic writes
def test_atomic_path_replaces_on_success_and_keeps_the_old_file_on_error(tmp_path):
    target = tmp_path / "sub" / "a.npy"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.suffix == ".npy" and tmp.name.startswith(".")
        np.save(tmp, np.arange(3))  # np.save keeps a path that already ends in .npy
    assert np.load(target).tolist() == [0, 1, 2]
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        np.save(tmp, np.arange(5))
        raise RuntimeError("killed mid-write")
    assert np.load(target).tolist() == [0, 1, 2]
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.npy"]


def test_atomic_dir_replaces_a_folder_whole_and_keeps_the_old_one_on_error(tmp_path):
    target = tmp_path / "runs" / "adapter"
    (tmp_path / "runs" / ".adapter.tmp").mkdir(parents=True)  # a stale temp folder a killed run left
    (tmp_path / "runs" / ".adapter.tmp" / "stale.bin").write_bytes(b"x")
    with atomic_dir(target) as tmp:
        assert tmp.is_dir() and list(tmp.iterdir()) == [] and not target.exists()
        (tmp / "a.txt").write_text("one")
    assert [p.name for p in target.iterdir()] == ["a.txt"]
    with atomic_dir(target) as tmp:
        (tmp / "b.txt").write_text("two")
    assert [p.name for p in target.iterdir()] == ["b.txt"]  # replaced whole, not merged
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "c.txt").write_text("half")
        raise RuntimeError("killed mid-write")
    assert [p.name for p in target.iterdir()] == ["b.txt"]
    assert sorted(p.name for p in target.parent.iterdir()) == ["adapter"]


def test_step_dirs_are_the_step_n_folders_in_numeric_order(tmp_path):
    for name in ("step-10", "step-2", ".step-3.tmp", "step-x", "latest"):
        (tmp_path / name).mkdir()
    (tmp_path / "step-7").write_text("a file, not a checkpoint")
    assert step_dirs(tmp_path) == [(2, tmp_path / "step-2"), (10, tmp_path / "step-10")]
    assert step_dirs(tmp_path / "missing") == []


def test_write_jsonl_atomic(tmp_path):
    rows = [{"id": "1", "prompt": "un café"}, {"id": "2", "x": [1, None]}]
    path = write_jsonl_atomic(tmp_path / "r.jsonl", rows)
    assert [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] == rows
    assert "café" in path.read_text(encoding="utf-8")


# ----------------------------------------------------------------------------- images
def test_tensor_to_pil_and_back_are_exact_on_8_bit_values():
    pixels = torch.randint(0, 256, (3, 5, 7), generator=torch.Generator().manual_seed(0))
    pil = tensor_to_pil(pixels.float() / 255)
    assert pil.mode == "RGB" and pil.size == (7, 5)
    assert np.array_equal(np.asarray(pil), pixels.permute(1, 2, 0).numpy().astype(np.uint8))
    assert torch.equal(pil_to_tensor(pil), pixels.float() / 255)
    # clamped, rounded half to even as numpy does: 0.5/255 -> 0, 1.5/255 -> 2, overshoot -> 255
    edge = torch.tensor([0.5 / 255, 1.5 / 255, 1.2]).view(3, 1, 1).expand(3, 1, 2)
    assert np.asarray(tensor_to_pil(edge))[0, 0].tolist() == [0, 2, 255]
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        tensor_to_pil(torch.zeros(1, 3, 4, 4))


def test_pil_to_tensor_composites_transparency_like_the_loader():
    rgba = Image.new("RGBA", (2, 2), (255, 0, 0, 0))  # fully transparent red -> the white background
    assert torch.equal(pil_to_tensor(rgba), torch.ones(3, 2, 2))


def test_save_image_writes_by_suffix_atomically(tmp_path):
    image = torch.rand(3, 16, 12, generator=torch.Generator().manual_seed(1))
    png = save_image(image, tmp_path / "out" / "x.png")
    assert torch.equal(pil_to_tensor(load_image(png)), pil_to_tensor(tensor_to_pil(image)))  # lossless
    jpg = save_image(tensor_to_pil(image), tmp_path / "out" / "x.jpg")
    with Image.open(jpg) as im:
        assert im.format == "JPEG" and im.size == (12, 16)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["x.jpg", "x.png"]


def test_image_size_applies_exif_orientation_without_decoding(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees: stored 60x30, shown 30x60
    Image.new("RGB", (60, 30)).save(tmp_path / "phone.jpg", exif=exif)
    assert image_size(tmp_path / "phone.jpg") == load_image(tmp_path / "phone.jpg").size == (30, 60)
    with pytest.raises(ImageLoadError, match="file not found"):
        image_size(tmp_path / "missing.png")


# ----------------------------------------------------------------------------- dtypes
def test_one_dtype_vocabulary():
    assert torch_dtype_from_name("bf16") is torch_dtype_from_name("bfloat16") is torch.bfloat16
    assert torch_dtype_from_name("fp16") is torch.float16 and torch_dtype_from_name("fp32") is torch.float32
    assert resolve_dtype("bf16") is torch.bfloat16 and resolve_dtype(None, "cpu") is torch.float32
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        resolve_dtype("int8")


# ----------------------------------------------------------------------------- chat client
def test_chat_client_retries_429_and_5xx_then_answers():
    with FakeChatServer(statuses=[500, 429]) as srv:
        client = ChatClient(srv.url + "/", model="m", api_key="sk-test", retries=2, backoff=0.0,
                            defaults={"temperature": 0.2, "max_tokens": 9})
        assert client.complete("hi", max_tokens=1) == "ok"
    assert len(srv.bodies) == 3
    assert srv.bodies[-1] == {"model": "m", "temperature": 0.2, "max_tokens": 1,
                              "messages": [{"role": "user", "content": "hi"}]}
    assert srv.headers[-1]["Authorization"] == "Bearer sk-test"


def test_chat_client_gives_up_after_its_retries_and_never_retries_a_refusal():
    with FakeChatServer(statuses=[503, 503, 503]) as srv:
        with pytest.raises(ChatError, match=r"failed after 2 attempts; last error: HTTP 503"):
            ChatClient(srv.url, retries=1, backoff=0.0, what="llm endpoint").post({"messages": []})
    with FakeChatServer(statuses=[401]) as srv:
        with pytest.raises(ChatError, match="HTTP 401"):
            ChatClient(srv.url, retries=3, backoff=0.0).post({"messages": []})
        assert len(srv.bodies) == 1
    with pytest.raises(ChatError, match="unreachable"):
        ChatClient("http://127.0.0.1:9/v1", retries=0, timeout=2).post({})


def test_chat_reply_without_text_is_an_error():
    with FakeChatServer(reply={"choices": []}) as srv:
        with pytest.raises(ChatError, match="no message content"):
            ChatClient(srv.url, backoff=0.0).complete("hi")
    with pytest.raises(ChatError, match="not text"):
        message_text({"choices": [{"message": {"content": None}}]})
    assert image_data_url(Image.new("RGB", (2, 2))).startswith("data:image/png;base64,")
    assert image_data_url(Image.new("RGB", (2, 2)), "jpg").startswith("data:image/jpeg;base64,")


# ----------------------------------------------------------------------------- a reward's batch
def test_scorable_images_keeps_failures_per_sample_and_checks_the_count():
    from psrl.data.records import Record
    from psrl.rewards.images import scorable_images

    images = torch.rand(3, 3, 16, 16)
    images[1, 0, 0, 0] = float("nan")
    records = [Record(id=str(i), prompt="p") for i in range(3)]
    pils, failures, idx = scorable_images(images, records, "demo")
    assert idx == [0, 2] and pils[1] is None and "NaN" in failures[1]
    with pytest.raises(ValueError, match="demo: 3 images for 2 records"):
        scorable_images(images, records[:2], "demo")


# ----------------------------------------------------------------------------- bounded cache
def test_bounded_cache_fifo_drops_the_first_stored_even_when_read():
    cache = BoundedCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a read does not refresh a FIFO entry
    cache.put("a", 10)  # nor does storing it again
    cache.put("c", 3)
    assert "a" not in cache and cache.get("b") == 2 and cache.get("c") == 3 and len(cache) == 2


def test_bounded_cache_lru_drops_the_least_recently_used():
    cache = BoundedCache(2, eviction="lru")
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1
    cache.put("c", 3)
    assert "b" not in cache and cache.get("a") == 1 and cache.get("c") == 3
    assert cache.get("b", "missing") == "missing"


def test_bounded_cache_of_size_zero_keeps_nothing_and_sizes_are_checked():
    cache = BoundedCache(0)
    cache.put("a", 1)
    assert len(cache) == 0 and cache.get("a") is None
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(ValueError, match="cache_size must be an integer >= 0"):
            BoundedCache(bad)
    with pytest.raises(ValueError, match="eviction must be one of"):
        BoundedCache(3, eviction="random")


def test_bounded_cache_stays_bounded_under_threads():
    cache = BoundedCache(50, eviction="lru")

    def work(t):
        for i in range(500):
            cache.put((t, i), i)
            cache.get((t, i // 2))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(work, range(8)))
    assert len(cache) == 50
