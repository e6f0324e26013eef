"""The one owner of the run folders' file formats: JSONL records and atomic JSON files.

A run folder (a `generate` output, an evaluation, a study stage) holds records in JSONL,
one JSON object per line with an `id`, appended as each run finishes. Contract:
- `RecordAppender(path)`: appends records, each line flushed and fsynced before `write`
  returns, so a crash loses at most the line being written; a half-written last line left
  by an earlier crash is ended first, so new lines start clean.
- `iter_records(path)`: every well-formed record in file order; lines that are not a JSON
  object with an `id` (a half-written line, garbage) are skipped. A missing file is empty;
  a `.gz` file (committed teacher records) is read through gzip.
- `load_records(path)`: id -> the LAST record for that id (a rerun replaces a record).
- `write_json_atomic(path, doc)` / `write_jsonl_atomic(path, rows)`: write to a temporary
  file beside `path` (its folder made if needed), fsync, then rename: readers see the old
  file or the new one, whole.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["RecordAppender", "iter_records", "load_records", "write_json_atomic",
           "write_jsonl_atomic"]

try:  # a faster decoder for big runs when it is installed; the standard library otherwise
    import orjson

    _loads: Any = orjson.loads
    _DecodeError: Any = orjson.JSONDecodeError
except ImportError:  # pragma: no cover - depends on the environment
    _loads, _DecodeError = json.loads, json.JSONDecodeError


def iter_records(path: Path) -> Iterator[dict[str, Any]]:
    """See the module docstring."""
    if not path.is_file():
        return
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        for line in f:
            try:
                rec = _loads(line)
            except (_DecodeError, UnicodeDecodeError, ValueError):
                continue
            if isinstance(rec, dict) and "id" in rec:
                yield rec


def load_records(path: Path) -> dict[str, dict[str, Any]]:
    """id -> the last record for it (a half-written last line is skipped)."""
    return {str(rec["id"]): rec for rec in iter_records(path)}


class RecordAppender:
    """Append-only JSONL writer: one line per record, flushed and fsynced."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_file() and path.stat().st_size:
            with path.open("rb") as f:
                f.seek(-1, os.SEEK_END)
                cut = f.read(1) != b"\n"
            if cut:  # an interrupted write left half a line: end it so ours start clean
                with path.open("a", encoding="utf-8") as f:
                    f.write("\n")
        self._f = path.open("a", encoding="utf-8")

    def write(self, rec: dict[str, Any]) -> None:
        self._f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> RecordAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _replace_with(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: Path, doc: Any, *, default: Callable[[Any], Any] | None = None) -> None:
    """`doc` as indented JSON (see the module docstring); `default` as for json.dumps (e.g.
    `str` for paths in a configuration)."""
    _replace_with(path, json.dumps(doc, ensure_ascii=False, indent=2, default=default) + "\n")


def write_jsonl_atomic(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """`rows` as JSONL, one object per line (see the module docstring)."""
    _replace_with(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
