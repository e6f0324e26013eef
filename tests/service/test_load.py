"""Bounded load test on loopback: 64 concurrent /v1/solve against an instant scripted model.
Nothing is lost or mixed up: every request gets exactly one well-formed response, and each
answer is its own question's."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx

from tests.helpers.gateway_server import GatewayServer
from tests.helpers.scripted_server import ScriptedServer
from tests.service.conftest import metric_value, square_handler

CLIENTS = 64


def test_64_concurrent_solves(gateway: GatewayServer, scripted_server: ScriptedServer) -> None:
    scripted_server.handler = square_handler
    before = httpx.get(gateway.url + "/metrics").text

    async def one(client: httpx.AsyncClient, i: int) -> tuple[int, httpx.Response]:
        return i, await client.post("/v1/solve", json={"question": f"square {i}"})

    async def run() -> list[tuple[int, httpx.Response]]:
        limits = httpx.Limits(max_connections=CLIENTS)
        async with httpx.AsyncClient(base_url=gateway.url, timeout=120, limits=limits) as client:
            return await asyncio.wait_for(
                asyncio.gather(*(one(client, i) for i in range(CLIENTS))), 170
            )

    results = asyncio.run(run())
    assert len(results) == CLIENTS
    statuses = Counter(r.status_code for _, r in results)
    # 16 run at once and 48 wait (queue 64): nobody is refused
    assert statuses == {200: CLIENTS}, statuses
    ids = set()
    for i, r in results:
        body = r.json()
        assert body["answer"] == i * i, (i, body["answer"])
        assert body["finish_reason"] == "answer"
        ids.add(body["id"])
    assert len(ids) == CLIENTS
    after = httpx.get(gateway.url + "/metrics").text
    done = metric_value(after, "distillery_runs_total", endpoint="solve", finish_reason="answer")
    assert done - metric_value(before, "distillery_runs_total", endpoint="solve",
                               finish_reason="answer") == CLIENTS
    assert gateway.gateway.admission.active == 0 and gateway.gateway.admission.queued == 0
