"""Fixtures of the sandbox suite: real nsjail workers with short limits.

Every test gets its own executor (the channels belong to the test's event loop) and the
finalizer closes it and checks that no process of it survived.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from sandbox.config import SandboxConfig
from sandbox.errors import SandboxSetupError
from sandbox.executor import SandboxExecutor
from sandbox.session import SandboxSession
from tests.sandbox.util import Tracker, fast_config, wait_until

ExecutorFactory = Callable[..., SandboxExecutor]
Opener = Callable[..., Awaitable[SandboxSession]]


@pytest.fixture
async def make_executor() -> AsyncIterator[ExecutorFactory]:
    made: list[SandboxExecutor] = []

    def make(config: SandboxConfig | None = None) -> SandboxExecutor:
        try:
            ex = SandboxExecutor(config or fast_config())
        except SandboxSetupError as e:  # CI must run these: fail loudly, never skip
            pytest.fail(f"sandbox setup failed: {e}")
        made.append(ex)
        return ex

    yield make
    for ex in made:
        await ex.aclose()


@pytest.fixture
def tracker() -> Tracker:
    return Tracker()


@pytest.fixture
async def open_session(make_executor: ExecutorFactory, tracker: Tracker) -> AsyncIterator[Opener]:
    """open_session(config=None, tools=None) -> a tracked session; leak-checked at the end."""
    sessions: list[SandboxSession] = []

    async def opener(
        config: SandboxConfig | None = None, tools: dict[str, Any] | None = None
    ) -> SandboxSession:
        ex = make_executor(config)
        s = await ex.open_session(tools or {})
        tracker.watch(s)
        sessions.append(s)
        return s

    yield opener
    for s in sessions:
        tracker.watch(s)
        await s.close()
    assert await wait_until(lambda: not tracker.leftovers()), tracker.leftovers()


