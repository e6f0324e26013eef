"""training.run_folder: the one reader and writer of run folders' records."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from training.build_data import read_records
from training.run_folder import RecordAppender, iter_records, load_records, write_json_atomic


def test_appender_resumes_after_a_half_written_line(tmp_path: Path) -> None:
    path = tmp_path / "run" / "records.jsonl"
    with RecordAppender(path) as out:
        out.write({"id": "a", "status": "error"})
    with path.open("a") as f:
        f.write('{"id": "b", "stat')  # a crash mid-line
    with RecordAppender(path) as out:
        out.write({"id": "a", "status": "ok"})
    assert [r["id"] for r in iter_records(path)] == ["a", "a"]
    assert load_records(path) == {"a": {"id": "a", "status": "ok"}}


def test_gzipped_records_read_like_plain_ones(tmp_path: Path) -> None:
    rows = [{"id": "q1", "v": 1}, {"id": "q2", "v": 2}, {"id": "q1", "v": 3}]
    path = tmp_path / "attempt-0.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    assert load_records(path) == {"q1": {"id": "q1", "v": 3}, "q2": {"id": "q2", "v": 2}}
    assert sorted(r["v"] for r in read_records(path)) == [2, 3]  # build-data reads them too


def test_atomic_json_makes_its_folder_and_replaces_whole(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "doc.json"
    write_json_atomic(path, {"where": tmp_path}, default=str)
    assert json.loads(path.read_text()) == {"where": str(tmp_path)}
    assert not list(path.parent.glob("*.tmp"))
