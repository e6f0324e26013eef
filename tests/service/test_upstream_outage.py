"""A model server that is down (503/429 with Retry-After) or that streams garbage, seen
through the real gateway over HTTP, on /v1/solve, chat completions and responses, JSON
and streamed: an outage fails fast (no wait longer than the cap or than the request's
deadline: one upstream request, the slot freed) with a 503 carrying the model server's
Retry-After, or an SSE error event; it is never a completed answer. An empty or
truncated upstream stream is a counted model error, never a silent 200."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.gateway_server import GatewayServer
from tests.helpers.scripted_server import Error, RawStream, ScriptedServer
from tests.service.conftest import MODEL, final_handler, make_settings, metric_value, sse_events

ROUTES: dict[str, tuple[str, dict[str, Any]]] = {
    "solve": ("/v1/solve", {"question": "What is 6 * 7?"}),
    "chat": ("/v1/chat/completions",
             {"model": MODEL, "messages": [{"role": "user", "content": "What is 6 * 7?"}]}),
    "responses": ("/v1/responses", {"model": MODEL, "input": "What is 6 * 7?"}),
}


@pytest.fixture(scope="module")
def retrying_gateway(
    scripted_server_session: ScriptedServer, index_dir: Path
) -> Iterator[GatewayServer]:
    """A gateway whose model client retries (3 times, waits of at most 5 s), unlike the
    session gateway's (no retries)."""
    settings = make_settings(
        scripted_server_session, index_dir, model_retries=3, model_retry_after_max_s=5.0,
        sandbox_pool_size=0,
    )
    with GatewayServer(settings) as gw:
        yield gw


def _post(gw: GatewayServer, route: str, stream: bool, **extra: Any) -> httpx.Response:
    path, body = ROUTES[route]
    return httpx.post(gw.url + path, json={**body, "stream": stream, **extra}, timeout=120)


def _in_flight(gw: GatewayServer) -> float:
    return metric_value(httpx.get(gw.url + "/metrics").text, "distillery_runs_in_flight")


def _assert_error_event(text: str, code: str) -> dict[str, Any]:
    """The stream ends with an `error` event carrying `code`, and holds no answer."""
    events = sse_events(text)
    kinds = [e for e, _ in events]
    assert "error" in kinds, text
    error = json.loads(dict((e, d) for e, d in events if e == "error")["error"])
    error = error.get("error", error)
    assert error["code"] == code, error
    for bad in ("result", "response.completed", "response.incomplete"):
        assert bad not in kinds, text
    assert '"finish_reason":"length"' not in text.replace(" ", "")
    return dict(error)


@pytest.mark.parametrize("route", list(ROUTES))
@pytest.mark.parametrize("timeout_s", [None, 30.0])
def test_a_long_retry_after_fails_fast_with_it(
    retrying_gateway: GatewayServer, scripted_server: ScriptedServer,
    route: str, timeout_s: float | None,
) -> None:
    """Retry-After: 3600 (past the 5 s cap): one upstream request, then a 503 that passes
    the 3600 on; with or without a deadline (a deadline used to make it a 200 'length')."""
    gw = retrying_gateway
    extra = {} if timeout_s is None else {"timeout_s": timeout_s}
    scripted_server.script(Error(503, "overloaded", headers={"Retry-After": "3600"}))
    r = _post(gw, route, False, **extra)
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "model_unavailable"
    assert r.headers["retry-after"] == "3600"
    assert len(scripted_server.chat_requests) == 1  # not retried, no wait taken
    scripted_server.reset()
    scripted_server.script(Error(429, "rate limited", headers={"Retry-After": "3600"}))
    r = _post(gw, route, True, **extra)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    _assert_error_event(r.text, "model_unavailable")
    assert len(scripted_server.chat_requests) == 1
    assert _in_flight(gw) == 0  # both slots were given back


@pytest.mark.parametrize("route", list(ROUTES))
def test_no_retry_wait_past_the_request_deadline(
    retrying_gateway: GatewayServer, scripted_server: ScriptedServer, route: str
) -> None:
    """A wait under the cap (2 s) but longer than what is left of a 1 s deadline: a 503
    at once with that Retry-After, not a run cut by its deadline (200 'length')."""
    scripted_server.script(Error(503, "busy", headers={"Retry-After": "2"}))
    scripted_server.handler = final_handler  # what a retry would have got
    r = _post(retrying_gateway, route, False, timeout_s=1.0)
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "model_unavailable"
    assert r.headers["retry-after"] == "2"
    assert len(scripted_server.chat_requests) == 1


def test_a_short_retry_after_is_waited_for(
    retrying_gateway: GatewayServer, scripted_server: ScriptedServer
) -> None:
    scripted_server.script(Error(503, "busy", headers={"Retry-After": "0.2"}))
    scripted_server.handler = final_handler
    r = _post(retrying_gateway, "chat", False, timeout_s=30.0)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "42"
    assert len(scripted_server.chat_requests) == 2


EMPTY = RawStream([{"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 0}}] * 3
                  + ["[DONE]"])
TRUNCATED = RawStream([{"choices": [{"index": i, "delta": {"content": "Thought: hm"}}]}
                       for i in range(2)])


@pytest.mark.parametrize(("kind", "item"), [("empty", EMPTY), ("truncated", TRUNCATED)])
def test_malformed_upstream_streams_are_model_errors(
    gateway: GatewayServer, scripted_server: ScriptedServer, kind: str, item: RawStream
) -> None:
    """`choices: []` throughout, or no finish reason and no [DONE]: logged and counted as a
    model error, answered as one (chat/responses 502, solve finish_reason 'error'), never
    a 200 'length' / 'max_steps' / incomplete."""
    def failures() -> float:
        text = httpx.get(gateway.url + "/metrics").text
        return metric_value(text, "distillery_model_failures_total", error_type="ModelError")

    before = failures()
    scripted_server.handler = lambda body: item
    r = _post(gateway, "solve", False)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["finish_reason"] == "error" and out["error_type"] == "ModelError", out
    assert out["answer"] is None
    for route in ("chat", "responses"):
        r = _post(gateway, route, False)
        assert r.status_code == 502, r.text
        assert r.json()["error"]["code"] == "model_error"
    r = _post(gateway, "chat", True)
    _assert_error_event(r.text, "model_error")
    assert failures() - before == 4  # one failed model call per request, none retried
    assert len(scripted_server.chat_requests) == 4
