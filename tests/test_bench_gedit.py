"""GEdit-Bench in ``psrl bench``: the VIEScore prompts (pinned to the upstream text), the reply parser, SC / PQ /
O = sqrt(SC * PQ) through an OpenAI-compatible judge (a local test server standing in for vLLM), the loader, and
generate (tiny FLUX-Kontext) / eval / compare from the CLI."""
import base64
import hashlib
import io
import json
import math

import pytest
import yaml
from PIL import Image

from psrl.bench.gedit import export_gedit
from psrl.bench.loading import load_benchmark
from psrl.bench.gedit_metrics import PQ_PROMPT, SC_PROMPT, parse_viescore, viescore_overall


def make_gedit(root):
    """Three English entries in two task groups (one in the intersection subset), one Chinese entry."""
    def row(key, task, instruction, lang="en", inter=False, size=(40, 24)):
        return {"key": key, "task_type": task, "instruction": instruction, "instruction_language": lang,
                "Intersection_exist": inter, "input_image": Image.new("RGB", size, (30 * len(key), 90, 160))}

    rows = [row("k1", "background_change", "Put the cat on a beach.", inter=True),
            row("k2", "background_change", "Make the sky purple."),
            row("k3", "color_alter", "Make the car red.", size=(32, 48)),
            row("k4", "color_alter", "把车变成红色。", lang="cn")]
    export_gedit(rows, root)
    return root


@pytest.mark.unit
def test_prompts_are_the_upstream_text():
    """SHA-256 of VIEScore's tie SC prompt and PQ prompt (TIGER-AI-Lab/VIEScore@a35f13f vie_prompts.py joined as
    VIEScore(task="tie") joins them)."""
    assert hashlib.sha256(SC_PROMPT.encode()).hexdigest() == (
        "8f529562c2f89f8db51a3f7cc4d487686f676909c21010b67b0e65ec78150de5")
    assert hashlib.sha256(PQ_PROMPT.encode()).hexdigest() == (
        "2473ff2c7406e06545c5c039ceb039ff2604ebacf150868a48f0bf07c9e733b0")
    assert SC_PROMPT.count("<instruction>") == 1 and "[naturalness, artifacts]" in PQ_PROMPT


@pytest.mark.unit
def test_reply_parser_and_overall():
    assert parse_viescore('||V^=^V||\n{\n"score" : [7, 9],\n"reasoning" : "ok"\n}\n||V^=^V||') == [7.0, 9.0]
    assert parse_viescore('Here: {"score": [6, 8], "reasoning": "fine"} done') == [6.0, 8.0]
    assert parse_viescore("{'score': [5, 4], 'reasoning': 'single quotes'}") == [5.0, 4.0]
    assert parse_viescore('{"score": 8, "reasoning": "scalar"}') == [8.0]
    assert parse_viescore("[6, 0]") == [6.0, 0.0] and parse_viescore("7") == [7.0]
    for bad in ("no score at all", '{"score": [11, 3]}', '{"score": []}', '{"reasoning": "x"}', '{"score": [true]}',
                "", None, '{"score": [7, 9]'):
        assert parse_viescore(bad) is None, bad
    assert viescore_overall(4.0, 9.0) == 6.0 and viescore_overall(0.0, 9.0) == 0.0


@pytest.mark.unit
def test_intersection_summary_averages_group_means_of_flagged_samples():
    from psrl.bench.gedit import intersection_summary

    def row(subset, value, flag):
        return {"subset": subset, "scores": {"overall": value},
                "details": {"overall": {} if flag is None else {"intersection": flag}}}

    rows = [row("color_alter", 4.0, True), row("color_alter", 6.0, True), row("color_alter", 9.0, False),
            row("ps_human", 8.0, True), row("ps_human", None, True), row("tone_transfer", 1.0, None)]
    got = intersection_summary(rows, ["overall"])["overall"]
    assert got["groups"] == {"color_alter": 5.0, "ps_human": 8.0} and got["average"] == 6.5
    assert got["n"] == 3 and got["unflagged"] == 1
    assert intersection_summary([], ["overall"])["overall"]["average"] is None


