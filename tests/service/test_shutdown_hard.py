"""A second SIGTERM to a real `distillery serve` ("stop at once"): runs in flight end with
the documented 503 `shutting_down` JSON body or `event: error`, a request whose body is
still arriving gets the same 503, the process exits long before the grace, and the
access log records what each client was sent."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.scripted_server import ScriptedServer
from tests.service.conftest import MODEL, sse_events
from tests.service.test_serve_lifecycle import Serve, slow_or_fast

GRACE_S = 300  # far longer than the test waits: only the second signal can end the runs


@pytest.fixture
def server(scripted_server: ScriptedServer, index_dir: Path) -> Iterator[Serve]:
    scripted_server.handler = slow_or_fast  # "slow" questions: 120 s per model call
    s = Serve(scripted_server, index_dir, "--shutdown-grace-s", str(GRACE_S),
              "--request-timeout-s", "600", "--body-timeout-s", "300")
    try:
        yield s
    finally:
        s.stop()


def _access_lines(log: str) -> list[dict[str, Any]]:
    out = []
    for line in log.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("event") == "http_request":
            out.append(rec)
    return out


def _start_clients(s: Serve, results: dict[str, Any]) -> list[threading.Thread]:
    def long_json() -> None:
        results["json"] = httpx.post(s.url + "/v1/solve", json={"question": "slow"}, timeout=200)

    def long_chat_json() -> None:
        results["chat_json"] = httpx.post(s.url + "/v1/chat/completions", timeout=200, json={
            "model": MODEL, "messages": [{"role": "user", "content": "slow"}]})

    def long_stream() -> None:
        with httpx.stream("POST", s.url + "/v1/chat/completions", timeout=200, json={
                "model": MODEL, "stream": True,
                "messages": [{"role": "user", "content": "slow"}]}) as r:
            results["chat_stream"] = (r.status_code, r.read().decode())

    def long_responses_stream() -> None:
        with httpx.stream("POST", s.url + "/v1/responses", timeout=200,
                          json={"model": MODEL, "input": "slow", "stream": True}) as r:
            results["responses_stream"] = (r.status_code, r.read().decode())

    threads = [threading.Thread(target=f) for f in
               (long_json, long_chat_json, long_stream, long_responses_stream)]
    for t in threads:
        t.start()
    return threads


def test_second_sigterm_ends_everything_at_once_with_the_documented_errors(
    server: Serve,
) -> None:
    s = server
    results: dict[str, Any] = {}
    threads = _start_clients(s, results)
    deadline = time.monotonic() + 60
    while not re.search(r"^distillery_runs_in_flight 4\.0$",
                        httpx.get(s.url + "/metrics").text, re.M):
        assert time.monotonic() < deadline, "the long runs did not start"
        time.sleep(0.1)
    # a request whose body is still arriving (no run yet, no response started)
    slow_body = socket.create_connection(("127.0.0.1", s.port))
    slow_body.sendall(b"POST /v1/solve HTTP/1.1\r\nHost: x\r\ncontent-type: application/json"
                      b"\r\nContent-Length: 100\r\n\r\n{\"question\":")
    time.sleep(0.5)
    os.kill(s.proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while httpx.get(s.url + "/readyz", timeout=10).status_code != 503:  # draining
        assert time.monotonic() < deadline
        time.sleep(0.1)
    os.kill(s.proc.pid, signal.SIGTERM)  # the second: stop at once
    for t in threads:
        t.join(timeout=120)  # hang guards only; the grace (300 s) would be far longer
    s.proc.wait(timeout=120)
    slow_body.settimeout(30)
    raw = b""
    while chunk := slow_body.recv(65536):
        raw += chunk
    slow_body.close()
    log = s.stop()
    for name in ("json", "chat_json"):
        r = results[name]
        assert r.status_code == 503 and r.headers["retry-after"], (name, r.text, log[-3000:])
        assert r.headers["content-type"].startswith("application/json")
        assert r.json()["error"]["code"] == "shutting_down"
    status, text = results["chat_stream"]
    events = sse_events(text)
    assert status == 200 and events[-1][0] == "error", text
    assert json.loads(events[-1][1])["error"]["code"] == "shutting_down"
    status, text = results["responses_stream"]
    names = [e for e, _ in sse_events(text)]
    assert status == 200 and names[-2:] == ["error", "response.failed"], text
    assert raw.startswith(b"HTTP/1.1 503") and b"shutting_down" in raw, raw
    assert b"application/json" in raw
    # the log says what was sent: 503 for the JSON answers, the stream errors, no 499
    lines = _access_lines(log)
    by_path: dict[str, list[dict[str, Any]]] = {}
    for rec in lines:
        by_path.setdefault(rec["path"], []).append(rec)
    solve = [r for r in by_path["/v1/solve"] if r["status"] == 503]
    assert len(solve) == 2, by_path["/v1/solve"]  # the run and the unfinished body
    chat = by_path["/v1/chat/completions"]
    assert sorted(r["status"] for r in chat) == [200, 503], chat
    assert [r.get("stream_error") for r in chat if r["status"] == 200] == ["shutting_down"]
    assert [r.get("stream_error") for r in by_path["/v1/responses"]] == ["shutting_down"]
    assert not [r for r in lines if r["status"] == 499], lines
    assert '"event": "drain_hurried"' in log and '"second_signal": true' in log
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log[-3000:]
