"""psrl.fileio.jsonl_lines: the one JSONL line reader, whose bad lines each caller handles its own way (the
reward-model readers count them, read_records stops at the first)."""
import json

import pytest

from psrl.data.records import read_records
from psrl.errors import RecordError
from psrl.fileio import jsonl_lines

pytestmark = pytest.mark.unit


def test_jsonl_lines_names_each_line_and_hands_back_bad_json(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n\n   \n[2, 3]\n{oops\n')
    rows = jsonl_lines(path)
    assert [w for w, _ in rows] == [f"{path}:1", f"{path}:4", f"{path}:5"]  # blank lines skipped, 1-based
    assert rows[0][1] == {"a": 1} and rows[1][1] == [2, 3]
    assert isinstance(rows[2][1], json.JSONDecodeError)
    assert jsonl_lines("given.jsonl", text='{"b": 2}\n') == [("given.jsonl:1", {"b": 2})]  # text already read


def test_read_records_stops_at_the_first_bad_line_naming_file_and_line(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"id": "a", "prompt": "p"}\n\n{"id": "b", "prompt"\n')
    with pytest.raises(RecordError, match=rf"^{path}:3: not valid JSON: "):
        read_records(path)
    path.write_text('{"id": "a", "prompt": "p"}\n\n{"id": "b", "prompt": "q"}\n')
    assert [r.id for r in read_records(path)] == ["a", "b"]
