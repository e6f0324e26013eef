"""API keys (401), body limit (413), validation (400/422), concurrency limit (429), request
ids, the stable error shape and the metrics that count all of it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.gateway_server import GatewayServer
from tests.helpers.scripted_server import Reply, ScriptedServer
from tests.service.conftest import final_handler, make_settings, metric_value, reply


def assert_error_shape(r: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert set(err) == {"message", "type", "code", "param", "request_id"}
    assert err["message"] and err["type"] and err["code"]
    assert err["request_id"] == r.headers["x-request-id"]
    if code is not None:
        assert err["code"] == code, err
    return dict(err)


@pytest.fixture
def keyed_gateway(
    scripted_server: ScriptedServer, index_dir: Path
) -> Iterator[GatewayServer]:
    settings = make_settings(
        scripted_server, index_dir, api_keys=["key-one", "key-two"], sandbox_pool_size=0
    )
    with GatewayServer(settings) as gw:
        yield gw


def test_api_keys(keyed_gateway: GatewayServer, scripted_server: ScriptedServer) -> None:
    url = keyed_gateway.url
    scripted_server.handler = final_handler
    r = httpx.post(url + "/v1/solve", json={"question": "q"})
    err = assert_error_shape(r, 401, "missing_api_key")
    assert "Bearer" in err["message"] and r.headers["www-authenticate"] == "Bearer"
    r = httpx.post(url + "/v1/solve", json={"question": "q"},
                   headers={"Authorization": "Bearer nope"})
    assert_error_shape(r, 401, "invalid_api_key")
    r = httpx.get(url + "/v1/models", headers={"Authorization": "Basic a2V5LW9uZQ=="})
    assert_error_shape(r, 401)
    assert scripted_server.chat_requests == []  # nothing ran
    r = httpx.post(url + "/v1/solve", json={"question": "q"},
                   headers={"Authorization": "Bearer key-two"})
    assert r.status_code == 200 and r.json()["answer"] == 42
    # probes, metrics and the schema stay open; the schema declares the bearer scheme
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert httpx.get(url + path, timeout=30).status_code == 200, path
    schema = httpx.get(url + "/openapi.json").json()
    assert "HTTPBearer" in schema["components"]["securitySchemes"]
    assert "401" in schema["paths"]["/v1/solve"]["post"]["responses"]


def test_no_keys_means_no_security_in_schema(gateway: GatewayServer) -> None:
    schema = httpx.get(gateway.url + "/openapi.json").json()
    assert "securitySchemes" not in schema.get("components", {})
    assert "401" not in schema["paths"]["/v1/solve"]["post"]["responses"]


def test_body_limit_413_declared_and_chunked(gateway: GatewayServer) -> None:
    limit = gateway.settings.max_body_bytes
    big = b'{"question": "' + b"x" * limit + b'"}'
    r = httpx.post(gateway.url + "/v1/solve", content=big,
                   headers={"content-type": "application/json"})
    assert_error_shape(r, 413, "body_too_large")

    def chunks() -> Iterator[bytes]:  # no content-length: the limit counts streamed bytes
        for i in range(0, len(big), 65536):
            yield big[i : i + 65536]

    r = httpx.post(gateway.url + "/v1/solve", content=chunks(),
                   headers={"content-type": "application/json"})
    assert_error_shape(r, 413, "body_too_large")


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ({}, "question"),
        ({"question": ""}, "question"),
        ({"question": "q", "samples": 0}, "samples"),
        ({"question": "q", "samples": 65}, "samples"),
        ({"question": "q", "max_steps": 51}, "max_steps"),
        ({"question": "q", "max_tokens": 0}, "max_tokens"),
        ({"question": "q", "temperature": -1}, "temperature"),
        ({"question": "q", "policy": "best"}, "policy"),
        ({"question": "x" * 20_001}, "question"),
        ({"question": "q", "surprise": 1}, "surprise"),
        ([1, 2], None),
    ],
)
def test_solve_validation_422(gateway: GatewayServer, payload: Any, param: str | None) -> None:
    r = httpx.post(gateway.url + "/v1/solve", json=payload)
    err = assert_error_shape(r, 422, "validation_error")
    if param is not None:
        assert err["param"] == param
        assert param in err["message"]


def test_invalid_json_400_unknown_route_404_wrong_method_405(gateway: GatewayServer) -> None:
    r = httpx.post(gateway.url + "/v1/solve", content=b"{nope",
                   headers={"content-type": "application/json"})
    assert_error_shape(r, 400, "invalid_json")
    assert_error_shape(httpx.get(gateway.url + "/v2/everything"), 404, "not_found")
    r = httpx.get(gateway.url + "/v1/solve")
    assert_error_shape(r, 405, "method_not_allowed")
    assert "POST" in r.headers["allow"]


def test_request_id_is_echoed_or_made(gateway: GatewayServer) -> None:
    r = httpx.get(gateway.url + "/healthz", headers={"X-Request-ID": "trace-123.a:b"})
    assert r.headers["x-request-id"] == "trace-123.a:b"
    r = httpx.get(gateway.url + "/healthz", headers={"X-Request-ID": "bad id\twith junk"})
    assert r.headers["x-request-id"] != "bad id\twith junk" and len(r.headers["x-request-id"]) == 32
    a = httpx.get(gateway.url + "/healthz").headers["x-request-id"]
    b = httpx.get(gateway.url + "/healthz").headers["x-request-id"]
    assert a != b


def test_concurrency_limit_queues_then_429(
    scripted_server: ScriptedServer, index_dir: Path
) -> None:
    settings = make_settings(
        scripted_server, index_dir, max_concurrency=1, max_queue=1, sandbox_pool_size=0
    )
    slow = reply("final_answer(7)")
    scripted_server.handler = lambda body: Reply([slow] * int(body.get("n") or 1), delay_s=1.5)

    async def scenario(url: str, gw: GatewayServer) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            first = asyncio.create_task(client.post("/v1/solve", json={"question": "a"}))
            await _until(lambda: gw.gateway.admission.active == 1)
            second = asyncio.create_task(client.post("/v1/solve", json={"question": "b"}))
            await _until(lambda: gw.gateway.admission.queued == 1)
            third = await client.post("/v1/solve", json={"question": "c"})
            return [await first, await second, third]

    with GatewayServer(settings) as gw:
        first, second, third = asyncio.run(scenario(gw.url, gw))
        assert first.status_code == 200 and second.status_code == 200
        assert first.json()["answer"] == 7 and second.json()["answer"] == 7
        err = assert_error_shape(third, 429, "too_many_requests")
        assert "queued" in err["message"]
        assert int(third.headers["retry-after"]) >= 1
        assert second.json()["timings"]["queue_s"] > 0.5  # it waited for the first
        metrics = httpx.get(gw.url + "/metrics").text
        assert metric_value(metrics, "distillery_rejected_total", reason="queue_full") == 1
        assert metric_value(metrics, "distillery_http_requests_total",
                            route="/v1/solve", status="429") == 1
        assert metric_value(metrics, "distillery_http_requests_total",
                            route="/v1/solve", status="200") == 2
        assert metric_value(metrics, "distillery_runs_in_flight") == 0
        assert metric_value(metrics, "distillery_queue_depth") == 0


def test_metrics_count_requests_runs_tokens(
    gateway: GatewayServer, scripted_server: ScriptedServer
) -> None:
    before = httpx.get(gateway.url + "/metrics").text
    scripted_server.handler = final_handler
    for _ in range(2):
        assert httpx.post(gateway.url + "/v1/solve", json={"question": "q"}).status_code == 200
    after = httpx.get(gateway.url + "/metrics").text

    def delta(name: str, **labels: str) -> float:
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    assert delta("distillery_http_requests_total", route="/v1/solve", status="200") == 2
    assert delta("distillery_runs_total", endpoint="solve", finish_reason="answer") == 2
    assert delta("distillery_run_steps_count") == 2
    assert delta("distillery_step_candidates_sum") == 2 * gateway.settings.samples
    assert delta("distillery_model_tokens_total", kind="completion") > 0
    assert delta("distillery_sandbox_execution_seconds_count") == 2
    assert delta("distillery_run_duration_seconds_count", endpoint="solve") == 2
    assert "# TYPE distillery_queue_depth gauge" in after


async def _until(cond: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)
