"""A real `distillery serve` process: SIGTERM with long runs in flight (drain, grace,
503 / `event: error` for the rest) and slowloris clients (header and body read timeouts,
the connection bound, descriptors stay bounded)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.ports import free_port
from tests.helpers.scripted_server import Reply, ScriptedServer
from tests.service.conftest import MODEL, executor_kind, one_valid, reply, sse_events

REPO = Path(__file__).resolve().parents[2]


def slow_or_fast(body: dict[str, Any]) -> Any:
    """'slow' tasks take two minutes per model call, 'brief' ones a second; others none."""
    task = json.dumps(body["messages"])
    delay = 120.0 if "slow" in task else (1.0 if "brief" in task else 0.0)
    return Reply(one_valid(body, reply("final_answer(42)")), delay_s=delay)


class Serve:
    def __init__(self, srv: ScriptedServer, index_dir: Path, *flags: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "distillery.cli", "serve", "--port", str(self.port),
               "--model-url", srv.url, "--model", MODEL, "--executor", executor_kind(),
               "--model-retries", "0", "--sandbox-pool-size", "0", *flags]
        env = {**os.environ, "DISTILLERY_INDEX_DIR": str(index_dir)}
        self.log = tempfile.TemporaryFile()  # a file, not a pipe: a full pipe blocks the server
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True,
                                     stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.stop()
            try:
                if httpx.get(self.url + "/readyz", timeout=10).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError("distillery serve did not become ready")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def stop(self) -> str:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.log.seek(0)
        return self.log.read().decode(errors="replace")


@pytest.fixture
def lifecycle_server(scripted_server: ScriptedServer, index_dir: Path) -> Iterator[Serve]:
    scripted_server.handler = slow_or_fast
    s = Serve(scripted_server, index_dir, "--shutdown-grace-s", "20", "--header-timeout-s", "1",
              "--body-timeout-s", "1", "--max-connections", "40", "--request-timeout-s", "200")
    try:
        yield s
    finally:
        s.stop()


def test_sigterm_drains_then_ends_long_runs_with_503(lifecycle_server: Serve) -> None:
    s = lifecycle_server
    results: dict[str, Any] = {}

    def long_json() -> None:
        results["json"] = httpx.post(s.url + "/v1/solve", json={"question": "slow"}, timeout=200)

    def long_stream() -> None:
        with httpx.stream("POST", s.url + "/v1/chat/completions", timeout=200, json={
                "model": MODEL, "stream": True,
                "messages": [{"role": "user", "content": "slow"}]}) as r:
            results["chat_stream"] = (r.status_code, r.read().decode())

    def long_solve_stream() -> None:
        with httpx.stream("POST", s.url + "/v1/solve", timeout=200,
                          json={"question": "slow", "stream": True}) as r:
            results["solve_stream"] = (r.status_code, r.read().decode())

    def long_responses_stream() -> None:
        with httpx.stream("POST", s.url + "/v1/responses", timeout=200,
                          json={"model": MODEL, "input": "slow", "stream": True}) as r:
            results["responses_stream"] = (r.status_code, r.read().decode())

    def brief() -> None:  # finishes within the grace
        results["brief"] = httpx.post(s.url + "/v1/solve", json={"question": "brief"},
                                      timeout=200)

    threads = [threading.Thread(target=f) for f in
               (long_json, long_stream, long_solve_stream, long_responses_stream)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # every long run is in flight
        m = httpx.get(s.url + "/metrics").text
        if re.search(r"^distillery_runs_in_flight 4\.0$", m, re.M):
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the long runs did not start")
    t_brief = threading.Thread(target=brief)
    t_brief.start()
    while time.monotonic() < deadline:  # ... and the brief one too
        m = httpx.get(s.url + "/metrics").text
        if re.search(r"^distillery_runs_in_flight 5\.0$", m, re.M):
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the brief run did not start")
    t_term = time.monotonic()
    os.kill(s.proc.pid, signal.SIGTERM)
    time.sleep(0.5)
    # draining: new work is refused with the documented shape, readiness says so
    r = httpx.post(s.url + "/v1/solve", json={"question": "q"}, timeout=10)
    assert r.status_code == 503 and r.headers["retry-after"]
    assert r.json()["error"]["code"] == "shutting_down"
    ready = httpx.get(s.url + "/readyz", timeout=10)
    assert ready.status_code == 503 and "shutdown" in ready.json()["checks"]
    for t in [*threads, t_brief]:
        t.join(timeout=60)
    s.proc.wait(timeout=30)
    elapsed = time.monotonic() - t_term
    log = s.stop()
    assert results["brief"].status_code == 200, log[-3000:]  # finished within the grace
    assert results["brief"].json()["answer"] == 42
    plain = results["json"]
    assert plain.status_code == 503 and plain.headers["retry-after"], plain.text
    assert plain.json()["error"]["code"] == "shutting_down"
    status, text = results["chat_stream"]
    events = sse_events(text)
    assert status == 200 and events[-1][0] == "error", text
    assert json.loads(events[-1][1])["error"]["code"] == "shutting_down"
    status, text = results["solve_stream"]
    events = sse_events(text)
    assert status == 200 and events[-1][0] == "error", text
    assert json.loads(events[-1][1])["error"]["code"] == "shutting_down"
    status, text = results["responses_stream"]
    names = [e for e, _ in sse_events(text)]
    assert status == 200 and names[-2:] == ["error", "response.failed"], text
    assert json.loads(sse_events(text)[-2][1])["code"] == "shutting_down"
    assert elapsed < 100  # grace 20 s + flush: the 120 s model replies were not awaited
    assert "Traceback" not in log and "CancelledError" not in log, log[-3000:]
    assert '"event": "drain_aborted"' in log


def _wait_closed(sock: socket.socket, timeout_s: float) -> bytes:
    sock.settimeout(timeout_s)
    data = b""
    try:
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                return data
            data += chunk
    except TimeoutError:
        raise AssertionError(f"the server kept the connection open; got {data!r}") from None
    except ConnectionResetError:
        return data


def test_slowloris_connections_are_closed_and_bounded(lifecycle_server: Serve) -> None:
    s = lifecycle_server
    baseline = s.fds()
    socks = []
    for i in range(30):
        c = socket.create_connection(("127.0.0.1", s.port))
        if i % 3 == 0:
            c.sendall(b"POST /v1/solve HTTP/1.1\r\nHost: x\r\n")  # headers never end
        elif i % 3 == 1:  # a body that never completes
            c.sendall(b"POST /v1/solve HTTP/1.1\r\nHost: x\r\ncontent-type: application/json"
                      b"\r\nContent-Length: 500\r\n\r\n{\"question\":")
        socks.append(c)  # i % 3 == 2: connects and sends nothing
    answers = [_wait_closed(c, 20) for c in socks]  # header/body timeouts are 1 s
    for i, a in enumerate(answers):
        if i % 3 == 1:
            assert a.startswith(b"HTTP/1.1 408") and b"body_timeout" in a, a
        else:
            assert a == b"" or a.startswith(b"HTTP/1.1 408"), a
    for c in socks:
        c.close()
    deadline = time.monotonic() + 20
    while s.fds() > baseline + 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert s.fds() <= baseline + 3
    assert httpx.get(s.url + "/healthz").status_code == 200  # still serving


def test_keep_alive_then_slow_headers(lifecycle_server: Serve) -> None:
    s = lifecycle_server
    c = socket.create_connection(("127.0.0.1", s.port))
    c.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    c.settimeout(10)
    first = c.recv(4096)
    assert first.startswith(b"HTTP/1.1 200")
    c.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # the next request stalls
    rest = _wait_closed(c, 20)  # (what is left of the first response, then the 408)
    assert b"HTTP/1.1 408" in rest and b"header_timeout" in rest
    c.close()


def test_connections_past_the_bound_are_refused_at_once(
    scripted_server: ScriptedServer, index_dir: Path
) -> None:
    s = Serve(scripted_server, index_dir, "--max-connections", "10", "--header-timeout-s", "120")
    try:
        held = [socket.create_connection(("127.0.0.1", s.port)) for _ in range(10)]
        time.sleep(0.5)
        extra = [socket.create_connection(("127.0.0.1", s.port)) for _ in range(5)]
        for c in extra:
            answer = _wait_closed(c, 20)
            assert answer.startswith(b"HTTP/1.1 503") and b"too_many_connections" in answer
            c.close()
        held[0].setblocking(False)
        with pytest.raises(BlockingIOError):  # the held ones are still open, waiting
            held[0].recv(1)
        for c in held:
            c.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # closing them frees the slots
            try:
                if httpx.get(s.url + "/healthz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            raise AssertionError("the server did not accept connections again")
    finally:
        s.stop()
