"""Stream a passage corpus into an index: validation, batches, resume, progress, count check.

Accepted lines (JSONL, optionally gzip-compressed, detected by content):
- wiki-18 / DPR: `{"id": "1", "contents": "\\"Title\\"\\ntext"}`
- plain: `{"id": "1", "title": "Title", "text": "text"}`

Resume: after every batch the sink commits the passages and then records how many lines
are done (the checkpoint lives with the index: a file in the embedded index folder, the
`_meta` of the Elasticsearch index). A rerun of the same command continues after the
checkpoint. A crash between a commit and its checkpoint can only repeat the one batch
after the checkpoint, which the sink is told to *replace* (Elasticsearch upserts by
`_id` anyway; the embedded sink deletes those ids first), so no passage is indexed twice.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from retrieval.analysis import ANALYZER_VERSION

STATE_FORMAT = 1
MAX_REPORTED_BAD_LINES = 20


@dataclass(frozen=True)
class CorpusPassage:
    id: str
    title: str
    text: str


class BadLine(ValueError):
    """A corpus line that is not a valid passage (the message says why)."""


class IngestError(Exception):
    """Ingestion cannot go on; the message says what to do."""


def parse_passage(obj: object) -> CorpusPassage:
    """Validate one decoded JSON value as a passage."""
    if not isinstance(obj, dict):
        raise BadLine(f"expected a JSON object, got {type(obj).__name__}")
    pid = obj.get("id")
    if isinstance(pid, bool) or not isinstance(pid, str | int):
        raise BadLine('"id" must be a string or an integer')
    pid = str(pid).strip()
    if not pid:
        raise BadLine('"id" is empty')
    if len(pid.encode()) > 512:
        raise BadLine('"id" is longer than 512 bytes')
    if "contents" in obj:
        contents = obj["contents"]
        if not isinstance(contents, str):
            raise BadLine('"contents" must be a string')
        head, sep, text = contents.partition("\n")
        if not sep or len(head) < 2 or not (head.startswith('"') and head.endswith('"')):
            raise BadLine('"contents" must look like "\\"Title\\"\\ntext"')
        title = head[1:-1]
    elif "title" in obj and "text" in obj:
        title, text = obj["title"], obj["text"]
        if not isinstance(title, str) or not isinstance(text, str):
            raise BadLine('"title" and "text" must be strings')
    else:
        raise BadLine('needs "contents" (wiki-18) or "title" and "text"')
    if not text.strip():
        raise BadLine("the passage text is empty")
    return CorpusPassage(pid, title, text)


def parse_line(raw: bytes) -> CorpusPassage:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadLine(f"not UTF-8 ({e.reason} at byte {e.start})") from None
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise BadLine(f"invalid JSON ({e.msg}, column {e.colno})") from None
    return parse_passage(obj)


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write `data` as JSON to `path` so that a crash leaves the old or the new file."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# --------------------------------------------------------------------------- sources


class CorpusSource(Protocol):
    description: str
    total: int
    """Progress total in `unit`s (bytes of the file, or passages)."""
    unit: str

    def identity(self) -> dict[str, Any]:
        """Identifies the corpus: a resume must read the same one."""
        ...

    def lines(self) -> Iterator[tuple[int, bytes, int]]:
        """(1-based line number, raw line, progress position in `unit`s)."""
        ...


class FileSource:
    """A JSONL file, plain or gzip-compressed (detected by its magic bytes)."""

    unit = "B"

    def __init__(self, path: Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise IngestError(f"corpus file not found: {self.path}")
        self.total = self.path.stat().st_size
        self.description = str(self.path)

    def identity(self) -> dict[str, Any]:
        with self.path.open("rb") as f:
            head = f.read(1 << 20)
        return {
            "name": self.path.name,
            "size": self.total,
            "head_sha256": hashlib.sha256(head).hexdigest(),
        }

    def lines(self) -> Iterator[tuple[int, bytes, int]]:
        with self.path.open("rb") as raw:
            compressed = raw.read(2) == b"\x1f\x8b"
            raw.seek(0)
            n = 0
            stream: io.BufferedIOBase = (
                gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw  # type: ignore[assignment]
            )
            try:
                for n, line in enumerate(stream, start=1):
                    yield n, line, raw.tell()
            except (OSError, EOFError) as e:  # truncated or corrupt gzip
                raise IngestError(f"{self.path}: cannot read past line {n}: {e}") from e


class IterSource:
    """Passages generated in memory (the demo corpus), numbered like lines."""

    unit = "passages"

    def __init__(self, name: str, rows: Sequence[dict[str, Any]], version: str):
        self.description = name
        self._rows = rows
        self._version = version
        self.total = len(rows)

    def identity(self) -> dict[str, Any]:
        return {"name": self.description, "version": self._version, "size": self.total}

    def lines(self) -> Iterator[tuple[int, bytes, int]]:
        for n, row in enumerate(self._rows, start=1):
            yield n, json.dumps(row, ensure_ascii=False).encode(), n


# --------------------------------------------------------------------------- sinks


class IndexSink(Protocol):
    description: str
    default_batch_size: int

    def load_state(self) -> dict[str, Any] | None:
        """The checkpoint saved with the index, None when there is no index."""
        ...

    def reset(self) -> None:
        """Drop any existing index and create an empty one."""
        ...

    def add(self, batch: Sequence[CorpusPassage], *, replace: bool) -> None:
        """Index and durably commit `batch`; with replace, passages with these ids go first."""
        ...

    def save_state(self, state: dict[str, Any]) -> None: ...

    def count(self) -> int:
        """Passages now searchable."""
        ...

    def close(self) -> None: ...


# --------------------------------------------------------------------------- the loop


@dataclass
class IngestReport:
    corpus: str
    index: str
    lines: int = 0
    passages: int = 0
    """Valid passages in the corpus (over every run of this build)."""
    added_now: int = 0
    bad: int = 0
    bad_lines: list[tuple[int, str]] = field(default_factory=list)
    resumed_after_line: int = 0
    already_complete: bool = False
    indexed: int = 0
    seconds: float = 0.0

    @property
    def count_ok(self) -> bool:
        return self.indexed == self.passages

    def summary(self) -> str:
        rate = self.added_now / self.seconds if self.seconds > 0 else 0.0
        parts = [
            f"{self.index}: {self.indexed} passages indexed",
            f"{self.passages} valid in {self.lines} lines",
            f"{self.bad} bad lines skipped",
            f"{self.added_now} added in {self.seconds:.1f} s ({rate:.0f}/s)",
        ]
        if self.resumed_after_line:
            parts.append(f"resumed after line {self.resumed_after_line}")
        if self.already_complete:
            parts.append("already complete (pass --rebuild to rebuild)")
        return "; ".join(parts)


OnBadLine = Literal["skip", "abort"]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def ingest(
    source: CorpusSource,
    sink: IndexSink,
    *,
    batch_size: int | None = None,
    on_bad_line: OnBadLine = "skip",
    rebuild: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = _stderr,
) -> IngestReport:
    """Build (or resume, or verify) `sink`'s index from `source`; ends with a count check.

    Returns the report; the caller decides what a failed count check means (`count_ok`).
    Raises IngestError for a bad line under on_bad_line="abort", a checkpoint from another
    corpus, or an unreadable file. Interrupting (Ctrl-C) leaves a consistent checkpoint.
    """
    if on_bad_line not in ("skip", "abort"):
        raise ValueError(f"on_bad_line must be 'skip' or 'abort', not {on_bad_line!r}")
    size = batch_size or sink.default_batch_size
    if size < 1:
        raise ValueError("batch_size must be >= 1")
    identity = source.identity()
    report = IngestReport(corpus=source.description, index=sink.description)
    start = time.perf_counter()

    state = _open_checkpoint(sink, identity, rebuild)
    report.resumed_after_line = int(state["lines_done"])
    if state["complete"]:
        report.already_complete = True
        report.resumed_after_line = 0
    else:
        if report.resumed_after_line:
            log(f"resuming {sink.description} after line {report.resumed_after_line}")
        _run(source, sink, state, size, on_bad_line, progress, report, log)
    report.lines = int(state["lines_done"])
    report.passages = int(state["passages"])
    report.bad = int(state["bad"])
    report.indexed = sink.count()
    report.seconds = time.perf_counter() - start
    return report


def _open_checkpoint(sink: IndexSink, identity: dict[str, Any], rebuild: bool) -> dict[str, Any]:
    """The index's build checkpoint; a fresh, empty index (and checkpoint) when there is none
    or on `rebuild`. Refuses a checkpoint of another format, analyzer or corpus."""
    state = None if rebuild else sink.load_state()
    if state is not None and state.get("format") != STATE_FORMAT:
        raise IngestError(
            f"{sink.description} has no readable build checkpoint "
            f"(format {state.get('format')!r}); pass --rebuild to build it anew"
        )
    if state is not None and state.get("analyzer_version") != ANALYZER_VERSION:
        raise IngestError(
            f"{sink.description} was built with analyzer version {state.get('analyzer_version')}, "
            f"this code uses {ANALYZER_VERSION}; pass --rebuild"
        )
    if state is not None and state.get("corpus") != identity:
        raise IngestError(
            f"{sink.description} was built from another corpus ({state.get('corpus')}); "
            "pass --rebuild to replace it, or choose another index"
        )
    if state is None:
        sink.reset()
        state = {
            "format": STATE_FORMAT,
            "analyzer_version": ANALYZER_VERSION,
            "corpus": identity,
            "lines_done": 0,
            "passages": 0,
            "bad": 0,
            "complete": False,
        }
        sink.save_state(state)
    return state


class _Batches:
    """The batch being filled and the checkpoint it is committed with (one `_run`)."""

    def __init__(self, sink: IndexSink, state: dict[str, Any], report: IngestReport) -> None:
        self.sink, self.state, self.report = sink, state, report
        self.done = int(state["lines_done"])
        """Lines a previous run committed: skipped."""
        self.replace = self.done > 0  # the batch after a checkpoint may already be committed
        self.passages: list[CorpusPassage] = []
        self.bad = 0
        self.last_line = self.done
        """The last line read: the checkpoint of the next flush."""

    def flush(self) -> None:
        """Commit the batch, then record the lines it covers as done."""
        if self.passages:
            self.sink.add(self.passages, replace=self.replace)
            self.report.added_now += len(self.passages)
        self.replace = False
        state = self.state
        state["lines_done"] = self.last_line
        state["passages"] = int(state["passages"]) + len(self.passages)
        state["bad"] = int(state["bad"]) + self.bad
        self.sink.save_state(state)
        self.passages = []
        self.bad = 0


def _progress_bar(source: CorpusSource, progress: bool) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=source.total,
        unit=source.unit,
        unit_scale=source.unit == "B",
        desc=f"indexing {Path(source.description).name}",
        disable=not progress,
        mininterval=1.0,
        file=sys.stderr,
    )


def _bad_line(
    source: CorpusSource,
    n: int,
    error: BadLine,
    on_bad_line: OnBadLine,
    batches: _Batches,
    log: Callable[[str], None],
) -> None:
    """Skip (count, report the first few) or abort at a bad line, committing what came before."""
    if on_bad_line == "abort":
        batches.last_line = n - 1  # this line is not done: a rerun starts here
        batches.flush()
        raise IngestError(
            f"{source.description}:{n}: {error}; fix the line or pass "
            "--on-bad-line skip (rerunning resumes at this line)"
        ) from None
    batches.bad += 1
    report = batches.report
    if len(report.bad_lines) < MAX_REPORTED_BAD_LINES:
        report.bad_lines.append((n, str(error)))
        log(f"skipping {source.description}:{n}: {error}")


def _run(
    source: CorpusSource,
    sink: IndexSink,
    state: dict[str, Any],
    size: int,
    on_bad_line: OnBadLine,
    progress: bool,
    report: IngestReport,
    log: Callable[[str], None],
) -> None:
    batches = _Batches(sink, state, report)
    bar = _progress_bar(source, progress)
    try:
        with bar:
            pos = 0
            for n, raw, pos in source.lines():
                if n <= batches.done:
                    if n % 100_000 == 0:
                        bar.update(pos - bar.n)
                    continue
                batches.last_line = n
                if not raw.strip():
                    continue
                try:
                    batches.passages.append(parse_line(raw))
                except BadLine as e:
                    _bad_line(source, n, e, on_bad_line, batches, log)
                if len(batches.passages) >= size:
                    batches.flush()
                    bar.update(pos - bar.n)
                    bar.set_postfix(passages=int(state["passages"]), refresh=False)
            batches.flush()
            bar.update(pos - bar.n)
        state["complete"] = True
        sink.save_state(state)
    except KeyboardInterrupt:
        log(
            f"interrupted: {state['lines_done']} lines are committed; "
            "rerun the same command to resume"
        )
        raise
