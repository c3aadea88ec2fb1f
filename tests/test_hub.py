"""Hub data and weights, offline: ``hf://`` records and folders fetched from a local fake Hub (tests/hub_fake.py),
cached per commit and read again with the Hub offline; Flow-GRPO ``.txt`` prompt files as records; and
``model.revision`` / ``model.variant`` loading from a Hub cache laid out on disk, with the resolved commit recorded.
``psrl push`` is tested in test_push.py."""
import json
from pathlib import Path

import pytest
import torch

import hub_fake
from hub_fake import go_offline
from psrl.config import ConfigError, from_dict
from psrl.data.records import RecordError, load_records, read_records, records_root, resolve_under
from psrl.errors import ModelLoadError
from psrl.hub import HubError, HubPath, parse_hf_uri, referenced_files
from psrl.models.config import ModelConfig
from psrl.models.tiny import tiny_flux_components

fake_hub = hub_fake.fake_hub  # the fixture


# ---------------------------------------------------------------------------------------------------------- unit
@pytest.mark.unit
def test_hf_paths_parse_like_hffilesystem_and_bad_ones_are_one_line_errors():
    assert parse_hf_uri("hf://org/ds") == HubPath("org/ds")
    assert parse_hf_uri("hf://datasets/org/ds@v1.0/data/train.jsonl") == HubPath("org/ds", "data/train.jsonl",
                                                                                   "v1.0")
    assert parse_hf_uri("hf://google/dreambooth/dataset/") == HubPath("google/dreambooth", "dataset")
    assert str(parse_hf_uri("hf://org/ds@abc/x.txt")) == "hf://org/ds@abc/x.txt"
    for bad, why in [("hf://org", "expected"), ("hf://org/ds/../x", r"'\.\.'"), ("hf://org/ds@/x", "empty revision"),
                     ("hf://org/d s/x", "not a valid Hub repository id"), ("org/ds", "not an hf:// path")]:
        with pytest.raises(HubError, match=why) as e:
            parse_hf_uri(bad)
        assert "\n" not in str(e.value)


@pytest.mark.unit
def test_referenced_files_are_the_records_images_relative_to_the_records_folder():
    text = "\n".join([
        json.dumps({"id": "a", "prompt": "p", "subjects": [{"image": "img/dog.png", "phrase": "dog"},
                                                           {"image": "./img/../img/cat.png", "phrase": "cat"}],
                    "target": "targets/a.png"}),
        json.dumps({"id": "b", "prompt": "p", "subjects": [{"image": "img/dog.png", "phrase": "dog"}]}),
        json.dumps({"id": "c", "prompt": "p", "subjects": [{"image": "/etc/passwd", "phrase": "x"},
                                                           {"image": "../../outside.png", "phrase": "y"}]}),
        "not json", json.dumps(["a list"])])
    assert referenced_files(text, "data") == ["data/img/dog.png", "data/img/cat.png", "data/targets/a.png"]
    assert referenced_files(text, "") == ["img/dog.png", "img/cat.png", "targets/a.png"]


@pytest.mark.unit
def test_flow_grpo_prompt_files_are_records_with_line_number_ids(tmp_path):
    f = tmp_path / "train.txt"
    f.write_bytes("\ufeffa photo of a cat\n\n  a red cube on a blue sphere  \r\nan \"OPEN\" sign\n".encode())
    records = read_records(str(f))
    assert [(r.id, r.prompt) for r in records] == [("line-1", "a photo of a cat"),
                                                   ("line-3", "a red cube on a blue sphere"),
                                                   ("line-4", 'an "OPEN" sign')]
    assert all(r.subjects == () for r in records)
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(RecordError, match="no prompts"):
        read_records(tmp_path / "empty.txt")
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9\n")
    with pytest.raises(RecordError, match="not UTF-8"):
        read_records(tmp_path / "latin1.txt")


@pytest.mark.unit
def test_revision_and_variant_are_config_keys_refused_for_tiny():
    cfg = from_dict(ModelConfig, {"path": "black-forest-labs/FLUX.1-dev", "revision": "main", "variant": "fp16"})
    assert (cfg.revision, cfg.variant) == ("main", "fp16")
    with pytest.raises(ConfigError, match=r"model.revision='abc'.*'tiny'"):
        from_dict(ModelConfig, {"path": "tiny", "revision": "abc"})
    with pytest.raises(ConfigError, match="model.variant must be a non-empty string"):
        from_dict(ModelConfig, {"path": "org/m", "variant": " "})