@pytest.mark.unit
def test_export_and_loader(tmp_path):
    root = make_gedit(tmp_path / "gedit")
    assert (root / "fullset/background_change/en/k1_SRCIMG.png").is_file()
    data = load_benchmark("gedit", root)
    assert list(data.raw) == ["background_change", "color_alter"] and not data.issues
    rec = data.items[0].record
    assert rec.prompt == "Put the cat on a beach."
    # resolved where loaded; the file's relative form comes back in to_json
    assert rec.subjects[0].image == str(root.resolve() / "fullset/background_change/en/k1_SRCIMG.png")
    assert rec.to_json()["subjects"][0]["image"] == "fullset/background_change/en/k1_SRCIMG.png"
    assert rec.tags["intersection"] is True and rec.tags["key"] == "k1"
    assert [i.record.prompt for i in load_benchmark("gedit-cn", root).items] == ["把车变成红色。"]
    (root / "fullset/color_alter/en/k3_SRCIMG.png").unlink()
    assert any(str(i).startswith("color_alter[0].input_image:") and "k3_SRCIMG.png" in str(i)
               for i in load_benchmark("gedit", root).issues)
    assert any("unknown task group" in str(i) for i in load_benchmark("gedit", root, ["recolor"]).issues)
    assert load_benchmark("gedit-cn", root).items[0].record.tags["benchmark"] == "gedit-cn"
    from psrl.errors import RecordError

    evil = {"key": "../../../../escape", "task_type": "color_alter", "instruction": "x", "instruction_language": "en",
            "Intersection_exist": False, "input_image": Image.new("RGB", (16, 16))}
    with pytest.raises(RecordError, match="escapes the data root"):
        export_gedit([evil], tmp_path / "other")
    assert not (tmp_path / "escape_SRCIMG.png").exists()
    nope = tmp_path / "nope"
    assert [str(i) for i in load_benchmark("gedit", nope).issues] == [f"*.data_root: not a directory: {nope}"]


class Judge:
    """An OpenAI-compatible chat endpoint's replies to VIEScore prompts: SC [8, 6] (or no score for 'purple'),
    PQ [9, 7]; every request is recorded (text, the sizes of its images)."""

    seen: list = []

    @staticmethod
    def reply(body):
        content = body["messages"][0]["content"]
        text = content[-1]["text"]
        sizes = [Image.open(io.BytesIO(base64.b64decode(c["image_url"]["url"].split(",", 1)[1]))).size
                 for c in content[:-1]]
        Judge.seen.append((text, sizes))
        if "Editing instruction:" in text:
            return "I cannot tell." if "purple" in text else '||V^=^V||{"score": [8, 6], "reasoning": "ok"}||V^=^V||'
        return '{"score" : [9, 7], "reasoning" : "natural"}'


@pytest.fixture
def judge_url():
    from fake_chat import FakeChatServer

    Judge.seen = []
    with FakeChatServer(Judge.reply) as server:
        yield server.url


