"""502/503 bodies of a real gateway say what a client can act on and never carry the model
server's internal URL or the operator's hints; the server log keeps the full text."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest

from tests.helpers.gateway_server import GatewayServer
from tests.helpers.scripted_server import Error, RawStream, ScriptedServer
from tests.service.conftest import MODEL

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "What is 6 * 7?"}]}


def _call(gw: GatewayServer, route: str, **extra: Any) -> httpx.Response:
    if route == "chat":
        return httpx.post(gw.url + "/v1/chat/completions", json={**CHAT, **extra}, timeout=60)
    return httpx.post(gw.url + "/v1/responses", timeout=60,
                      json={"model": MODEL, "input": "What is 6 * 7?", **extra})


def _assert_public(text: str, srv: ScriptedServer) -> None:
    for internal in ("http://", "https://", f":{srv.port}", "DISTILLERY_", "Check that"):
        assert internal not in text, (internal, text)


@pytest.mark.parametrize("route", ["chat", "responses"])
def test_outage_body_has_no_internal_url(
    gateway: GatewayServer, scripted_server: ScriptedServer, route: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    scripted_server.handler = lambda body: Error(500, "engine dead")
    with caplog.at_level(logging.WARNING, logger="distillery.upstream"):
        r = _call(gw=gateway, route=route)
    assert r.status_code == 503, r.text
    err = r.json()["error"]
    assert err["code"] == "model_unavailable" and "Retry-After" in err["message"]
    _assert_public(r.text, scripted_server)
    logged = [rec.getMessage() for rec in caplog.records if rec.name == "distillery.upstream"]
    assert any(scripted_server.url in m and "engine dead" in m for m in logged), logged


def test_a_refused_request_says_what_to_change(
    gateway: GatewayServer, scripted_server: ScriptedServer
) -> None:
    scripted_server.handler = lambda body: Error(400, "prompt is longer than 2048 tokens")
    r = _call(gateway, "chat")
    assert r.status_code == 502, r.text
    err = r.json()["error"]
    assert err["code"] == "model_error"
    assert "HTTP 400" in err["message"] and "prompt is longer than 2048 tokens" in err["message"]
    _assert_public(r.text, scripted_server)
    scripted_server.handler = lambda body: Error(401, "bad key")  # the operator's problem
    r = _call(gateway, "chat")
    assert r.status_code == 502 and "HTTP 401" in r.json()["error"]["message"]
    assert "not this request" in r.json()["error"]["message"]
    _assert_public(r.text, scripted_server)


@pytest.mark.parametrize("route", ["chat", "responses"])
def test_a_malformed_stream_is_not_worded_as_a_rejection(
    gateway: GatewayServer, scripted_server: ScriptedServer, route: str
) -> None:
    scripted_server.handler = lambda body: RawStream(["this is not json", "[DONE]"])
    r = _call(gateway, route)
    assert r.status_code == 502, r.text
    message = r.json()["error"]["message"]
    assert "rejected" not in message and "refused" not in message
    assert "could not be used" in message and "retry" in message
    _assert_public(r.text, scripted_server)
    r = _call(gateway, route, stream=True)  # the stream's error event: the same words
    assert r.status_code == 200 and "could not be used" in r.text, r.text
    _assert_public(r.text, scripted_server)


@pytest.mark.parametrize("stream", [False, True])
def test_solve_shows_a_failed_run_without_internal_text(
    gateway: GatewayServer, scripted_server: ScriptedServer, stream: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """/v1/solve answers a run the model server failed with 200 and finish_reason 'error':
    its `error` says what happened in public words (the full text is logged)."""
    scripted_server.handler = lambda body: RawStream([{"choices": []}, "[DONE]"])
    with caplog.at_level(logging.WARNING, logger="distillery.upstream"):
        r = httpx.post(gateway.url + "/v1/solve", timeout=60,
                       json={"question": "What is 6 * 7?", "stream": stream})
    assert r.status_code == 200, r.text
    _assert_public(r.text, scripted_server)
    assert "could not be used" in r.text
    logged = [rec.getMessage() for rec in caplog.records if rec.name == "distillery.upstream"]
    assert any(scripted_server.url in m for m in logged), logged
