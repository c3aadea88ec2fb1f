"""PSRBench / DreamBench import, validation and export (tier 1-2: files only, no models)."""
import json

import pytest
from fixtures_bench import GOOD, make_dreambench, make_psrbench

from psrl.bench.benchmarks import get_benchmark
from psrl.bench.dreambench import dreambench_prompts, dreambench_spec
from psrl.bench.items import LoadedSubsets
from psrl.bench.loading import load_benchmark, parse_entries
from psrl.bench.psrbench import export_subset, parse_entry
from psrl.bench.tasks import PSRBENCH_SUBSET_NAMES, metrics_to_json, parse_metrics, psrbench_metrics


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_psrbench(tmp_path_factory.mktemp("psrbench"))


@pytest.mark.unit
def test_good_entries_become_records(tmp_path):
    root = make_psrbench(tmp_path, bad=False)
    data = load_benchmark("psrbench", root)
    assert data.issues == []
    assert [s for s in data.raw] == list(PSRBENCH_SUBSET_NAMES)
    assert len(data.items) == 14
    item = next(i for i in data.items if i.key == "Four/0")
    rec = item.record
    assert rec.id == "Four/0" and rec.prompt == GOOD["Four"][0][0]
    assert [s.phrase for s in rec.subjects] == ["helicopter", "ring", "car", "cat"]
    assert rec.subjects[3].image == str(root.resolve() / "animals" / "cat.png")  # resolved once, here
    assert rec.relative().subjects[3].image == "animals/cat.png"  # the entry's input_path again
    assert rec.tags["subset"] == "Four" and rec.tags["index"] == 0 and "data_root" not in rec.tags


@pytest.mark.unit
def test_every_bad_entry_is_reported_with_subset_index_and_field(data_root):
    data = load_benchmark("psrbench", data_root)
    found = {(i.subset, i.index, i.field.split("[")[0]) for i in data.issues}
    assert ("Extra", None, "subset") in found                    # unknown subset file
    assert ("Attribute", 2, "input_path") in found               # missing file
    assert ("Action", 2, "category") in found                    # 2 references, 1 category
    assert ("Background", 2, "input_path") in found              # escapes the root
    assert ("Position", 2, "instruction") in found               # no relation
    assert ("Complex", 2, "input_path") in found                 # unreadable image
    messages = " | ".join(str(i) for i in data.issues)
    assert "escapes the data root" in messages and "ghost.png" in messages and "no recognised spatial" in messages
    # nothing dropped: every entry of every file is an item (broken ones without a record)
    assert len(data.items) == 14 + 5
    assert {i.key for i in data.items if i.record is None} == {"Action/2", "Background/2"}


@pytest.mark.unit
def test_unknown_subset_name_and_missing_file(tmp_path):
    make_psrbench(tmp_path, bad=False)
    (tmp_path / "Four.json").unlink()
    data = load_benchmark("psrbench", tmp_path, ["Attribute", "Nope"])
    assert [str(i) for i in data.issues] == [("Nope.subset: unknown subset; known: Attribute, Action, Background, "
                                              "Position, Complex, Three, Four")]
    data = load_benchmark("psrbench", tmp_path)
    assert any(i.subset == "Four" and i.field == "file" for i in data.issues)


def _load_one(entry, root, subset="Position"):
    out = LoadedSubsets()
    parse_entries(out, get_benchmark("psrbench"), subset, [entry], root)
    return out.items[0].record, out.issues


@pytest.mark.unit
def test_entry_rules(tmp_path):
    make_psrbench(tmp_path, bad=False)
    ok = {"instruction": "The cat is above the dog.", "input_path": ["animals/cat.png", "animals/dog.png"],
          "category1": "cat", "category2": "dog"}
    rec, issues = parse_entry("Position", 0, ok)  # the parser is a pure function of the entry
    assert issues == [] and rec.root is None and rec.subjects[0].image == "animals/cat.png"
    rec, issues = _load_one(ok, tmp_path)  # the loader resolves the references under the root
    assert issues == [] and rec.root == str(tmp_path.resolve())
    assert rec.subjects[1].image == str(tmp_path.resolve() / "animals/dog.png")
    typo = {k: v for k, v in ok.items() if k != "input_path"} | {"input_paths": ok["input_path"]}
    rec, issues = _load_one(typo, tmp_path)
    assert rec is None and "input_paths" in issues[0].message
    three = dict(ok, input_path=ok["input_path"] + ["animals/cat.png"], category3="cat")
    rec, issues = _load_one(three, tmp_path)
    assert rec is None and any("2 references per entry" in i.message for i in issues)
    absolute = dict(ok, input_path=[str(tmp_path / "animals/cat.png"), "animals/dog.png"])
    rec, issues = _load_one(absolute, tmp_path)
    assert rec is None and [i.field for i in issues] == ["input_path[0]"] and "relative" in issues[0].message
    escape = dict(ok, input_path=["../cat.png", "animals/dog.png"])
    rec, issues = _load_one(escape, tmp_path)
    assert rec is None and "escapes the data root" in issues[0].message
    rec, issues = _load_one(["not", "an", "object"], tmp_path)
    assert rec is None and issues[0].field == "entry"


