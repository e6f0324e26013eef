"""Fixtures for the model engines: one in-process engine per session (loading costs seconds)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.transformers_engine import TransformersEngine


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir: Path) -> TransformersEngine:
    # Shared by the session's tests across their per-test event loops (the engine holds
    # no loop-bound state); its worker thread ends with the process.
    return TransformersEngine.from_path(tiny_model_dir, model_name="tiny")


@pytest.fixture
async def fresh_tiny_engine(tiny_model_dir: Path) -> AsyncIterator[TransformersEngine]:
    engine = TransformersEngine.from_path(tiny_model_dir, model_name="tiny")
    yield engine
    await engine.aclose()