# ---------------------------------------------------------------------------------------------------------- records
@pytest.mark.component
def test_hf_records_are_fetched_with_their_images_pinned_and_read_offline(fake_hub, monkeypatch):
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(buf, format="PNG")
    records = "".join(json.dumps(r) + "\n" for r in [
        {"id": "a", "prompt": "a dog on a beach", "subjects": [{"image": "img/dog.png", "phrase": "dog"}]},
        {"id": "b", "prompt": "a cat", "subjects": [{"image": "img/missing.png", "phrase": "cat"}]}])
    first = fake_hub.add_repo("dataset", "org/psr-data", {"data/records.jsonl": records.encode(),
                                                         "data/img/dog.png": buf.getvalue(),
                                                         "prompts/train.txt": b"a blue sky\n\nthe deep sea\n"})
    recs = read_records("hf://org/psr-data/data/records.jsonl")
    assert [r.id for r in recs] == ["a", "b"]
    from psrl.hub import hub_records_file

    local = hub_records_file("hf://org/psr-data/data/records.jsonl")
    image = resolve_under(local.parent, recs[0].subjects[0].image)  # a real file inside its data root
    assert image.is_file() and not image.is_symlink() and image.read_bytes() == buf.getvalue()
    # loaded for a run, the images resolve beside the local copy (not under the hf:// text)
    assert load_records("hf://org/psr-data/data/records.jsonl")[0].subjects[0].image == str(image)
    assert records_root("hf://org/psr-data/data/records.jsonl") == local.parent.resolve()  # as run_records asks
    assert first in str(local)  # one folder per commit
    assert not (local.parent / "img" / "missing.png").exists()  # left for the record check to name

    txt = read_records("hf://datasets/org/psr-data/prompts/train.txt")
    assert [(r.id, r.prompt) for r in txt] == [("line-1", "a blue sky"), ("line-3", "the deep sea")]
    assert [r.id for r in read_records("hf://org/psr-data")] == ["a", "b"]  # its one .jsonl

    # a new commit on main: the old one stays reachable by its id, main moves on
    fake_hub.add_repo("dataset", "org/psr-data", {"data/records.jsonl": b'{"id": "new", "prompt": "x"}\n'})
    assert [r.id for r in read_records(f"hf://org/psr-data@{first}/data/records.jsonl")] == ["a", "b"]

    # offline: what was fetched is read from the cache without a request; anything else is one clear line
    go_offline(monkeypatch)
    seen = len(fake_hub.requests)
    assert [r.id for r in read_records(f"hf://org/psr-data@{first}/data/records.jsonl")] == ["a", "b"]
    assert len(fake_hub.requests) == seen
    with pytest.raises(RecordError, match=r"hf://org/other/r.jsonl: .*offline \(HF_HUB_OFFLINE is set\)") as e:
        read_records("hf://org/other/r.jsonl")
    assert "\n" not in str(e.value)


@pytest.mark.component
def test_hf_records_errors_name_the_path(fake_hub):
    fake_hub.add_repo("dataset", "org/two", {"a.jsonl": b'{"id": "a", "prompt": "x"}\n',
                                             "b.jsonl": b'{"id": "b", "prompt": "y"}\n', "img.png": b"x"})
    cases = [("hf://org/nope/r.jsonl", "no dataset repository 'org/nope'"),
             ("hf://org/two/c.jsonl", "has no file 'c.jsonl'"),
             ("hf://org/two@v9/a.jsonl", "has no revision 'v9'"),
             ("hf://org/two", r"has 2 .jsonl files \(a.jsonl, b.jsonl\); name one"),
             ("hf://org/two/img.png", "is not a records file")]
    for uri, why in cases:
        with pytest.raises(RecordError, match=why) as e:
            read_records(uri)
        assert "\n" not in str(e.value) and uri.split("@")[0] in str(e.value)


