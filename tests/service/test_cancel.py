"""A client that disconnects cancels its run: the sandbox processes go, the slot frees."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from distillery.settings import Settings
from tests.helpers.gateway_server import GatewayServer, descendants
from tests.helpers.scripted_server import ScriptedServer
from tests.service.conftest import final_handler, make_settings, metric_value, one_valid, reply

SLEEPER = reply("import time\ntime.sleep(60)\nfinal_answer('too late')")


@pytest.fixture
def slow_gateway(scripted_server: ScriptedServer, index_dir: Path) -> Iterator[GatewayServer]:
    # No pre-started and no reused sandbox workers: every process under us during a run is
    # that run's, and all of them must go with it (a reused jail's scrub is test_reuse's).
    base = Settings().sandbox_allowed_imports
    settings = make_settings(
        scripted_server,
        index_dir,
        sandbox_pool_size=0,
        sandbox_reuse_idle=0,
        sandbox_step_timeout_s=120,
        sandbox_cpu_s=120,
        sandbox_allowed_imports=[*base, "time"],
        samples=1,
    )
    with GatewayServer(settings) as gw:
        yield gw


async def _until(cond: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


def _wait_gone(pids: set[int], timeout_s: float = 15.0) -> set[int]:
    deadline = time.monotonic() + timeout_s
    alive = pids & descendants()
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = pids & descendants()
    return alive


def _cancelled(gw: GatewayServer, endpoint: str) -> float:
    text = httpx.get(gw.url + "/metrics").text
    return metric_value(text, "distillery_runs_total", endpoint=endpoint, finish_reason="cancelled")


def _check_after(gw: GatewayServer, scripted_server: ScriptedServer, started: set[int]) -> None:
    assert started, "the run started no sandbox process"
    assert _wait_gone(started) == set(), "sandbox processes outlived the cancelled run"
    deadline = time.monotonic() + 10
    while gw.gateway.admission.active and time.monotonic() < deadline:
        time.sleep(0.02)
    assert gw.gateway.admission.active == 0
    scripted_server.handler = final_handler  # the gateway still serves
    r = httpx.post(gw.url + "/v1/solve", json={"question": "q"}, timeout=30)
    assert r.status_code == 200 and r.json()["answer"] == 42


def test_disconnect_cancels_a_json_run(
    slow_gateway: GatewayServer, scripted_server: ScriptedServer
) -> None:
    scripted_server.handler = lambda body: one_valid(body, SLEEPER)
    before = descendants()
    started: set[int] = set()

    async def scenario() -> None:
        async with httpx.AsyncClient(base_url=slow_gateway.url, timeout=120) as client:
            request = asyncio.create_task(client.post("/v1/solve", json={"question": "q"}))
            await _until(lambda: bool(descendants() - before))
            await asyncio.sleep(0.5)  # the code is sleeping in the sandbox now
            started.update(descendants() - before)
            request.cancel()  # closes the connection mid-request
            with pytest.raises(asyncio.CancelledError):
                await request

    asyncio.run(scenario())
    _check_after(slow_gateway, scripted_server, started)
    assert _cancelled(slow_gateway, "solve") == 1


def test_disconnect_cancels_a_streamed_run(
    slow_gateway: GatewayServer, scripted_server: ScriptedServer
) -> None:
    scripted_server.script(
        lambda body: one_valid(body, reply("a = 1")),
        lambda body: one_valid(body, SLEEPER),
    )
    before = descendants()
    started: set[int] = set()
    body = {"question": "q", "stream": True}
    with httpx.stream("POST", slow_gateway.url + "/v1/solve", json=body, timeout=120) as r:
        events = r.iter_lines()
        seen = []
        for line in events:
            if line.startswith("event: "):
                seen.append(line[len("event: "):])
            if seen == ["start", "step"]:
                break
        # step 1 done; step 2 is sleeping in the sandbox
        deadline = time.monotonic() + 20
        while len(scripted_server.chat_requests) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.5)
        started.update(descendants() - before)
    # leaving the block closed the connection
    _check_after(slow_gateway, scripted_server, started)
    assert _cancelled(slow_gateway, "solve") == 1


def test_disconnect_cancels_a_chat_stream(
    slow_gateway: GatewayServer, scripted_server: ScriptedServer
) -> None:
    scripted_server.handler = lambda body: one_valid(body, SLEEPER)
    before = descendants()
    started: set[int] = set()
    body = {"model": "scripted-model", "messages": [{"role": "user", "content": "q"}],
            "stream": True, "n": 2}
    with httpx.stream("POST", slow_gateway.url + "/v1/chat/completions", json=body,
                      timeout=120) as r:
        assert r.status_code == 200
        deadline = time.monotonic() + 20
        while len(descendants() - before) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.5)
        started.update(descendants() - before)
    _check_after(slow_gateway, scripted_server, started)
    assert _cancelled(slow_gateway, "chat") == 2


def test_client_gone_while_queued_never_runs(
    scripted_server: ScriptedServer, index_dir: Path
) -> None:
    from tests.helpers.scripted_server import Reply

    settings = make_settings(scripted_server, index_dir, max_concurrency=1, max_queue=4,
                             sandbox_pool_size=0)
    slow = reply("final_answer(1)")
    scripted_server.handler = lambda body: Reply([slow] * int(body.get("n") or 1), delay_s=1.0)
    with GatewayServer(settings) as gw:
        admission = gw.gateway.admission

        async def scenario() -> httpx.Response:
            async with httpx.AsyncClient(base_url=gw.url, timeout=60) as client:
                first = asyncio.create_task(client.post("/v1/solve", json={"question": "a"}))
                await _until(lambda: admission.active == 1)
                second = asyncio.create_task(client.post("/v1/solve", json={"question": "b"}))
                await _until(lambda: admission.queued == 1)
                second.cancel()  # the client leaves while queued
                with pytest.raises(asyncio.CancelledError):
                    await second
                return await first

        first = asyncio.run(scenario())
        assert first.status_code == 200
        deadline = time.monotonic() + 10
        while admission.active and time.monotonic() < deadline:
            time.sleep(0.02)
        assert admission.active == 0 and admission.queued == 0
        assert len(scripted_server.chat_requests) == 1  # the queued request never ran
        metrics = httpx.get(gw.url + "/metrics").text
        assert metric_value(metrics, "distillery_rejected_total", reason="client_gone") == 1
        assert _cancelled(gw, "solve") == 0  # no run was started only to be cancelled
