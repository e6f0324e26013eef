"""Probes of a real `distillery serve`: the probe listener answers while the public one
holds its 1,024 connections (liveness 200, readiness 503 "capacity"), serves nothing but
the probes, and readiness follows the gateway's own recent model calls."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.ports import free_port
from tests.helpers.scripted_server import Error, ScriptedServer
from tests.service.conftest import final_handler
from tests.service.test_serve_lifecycle import Serve

MAX_CONNECTIONS = 1024  # the default of --max-connections


class ProbedServe(Serve):
    def __init__(self, srv: ScriptedServer, index_dir: Path, *flags: str) -> None:
        self.probe_port = free_port()
        self.probe_url = f"http://127.0.0.1:{self.probe_port}"
        super().__init__(srv, index_dir, "--probe-port", str(self.probe_port), *flags)


@pytest.fixture(scope="module")
def server(scripted_server_session: ScriptedServer, index_dir: Path) -> Iterator[ProbedServe]:
    scripted_server_session.handler = final_handler
    s = ProbedServe(scripted_server_session, index_dir, "--header-timeout-s", "300",
                    "--ready-model-failures", "3", "--ready-model-window-s", "600")
    try:
        yield s
    finally:
        s.stop()


def _refused_at_once(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port)) as c:
        c.settimeout(10)
        try:
            return c.recv(4096).startswith(b"HTTP/1.1 503")
        except TimeoutError:
            return False


def _ready(url: str) -> httpx.Response:
    return httpx.get(url + "/readyz", timeout=30)


def _wait_ready(url: str, want: int) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        r = _ready(url)
        if r.status_code == want or time.monotonic() > deadline:
            assert r.status_code == want, r.text
            return dict(r.json())
        time.sleep(0.2)


def test_probes_answer_while_the_public_listener_is_full(server: ProbedServe) -> None:
    held = []
    try:
        for _ in range(MAX_CONNECTIONS):
            c = socket.create_connection(("127.0.0.1", server.port))
            c.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # headers that never end
            held.append(c)
        deadline = time.monotonic() + 60
        while not _refused_at_once(server.port):  # the server has taken all of them
            assert time.monotonic() < deadline, "the public listener never filled up"
            time.sleep(0.2)
        with pytest.raises(httpx.HTTPError):  # the public port serves no one, probes included
            r = httpx.get(server.url + "/healthz", timeout=10)
            r.raise_for_status()
        # the probe listener: liveness is fine, readiness reports the saturation
        live = httpx.get(server.probe_url + "/healthz", timeout=30)
        assert live.status_code == 200 and live.json()["status"] == "ok"
        assert httpx.head(server.probe_url + "/healthz", timeout=30).status_code == 200
        ready = _ready(server.probe_url)
        assert ready.status_code == 503, ready.text
        capacity = ready.json()["checks"]["capacity"]
        assert capacity["ok"] is False and str(MAX_CONNECTIONS) in capacity["error"]
        assert capacity["detail"] == {"connections": MAX_CONNECTIONS,
                                      "max_connections": MAX_CONNECTIONS}
        assert ready.json()["checks"]["model"]["ok"] is True, ready.text
        assert httpx.get(server.probe_url + "/metrics", timeout=30).status_code == 200
    finally:
        for c in held:
            c.close()
    body = _wait_ready(server.probe_url, 200)  # the connections are gone: ready again
    assert body["checks"]["capacity"]["ok"] is True
    assert _ready(server.url).status_code == 200


def test_probe_listener_serves_only_the_probes(server: ProbedServe) -> None:
    for method, path in [("GET", "/v1/models"), ("POST", "/v1/solve"), ("GET", "/docs"),
                         ("GET", "/openapi.json")]:
        r = httpx.request(method, server.probe_url + path, json={"question": "q"}, timeout=30)
        assert r.status_code == 404, (path, r.text)
        err = r.json()["error"]
        assert err["code"] == "not_found" and err["request_id"] == r.headers["x-request-id"]
        assert "/healthz" in err["message"]
    assert httpx.get(server.url + "/v1/models", timeout=30).status_code == 200  # public: yes


def test_readiness_follows_recent_model_failures(
    server: ProbedServe, scripted_server_session: ScriptedServer
) -> None:
    srv = scripted_server_session
    srv.handler = lambda body: Error(400, "bad request")  # the request's fault: not counted
    for _ in range(3):
        r = httpx.post(server.url + "/v1/solve", json={"question": "q"}, timeout=60)
        assert r.status_code < 500 or r.status_code == 502, r.text
    assert _ready(server.probe_url).status_code == 200
    srv.handler = lambda body: Error(500, "engine dead")  # the server's: 3 in a row
    for i in range(3):
        r = httpx.post(server.url + "/v1/solve", json={"question": "q"}, timeout=60)
        assert r.status_code == 503, r.text
        if i < 2:
            assert _ready(server.probe_url).status_code == 200  # not yet: 2 of 3
    ready = _ready(server.probe_url)
    assert ready.status_code == 503, ready.text
    calls = ready.json()["checks"]["model_calls"]
    assert calls["ok"] is False and "last 3 model calls failed" in calls["error"]
    assert ready.json()["checks"]["model"]["ok"] is True  # /models still lists the model
    assert httpx.get(server.probe_url + "/healthz", timeout=30).status_code == 200  # alive
    srv.handler = final_handler  # one success clears it
    r = httpx.post(server.url + "/v1/solve", json={"question": "q"}, timeout=60)
    assert r.status_code == 200 and r.json()["answer"] == 42
    assert _ready(server.probe_url).status_code == 200
