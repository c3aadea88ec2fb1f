"""Bench reports: bars instead of a radar under 3 subsets, a dimension with no scored sample said in words, and
compare flagging overall means computed on different subset sets (ours on 2 of 7 vs the published 7)."""
import json

import matplotlib
import pytest

from psrl.bench.compare import compare, compare_series, markdown, write_compare
from psrl.bench.report import markdown_table, score_figure, series_of
from psrl.bench.summary import summarize

matplotlib.use("Agg")
DIMS = ["subject_consistency", "semantic_alignment", "aesthetics"]


def _summary(subsets, *, sa=True):
    rows = []
    for i, subset in enumerate(subsets):
        for k in range(2):
            scores = {"subject_consistency": 0.5 + 0.1 * i + 0.01 * k, "aesthetics": 0.8,
                      "semantic_alignment": 0.6 if sa else float("nan")}
            rows.append({"key": f"{subset}-{k}", "subset": subset, "seed": 0, "scores": scores,
                         "failures": {} if sa else {"semantic_alignment": "judge unreachable"}})
    return summarize(rows, benchmark="psrbench", dimensions=DIMS, subsets=list(subsets))


def _texts(ax):
    return [t.get_text() for t in ax.texts]


@pytest.mark.unit
def test_bars_under_three_subsets_and_a_radar_from_three():
    import matplotlib.pyplot as plt

    two = _summary(["Attribute", "Position"])
    fig = score_figure([("ours", series_of(two))], two["subsets"], DIMS)
    assert [ax.name for ax in fig.axes] == ["rectilinear"] * 3
    heights = sorted(round(p.get_height(), 3) for p in fig.axes[0].patches)
    assert heights == [0.505, 0.605]  # one bar per subset, at the subset means
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["Attribute", "Position"]
    plt.close(fig)
    three = _summary(["Attribute", "Action", "Position"])
    fig = score_figure([("ours", series_of(three))], three["subsets"], DIMS)
    assert [ax.name for ax in fig.axes] == ["polar"] * 3
    plt.close(fig)


@pytest.mark.unit
@pytest.mark.parametrize("subsets", [["Attribute", "Position"], ["Attribute", "Action", "Position"]])
def test_a_negative_dimension_keeps_its_points_on_the_axis(subsets):
    """PocketBench's SC gain can be below 0: the axis then starts below the lowest value instead of at 0."""
    import matplotlib.pyplot as plt

    series = {"subject_consistency_gain": {s: -0.1 + 0.2 * i for i, s in enumerate(subsets)}}
    fig = score_figure([("ours", series)], subsets, ["subject_consistency_gain"])
    low, high = fig.axes[0].get_ylim()
    assert low < -0.1 and high >= 0.1 and fig.axes[0].get_title() == "SC gain"
    plt.close(fig)
    fig = score_figure([("ours", {"x": {s: 0.5 for s in subsets}})], subsets, ["x"])
    assert fig.axes[0].get_ylim()[0] == 0.0  # non-negative dimensions keep their 0 baseline
    plt.close(fig)


@pytest.mark.unit
@pytest.mark.parametrize("subsets", [["Attribute", "Position"], ["Attribute", "Action", "Position"]])
def test_a_dimension_with_no_scored_sample_says_so(subsets):
    import matplotlib.pyplot as plt

    s = _summary(subsets, sa=False)
    fig = score_figure([("ours", series_of(s))], s["subsets"], DIMS)
    sa_ax = fig.axes[DIMS.index("semantic_alignment")]
    assert _texts(sa_ax) == ["no scored sample"] and list(sa_ax.get_yticks()) == []
    assert "no scored sample" not in _texts(fig.axes[0])
    plt.close(fig)
    table = markdown_table(s)
    assert "- SA: no scored sample (the column is n/a, not 0)." in table
    assert f"judge unreachable x{2 * len(subsets)}" in table


@pytest.mark.unit
def test_compare_flags_overall_means_over_different_subsets(tmp_path):
    run = tmp_path / "ours"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps(_summary(["Attribute", "Position"])))
    result = compare([run], labels=["ours"], published=True)
    assert result["mixed_subsets"] == DIMS
    assert result["rows"][0]["overall_subsets"]["subject_consistency"] == ["Attribute", "Position"]
    assert len(result["rows"][1]["overall_subsets"]["subject_consistency"]) == 7
    md = markdown(result)
    ours = next(line for line in md.splitlines() if line.startswith("| ours |"))
    assert "0.555 [2/7 subsets]" in ours
    assert "[7/7 subsets]" in next(line for line in md.splitlines() if "(reported)" in line)
    assert "**Warning: the SC overall means average different subsets**" in md and "ours: Attribute, Position" in md
    series, note = compare_series(result)
    assert [label for label, _ in series] == ["ours [SC overall: 2/7 subsets] [SA overall: 2/7 subsets] "
                                              "[HPS overall: 2/7 subsets]"]
    assert note.startswith("Warning: the overall SC, SA, HPS means")
    paths = write_compare(result, tmp_path / "cmp")
    assert paths["compare_radar.png"].read_bytes()[:4] == b"\x89PNG"


@pytest.mark.unit
def test_compare_of_runs_on_the_same_subsets_has_no_flag(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps(_summary(["Attribute", "Action", "Position"])))
    result = compare([tmp_path / "a", tmp_path / "b"])
    assert result["mixed_subsets"] == []
    assert "subsets]" not in markdown(result) and "Warning" not in markdown(result)
    assert compare_series(result)[1] is None
