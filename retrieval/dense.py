"""Dense vectors beside the embedded tantivy index: build sink, exact search, rank fusion.

Files in the index folder (next to tantivy's and `distillery.json`):
- `dense.f32`: one row of `dim` little-endian float32 per passage, L2-normalised;
- `dense_ids.jsonl`: the passage id of each row (a JSON string per line);
- `dense.json`: the build checkpoint (retrieval.ingest's format) plus the embedding model's
  `name`, `digest` (sha256 of its weights) and `dim`.

Build (`DenseIndexWriter`, an IndexSink for retrieval.ingest): batches of passages are
embedded and appended, then the checkpoint records how many lines and rows are done; on
resume the files are cut back to the checkpoint's row count, so a batch that was appended
but not checkpointed is embedded again, never twice. A checkpoint made with another model
is refused with the command that rebuilds it.

Search (`DenseIndex`): exact, a matrix-vector product over the memory-mapped rows and a
partial sort (cosine, since rows and queries are unit vectors). Opening refuses vectors
from another model or another corpus than the tantivy index beside them.

`rrf` fuses ranked lists the way Elasticsearch's `rrf` retriever does: score =
sum over lists of 1 / (RRF_RANK_CONSTANT + rank), rank counted from 1, each list cut to
RRF_WINDOW.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np


from retrieval.embedding import Embedder, passage_text
from retrieval.ingest import CorpusPassage, write_json_atomic
from retrieval.retriever import RetrievalError

VECTORS_FILE = "dense.f32"
IDS_FILE = "dense_ids.jsonl"
DENSE_STATE_FILE = "dense.json"
RRF_RANK_CONSTANT = 60
RRF_WINDOW = 50
"""Candidates each list contributes to hybrid fusion (Elasticsearch `rank_window_size`)."""


def rebuild_hint(index_dir: Path) -> str:
    return (
        f"`distillery index build --dense --rebuild --corpus PATH --index-dir {index_dir}` "
        "(or --dense without --rebuild to resume an unfinished build)"
    )


def read_dense_state(index_dir: Path) -> dict[str, Any] | None:
    path = Path(index_dir) / DENSE_STATE_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        hint = rebuild_hint(index_dir)
        raise RetrievalError(f"cannot read {path}: {e}; rebuild with {hint}") from e
    return data if isinstance(data, dict) else None


def check_model(state: dict[str, Any], embedder: Embedder, where: str, hint: str) -> None:
    """Refuse vectors made by another embedding model (name or weights)."""
    name, digest = state.get("model"), state.get("digest")
    if name != embedder.name or digest != embedder.digest or state.get("dim") != embedder.dim:
        raise RetrievalError(
            f"the dense vectors in {where} were made with embedding model {name!r} "
            f"(sha256 {str(digest)[:12]}...), but this code embeds queries with "
            f"{embedder.name!r} (sha256 {embedder.digest[:12]}...): their similarities would "
            f"be meaningless. Rebuild them with {hint}"
        )


class DenseIndexWriter:
    """IndexSink for retrieval.ingest: embeds passages into the files beside a tantivy index."""

    default_batch_size = 256

    def __init__(self, index_dir: Path, embedder: Embedder):
        self.index_dir = Path(index_dir)
        self.embedder = embedder
        self.description = f"dense vectors in {self.index_dir}"
        self._row_bytes = 4 * embedder.dim

    def _paths(self) -> tuple[Path, Path]:
        return self.index_dir / VECTORS_FILE, self.index_dir / IDS_FILE

    def load_state(self) -> dict[str, Any] | None:
        state = read_dense_state(self.index_dir)
        if state is None:
            return None
        check_model(state, self.embedder, str(self.index_dir), rebuild_hint(self.index_dir))
        if not state.get("complete"):
            self._truncate(int(state.get("passages", 0)))
        return state

    def _truncate(self, rows: int) -> None:
        """Cut both files back to `rows` rows (drops a batch appended after the checkpoint)."""
        vectors, ids = self._paths()
        if vectors.exists() and vectors.stat().st_size > rows * self._row_bytes:
            os.truncate(vectors, rows * self._row_bytes)
        if ids.exists():
            with ids.open("rb") as f:
                lines = f.readlines()
            if len(lines) > rows:
                ids.write_bytes(b"".join(lines[:rows]))

    def reset(self) -> None:
        self.index_dir.mkdir(parents=True, exist_ok=True)
        for path in (*self._paths(), self.index_dir / DENSE_STATE_FILE):
            path.unlink(missing_ok=True)
        for path in self._paths():
            path.touch()

    def add(self, batch: Sequence[CorpusPassage], *, replace: bool) -> None:
        import numpy as np

        # `replace` needs nothing here: load_state already cut the files to the checkpoint.
        vectors = self.embedder.embed_passages([passage_text(p.title, p.text) for p in batch])
        vpath, ipath = self._paths()
        with vpath.open("ab") as f:
            f.write(np.ascontiguousarray(vectors, dtype="<f4").tobytes())
            f.flush()
            os.fsync(f.fileno())
        with ipath.open("a", encoding="utf-8") as f:
            f.write("".join(json.dumps(p.id, ensure_ascii=False) + "\n" for p in batch))
            f.flush()
            os.fsync(f.fileno())

    def save_state(self, state: dict[str, Any]) -> None:
        full = {
            **state,
            "model": self.embedder.name,
            "digest": self.embedder.digest,
            "dim": self.embedder.dim,
        }
        write_json_atomic(self.index_dir / DENSE_STATE_FILE, full)

    def count(self) -> int:
        vectors, ids = self._paths()
        rows = vectors.stat().st_size // self._row_bytes if vectors.exists() else 0
        with ids.open("rb") as f:
            n_ids = sum(1 for _ in f)
        return int(rows) if n_ids == rows else -1

    def close(self) -> None:
        pass


class DenseIndex:
    """The finished vectors of one index folder, memory-mapped; exact top-k by cosine."""

    def __init__(self, index_dir: Path, embedder: Embedder, corpus: object):
        import numpy as np

        d = Path(index_dir)
        hint = rebuild_hint(d)
        state = read_dense_state(d)
        if state is None:
            raise RetrievalError(
                f"{d} has no dense vectors (dense search needs them): build with {hint}"
            )
        check_model(state, embedder, str(d), hint)
        if not state.get("complete"):
            raise RetrievalError(
                f"the dense vectors in {d} are unfinished (up to line {state.get('lines_done')}): "
                "rerun `distillery index build --dense` with the same corpus to resume"
            )
        if state.get("corpus") != corpus:
            raise RetrievalError(
                f"the dense vectors in {d} were built from another corpus than its BM25 index: "
                f"rebuild with {hint}"
            )
        rows = int(state["passages"])
        self.ids: list[str] = [
            json.loads(line) for line in (d / IDS_FILE).read_text(encoding="utf-8").splitlines()
        ]
        size = (d / VECTORS_FILE).stat().st_size
        if len(self.ids) != rows or size != rows * 4 * embedder.dim:
            raise RetrievalError(
                f"the dense files in {d} do not match their checkpoint: rebuild with {hint}"
            )
        self.vectors: np.ndarray = (
            np.memmap(d / VECTORS_FILE, dtype="<f4", mode="r", shape=(rows, embedder.dim))
            if rows
            else np.zeros((0, embedder.dim), dtype=np.float32)
        )

    def __len__(self) -> int:
        return len(self.ids)

    def search(self, query: np.ndarray, k: int) -> list[tuple[str, float]]:
        """(passage id, cosine) of the k rows most similar to the unit vector `query`."""
        return [(self.ids[i], s) for i, s in exact_top_k(self.vectors, query, k)]


def exact_top_k(vectors: np.ndarray, query: np.ndarray, k: int) -> list[tuple[int, float]]:
    """(row, score) of the k largest dot products, best first (ties: lower row first)."""
    import numpy as np

    n = len(vectors)
    if n == 0:
        return []
    scores = vectors @ np.asarray(query, dtype=np.float32)
    k = min(k, n)
    top = np.argpartition(-scores, k - 1)[:k] if k < n else np.arange(n)
    order = top[np.lexsort((top, -scores[top]))]
    return [(int(i), float(scores[i])) for i in order]


def rrf(ranked: Sequence[Sequence[str]], k: int) -> list[tuple[str, float]]:
    """Reciprocal rank fusion of ranked id lists: the k best (id, fused score)."""
    fused: dict[str, float] = {}
    first_seen: dict[str, int] = {}
    for lst in ranked:
        for rank, pid in enumerate(lst[:RRF_WINDOW], start=1):
            fused[pid] = fused.get(pid, 0.0) + 1.0 / (RRF_RANK_CONSTANT + rank)
            first_seen.setdefault(pid, len(first_seen))
    best = sorted(fused, key=lambda p: (-fused[p], first_seen[p]))[:k]
    return [(p, fused[p]) for p in best]


EmbedderFactory = Callable[[], Embedder]