@pytest.mark.component
def test_sc_pq_overall_from_one_pair_of_requests(tmp_path, judge_url):
    import torch

    from psrl.bench.gedit_metrics import VIEScoreMetric

    root = make_gedit(tmp_path / "gedit")
    records = [item.record for item in load_benchmark("gedit", root).items]
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    outs = {o: VIEScoreMetric(output=o, url=judge_url, transport="remote")(images, records)
            for o in ("semantic_consistency", "perceptual_quality", "overall")}
    assert len(Judge.seen) == 6  # SC + PQ per sample; the other two outputs read the cache
    assert outs["semantic_consistency"].scores.tolist()[::2] == [6.0, 6.0]  # min of [8, 6]
    assert outs["perceptual_quality"].scores.tolist() == [7.0, 7.0, 7.0]  # min of [9, 7]
    assert outs["overall"].scores[0].item() == pytest.approx(math.sqrt(42.0))
    purple = outs["overall"]
    assert math.isnan(purple.scores[1]) and purple.failures[1].startswith("SC reply has no parsable score list")
    assert purple.details["sc_reply"][1] == "I cannot tell."
    assert outs["perceptual_quality"].failures[1] is None  # PQ of that sample is scorable
    sc_requests = [(t, s) for t, s in Judge.seen if "Editing instruction:" in t]
    assert sorted(t for t, _ in sc_requests) == sorted(SC_PROMPT.replace("<instruction>", r.prompt) for r in records)
    # the edited image is resized to the source's size; SC shows both, PQ the edited one alone
    assert sorted(s for _, s in sc_requests) == [[(32, 48), (32, 48)], [(40, 24), (40, 24)], [(40, 24), (40, 24)]]
    assert sorted(s for t, s in Judge.seen if "naturalness" in t) == [[(32, 48)], [(40, 24)], [(40, 24)]]


KONTEXT = {"model": {"name": "flux_kontext", "path": "tiny", "max_sequence_length": 16,
                     "args": {"reference_long_side_single": 32, "reference_long_side_multi": 16}},
           "sampling": {"num_steps": 2, "height": 32, "width": 32}}


@pytest.mark.e2e
def test_generate_eval_compare_from_the_cli(tmp_path, judge_url, capsys):
    from psrl.cli.main import main

    root = make_gedit(tmp_path / "gedit")
    cfg = tmp_path / "kontext.yaml"
    cfg.write_text(yaml.safe_dump(KONTEXT))
    out = tmp_path / "out"
    assert main(["bench", "validate", "--benchmark", "gedit", "--data-root", str(root)]) == 0
    assert main(["bench", "generate", "--benchmark", "gedit", "--config", str(cfg), "--data-root", str(root),
                 "--out", str(out)]) == 0
    assert (out / "seed0" / "color_alter" / "0.png").is_file()
    assert main(["bench", "eval", "--results", str(out), "--judge-endpoint", judge_url]) == 0
    rows = {json.loads(x)["key"]: json.loads(x) for x in (out / "eval" / "samples.jsonl").read_text().splitlines()}
    assert rows["seed0/background_change/0"]["scores"] == pytest.approx(
        {"semantic_consistency": 6.0, "perceptual_quality": 7.0, "overall": math.sqrt(42.0)})
    assert rows["seed0/background_change/1"]["scores"]["overall"] is None
    summary = json.loads((out / "eval" / "summary.json").read_text())
    # Overall = mean of the group means: background_change has PQ 7 (both), color_alter 7
    assert summary["overall"]["perceptual_quality"]["mean"] == pytest.approx(7.0)
    assert summary["overall"]["overall"]["failed"] == 1
    # the published -I columns: only k1 (background_change) has Intersection_exist
    inter = summary["intersection"]["overall"]
    assert inter["groups"] == {"background_change": pytest.approx(math.sqrt(42.0))} and inter["n"] == 1
    assert inter["average"] == pytest.approx(math.sqrt(42.0)) and inter["unflagged"] == 0
    assert main(["bench", "compare", str(out / "eval"), "--published", "--out", str(tmp_path / "cmp")]) == 0
    table = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    reported = {r["label"]: r["overall"] for r in table["rows"] if r["kind"] == "reported"}
    assert reported["FLUX.1-Kontext + PaCo (reported)"]["overall"] == 6.469 and len(reported) == 4
    assert main(["bench", "compare", "--published", "--benchmark", "gedit-cn", "--out", str(tmp_path / "cn")]) == 0
    assert "Qwen-Image-Edit + PaCo (reported) | reported | 7.678" in capsys.readouterr().out
