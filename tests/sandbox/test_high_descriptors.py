"""A busy host: the gateway may hold a thousand connections and more, so the socket it
hands a new worker can have a descriptor number above 1023, which `select()` cannot
watch. The worker must serve steps whatever number it was given (jailed and unjailed)."""

from __future__ import annotations

import os
import resource
from collections.abc import Iterator

import pytest

from tests.helpers.unjailed import unjailed_config
from tests.sandbox.conftest import Opener
from tests.sandbox.util import fast_config

pytestmark = pytest.mark.nsjail


@pytest.fixture
def busy_host() -> Iterator[int]:
    """Open descriptors until the next one the process gets is numbered above 1100."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < 2048")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 4096), hard))
    held: list[int] = []
    try:
        while not held or held[-1] < 1100:
            held.append(os.open(os.devnull, os.O_RDONLY))
        yield held[-1]
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.parametrize("jailed", [True, False], ids=["jailed", "unjailed"])
async def test_a_worker_started_from_a_busy_host_serves_steps(
    busy_host: int, open_session: Opener, jailed: bool
) -> None:
    config = fast_config() if jailed else unjailed_config()
    session = await open_session(config)
    first = await session.run("x = 6 * 7\nprint(x)")
    assert first.ok and "42" in first.stdout, first.error
    results = await session.try_candidates(["x = x + 1\nx", "x = x + 2\nx"])
    assert [r.value_repr for r in results] == ["43", "44"]
    await session.commit(1)
    assert (await session.run("x")).value_repr == "44"