@pytest.mark.component
def test_hf_folder_for_a_benchmark_data_root(fake_hub):
    from psrl.hub import hub_folder

    fake_hub.add_repo("dataset", "google/dreambooth", {"dataset/dog/00.jpg": b"j0", "dataset/dog/01.jpg": b"j1",
                                                       "dataset/cat/00.jpg": b"c0", "README.md": b"# db"})
    root = hub_folder("hf://google/dreambooth/dataset")
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg")) == \
        ["cat/00.jpg", "dog/00.jpg", "dog/01.jpg"]
    assert not (root.parent / "README.md").exists()  # only the folder asked for
    with pytest.raises(HubError, match="no files under 'nothing'"):
        hub_folder("hf://google/dreambooth/nothing")


# ---------------------------------------------------------------------------------------------------------- models
def _fake_model_cache(cache: Path) -> tuple[str, str]:
    """A Hub cache holding ``org/tiny-flux`` at two commits: ``main`` -> c1, tag ``v2`` -> c2 (other weights)."""
    repo = cache / "models--org--tiny-flux"
    c1, c2 = "1" * 40, "2" * 40
    for commit, seed in ((c1, 0), (c2, 1)):
        comps = tiny_flux_components(seed=seed)
        comps["transformer"].save_pretrained(repo / "snapshots" / commit / "transformer")
        comps["scheduler"].save_pretrained(repo / "snapshots" / commit / "scheduler")
        (repo / "snapshots" / commit / "model_index.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(c1)
    (repo / "refs" / "v2").write_text(c2)
    return c1, c2


@pytest.mark.component
def test_revision_pins_the_weights_and_the_commit_is_recorded(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from psrl.models.loading import load_components, model_source

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    go_offline(monkeypatch)
    c1, c2 = _fake_model_cache(tmp_path / "hub")
    spec = {"transformer": ("diffusers", "FluxTransformer2DModel"),
            "scheduler": ("diffusers", "FlowMatchEulerDiscreteScheduler")}

    def first_weight(components):
        return next(components["transformer"].parameters()).detach().flatten()[:4]

    main = first_weight(load_components("org/tiny-flux", spec))
    tagged = first_weight(load_components("org/tiny-flux", spec, revision="v2"))
    pinned = first_weight(load_components("org/tiny-flux", spec, revision=c2))
    expected = next(tiny_flux_components(seed=1)["transformer"].parameters()).detach().flatten()[:4]
    assert torch.equal(tagged, expected) and torch.equal(pinned, expected) and not torch.equal(main, expected)
    assert model_source(ModelConfig(path="org/tiny-flux", revision="v2"))["commit"] == c2
    assert model_source(ModelConfig(path="org/tiny-flux"))["commit"] == c1
    assert model_source(ModelConfig(path="tiny")) == {"path": "tiny", "revision": None, "variant": None,
                                                      "commit": None}
    snapshot = tmp_path / "hub" / "models--org--tiny-flux" / "snapshots" / c2
    assert model_source(ModelConfig(path=str(snapshot)))["commit"] == c2  # a snapshot folder knows its commit
    with pytest.raises(ModelLoadError, match=r"at revision 'v3'.*offline"):
        load_components("org/tiny-flux", spec, revision="v3")
    with pytest.raises(ModelLoadError, match="model.revision 'v2' pins a Hugging Face hub id.*local folder"):
        load_components(str(snapshot), spec, revision="v2")


@pytest.mark.component
def test_variant_selects_the_weight_files(tmp_path):
    from psrl.models.loading import load_components

    comps = tiny_flux_components(seed=3)
    comps["transformer"].save_pretrained(tmp_path / "m" / "transformer", variant="fp16")
    comps["scheduler"].save_pretrained(tmp_path / "m" / "scheduler")  # schedulers have no variant
    spec = {"transformer": ("diffusers", "FluxTransformer2DModel"),
            "scheduler": ("diffusers", "FlowMatchEulerDiscreteScheduler")}
    loaded = load_components(tmp_path / "m", spec, variant="fp16")
    assert torch.equal(next(loaded["transformer"].parameters()), next(comps["transformer"].parameters()))
    with pytest.raises(ModelLoadError, match="could not load transformer"):
        load_components(tmp_path / "m", spec)  # no plain weight file: the variant is not silently optional