@pytest.mark.unit
def test_export_roundtrip_keeps_entries_and_adds_result_path(data_root, tmp_path):
    data = load_benchmark("psrbench", data_root, ["Position"])
    raw = data.raw["Position"]
    export_subset(raw, {0: "/abs/0.png", 2: "rel/2.png"}, tmp_path / "Position.json")
    back = json.loads((tmp_path / "Position.json").read_text())
    assert len(back) == len(raw)
    for i, (a, b) in enumerate(zip(raw, back)):
        assert {k: v for k, v in b.items() if k != "result_path"} == a
    assert back[0]["result_path"] == "/abs/0.png" and "result_path" not in back[1]
    assert back[2]["result_path"] == "rel/2.png"


@pytest.mark.e2e
def test_cli_validate_exit_codes(data_root, tmp_path, capsys):
    from psrl.cli.main import main

    assert main(["bench", "validate", "--data-root", str(data_root)]) == 1
    out = capsys.readouterr().out
    assert "Background[2].input_path[0]" in out and "6 issue(s)" in out
    clean = make_psrbench(tmp_path, bad=False)
    assert main(["bench", "validate", "--data-root", str(clean)]) == 0


@pytest.mark.unit
def test_dreambench_spec_and_import(tmp_path):
    spec = dreambench_spec()
    assert len(spec["classes"]) == 30 and len(spec["live_subjects"]) == 9
    assert len(spec["object_prompts"]) == 25 and len(spec["live_prompts"]) == 25
    assert dreambench_prompts("backpack")[0] == "a backpack in the jungle"
    assert dreambench_prompts("dog")[-1] == "a cube shaped dog"
    assert dreambench_prompts("bear_plushie")[20] == "a red stuffed animal"
    root = make_dreambench(tmp_path)
    data = load_benchmark("dreambench", root, ["backpack", "cat", "dog"], reference_index=1)
    assert data.issues == []
    assert len(data.raw["object"]) == 25 and len(data.raw["live"]) == 50
    rec = data.items[0].record
    assert rec.relative().subjects[0].image == "backpack/01.jpg" and rec.subjects[0].phrase == "backpack"
    assert rec.root == str(root.resolve())
    assert rec.tags["benchmark"] == "dreambench" and rec.tags["subject"] == "backpack"
    full = load_benchmark("dreambench", root)  # all 30 expected: the 27 absent subjects are reported, not dropped
    assert sum(i.field == "folder" for i in full.issues) == 27
    assert len(full.items) == 750


@pytest.mark.unit
def test_metric_sets_parse_and_reject_bad_keys():
    m = psrbench_metrics(compat=True, tiny=True)
    assert m["subject_consistency"].default.args["mode"] == "psrbench_compat"
    assert m["semantic_alignment"].metric_for("Position").reward == "position"
    assert m["semantic_alignment"].metric_for("Four").reward == "semantic_alignment"
    assert m["aesthetics"].default.scale == 0.1
    assert parse_metrics(metrics_to_json(m)) == m
    with pytest.raises(ValueError, match="aesthetics: unknown key"):
        parse_metrics({"aesthetics": {"reward": "hpsv3", "scael": 0.1}})
    with pytest.raises(ValueError, match="reward"):
        parse_metrics({"aesthetics": {"args": {}}})
    with pytest.raises(ValueError, match=r"metrics\.dino\.args\.data_root: not read here.*--data-root"):
        parse_metrics({"dino": {"reward": "dino", "args": {"data_root": "/refs"}}})  # the loader resolves them
