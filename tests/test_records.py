"""Records resolved once where they are loaded (issue #11 item 1): resolve_records / load_records / to_json round
trip, the errors, and the config keys that no longer take a root."""
import dataclasses
import json

import pytest

from psrl.data.records import (
    Record,
    RecordError,
    SubjectRef,
    load_records,
    misplaced_data_root,
    records_root,
    resolve_records,
    write_records,
)

pytestmark = pytest.mark.unit


def _rec(*images, rid="r", target=None):
    return Record(id=rid, prompt="a cat", subjects=tuple(SubjectRef(im, "cat") for im in images), target=target)


def test_resolve_makes_paths_absolute_under_the_root_and_to_json_gives_the_file_form_back(tmp_path):
    (r,) = resolve_records([_rec("refs/a.png", None, target="t.png")], tmp_path)
    root = tmp_path.resolve()
    assert r.root == str(root)
    assert [s.image for s in r.subjects] == [str(root / "refs" / "a.png"), None]
    assert r.target == str(root / "t.png")
    assert r.relative() == _rec("refs/a.png", None, target="t.png")
    assert r.to_json() == _rec("refs/a.png", None, target="t.png").to_json()  # no root in the JSON
    assert "root" not in r.to_json()
    assert resolve_records([r], tmp_path / "elsewhere")[0] is r  # already resolved: kept as it is
    assert dataclasses.replace(r, root="/other") == r  # the root takes no part in a record's value
    unresolved = r.relative()
    assert unresolved.relative() is unresolved and unresolved.relative_path("x.png") == "x.png"


def test_resolve_names_every_path_that_is_absolute_or_escapes(tmp_path):
    recs = [_rec("ok.png", rid="fine"), _rec("../up.png", rid="esc"), _rec(str(tmp_path / "abs.png"), rid="abs"),
            _rec(target="../../t.png", rid="tgt")]
    with pytest.raises(RecordError) as e:
        resolve_records(recs, tmp_path, source="train.jsonl")
    msg = str(e.value)
    assert msg.startswith("train.jsonl: 3 image path(s) cannot be read under the data root")
    assert "'esc': subjects[0].image '../up.png' escapes" in msg
    assert "'abs': subjects[0].image" in msg and "must be relative to the data root" in msg
    assert "'tgt': target '../../t.png' escapes" in msg and "'fine'" not in msg


def test_load_records_resolves_under_the_data_root_else_the_file_folder(tmp_path):
    path = tmp_path / "data" / "train.jsonl"
    write_records([_rec("a.png")], path)
    assert json.loads(path.read_text())["subjects"][0]["image"] == "a.png"
    (by_folder,) = load_records(path)
    assert by_folder.subjects[0].image == str((tmp_path / "data" / "a.png").resolve())
    (by_root,) = load_records(path, tmp_path / "refs")
    assert by_root.subjects[0].image == str((tmp_path / "refs" / "a.png").resolve())
    write_records([by_root], tmp_path / "copy.jsonl")  # written back relative to the root it was resolved against
    assert json.loads((tmp_path / "copy.jsonl").read_text())["subjects"][0]["image"] == "a.png"
    prompts = load_records(["a red car", "a dog"])
    assert [(r.id, r.prompt, r.root) for r in prompts] == [("prompt-0", "a red car", None),
                                                           ("prompt-1", "a dog", None)]
    with pytest.raises(RecordError, match="eval.records is empty"):
        load_records([], what="eval.records")
    assert records_root(["a prompt"]) is None and records_root(path, "/r") == records_root("x.jsonl", "/r")


def test_local_root_is_the_path_or_a_fetched_hub_folder_with_a_one_line_error(tmp_path):
    from psrl.data.records import local_root

    assert local_root(str(tmp_path)) == tmp_path and local_root(tmp_path) == tmp_path
    with pytest.raises(RecordError, match=r"^data_root: 'hf://org': expected hf://<org>/<dataset>") as e:
        records_root("r.jsonl", "hf://org")  # a malformed Hub path: refused before any request
    assert "\n" not in str(e.value)
    with pytest.raises(RecordError, match=r"^'hf://org': expected"):
        local_root("hf://org", what=None)  # the CLI's argparse type adds its own "argument --data-root: "


def test_a_data_root_in_reward_or_policy_args_names_where_it_belongs():
    assert misplaced_data_root({"path": "tiny"}, "rewards.0.args") is None
    assert misplaced_data_root(None, "model.args") is None
    why = misplaced_data_root({"data_root": "/d"}, "rewards.0.args")
    assert why.startswith("rewards.0.args.data_root: not read here") and "'/d'" in why
    assert "data.data_root" in why and "--data-root" in why and "server config" in why


def test_links_that_leave_the_root_are_refused_like_resolve_under(tmp_path):
    """Folders are resolved once for all their files; a linked file or folder that points outside the root is still
    refused, and every resolved path is what resolve_under gives for it."""
    from psrl.data.records import resolve_under

    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "refs").mkdir(parents=True)
    outside.mkdir()
    (outside / "x.png").write_bytes(b"")
    (root / "refs" / "leak.png").symlink_to(outside / "x.png")
    (root / "linked").symlink_to(outside, target_is_directory=True)
    (root / "refs" / "alias.png").symlink_to(root / "refs" / "a.png")
    ok = resolve_records([_rec("refs/a.png", "refs/alias.png", "./refs/b.png", "refs/../c.png")], root)[0]
    assert [s.image for s in ok.subjects] == [str(resolve_under(root, s.image))
                                             for s in _rec("refs/a.png", "refs/alias.png", "./refs/b.png",
                                                           "refs/../c.png").subjects]
    for path in ("refs/leak.png", "linked/x.png"):
        with pytest.raises(RecordError, match=f"'{path}' escapes the data root"):
            resolve_records([_rec(path)], root)
