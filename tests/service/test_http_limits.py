"""A real `distillery serve` against hostile HTTP: oversized and never-finished headers and
trailers (431 before authentication, memory bounded), requests the HTTP parser refuses
(the JSON error shape with a request id, never uvicorn's text/plain), HEAD on the probes."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers.scripted_server import ScriptedServer
from tests.service.conftest import final_handler
from tests.service.test_serve_lifecycle import Serve

KEY = "limits-key"
LIMIT = 32 * 1024  # the documented default of --max-header-bytes


@pytest.fixture(scope="module")
def server(scripted_server_session: ScriptedServer, index_dir: Path) -> Iterator[Serve]:
    scripted_server_session.handler = final_handler
    s = Serve(scripted_server_session, index_dir, "--api-key", KEY, "--header-timeout-s", "20")
    try:
        yield s
    finally:
        s.stop()


def raw_exchange(port: int, data: bytes, timeout_s: float = 20.0) -> bytes:
    """Send `data` on a fresh connection; everything the server answers until it closes."""
    with socket.create_connection(("127.0.0.1", port)) as c:
        c.settimeout(timeout_s)
        try:
            c.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        out = b""
        try:
            while chunk := c.recv(65536):
                out += chunk
        except ConnectionResetError:
            pass
        except TimeoutError:
            raise AssertionError(f"the server kept the connection open; got {out!r}") from None
        return out


def parse_raw(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return status, headers, body


def assert_json_error(status: int, headers: dict[str, str], body: bytes, want: int) -> dict:
    assert status == want, body
    assert headers["content-type"].startswith("application/json"), headers
    err = json.loads(body)["error"]
    assert set(err) == {"message", "type", "code", "param", "request_id"}
    assert err["request_id"] and err["request_id"] == headers["x-request-id"]
    return dict(err)


def test_huge_header_is_431_before_authentication(server: Serve) -> None:
    r = httpx.post(server.url + "/v1/solve", json={"question": "q"},
                   headers={"x-big": "a" * 1_000_000}, timeout=30)  # and no API key
    err = assert_json_error(r.status_code, dict(r.headers), r.content, 431)
    assert err["code"] == "headers_too_large" and str(LIMIT) in err["message"]
    # just under the limit is served, and a body far over it is not a header
    r = httpx.get(server.url + "/healthz", headers={"x-big": "a" * (LIMIT - 2048)})
    assert r.status_code == 200
    r = httpx.post(server.url + "/v1/solve", content=json.dumps(
        {"question": "square 3", "pad": "x" * 300_000}), timeout=60,
        headers={"content-type": "application/json", "authorization": f"Bearer {KEY}"})
    assert r.status_code != 431 and r.status_code < 500, r.text


def test_many_headers_and_long_url_count_too(server: Serve) -> None:
    many = b"".join(b"x-h%d: %s\r\n" % (i, b"v" * 60) for i in range(1000))
    status, headers, body = parse_raw(raw_exchange(
        server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n"))
    assert_json_error(status, headers, body, 431)
    status, headers, body = parse_raw(raw_exchange(
        server.port, b"GET /healthz?" + b"q" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert_json_error(status, headers, body, 431)


def test_keep_alive_and_pipelined_requests_still_work(server: Serve) -> None:
    one = b"GET /healthz HTTP/1.1\r\nHost: x\r\nx-pad: " + b"p" * (LIMIT // 2) + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port)) as c:
        c.settimeout(20)
        c.sendall(one * 3 + b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        out = b""
        while chunk := c.recv(65536):
            out += chunk
    assert out.count(b"HTTP/1.1 200 OK") == 4, out


def test_chunked_bodies_with_many_chunks_and_small_trailers_pass(server: Serve) -> None:
    body = json.dumps({"question": "square 3", "pad": "x" * 200_000}).encode()
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 10]), body[i:i + 10])
                      for i in range(0, len(body), 10))  # 20,000 chunks: 100 KB of framing
    head = (b"POST /v1/solve HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
            b"authorization: Bearer " + KEY.encode() + b"\r\nConnection: close\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    status, _, _ = parse_raw(raw_exchange(
        server.port, head + chunks + b"0\r\nX-Checksum: abc\r\n\r\n", timeout_s=60))
    assert status != 431 and status < 500, status


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


_TRAILER = (b"POST /v1/solve HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n%s"
            b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\nX-Endless: ")
ENDLESS = {
    "header": b"POST /v1/solve HTTP/1.1\r\nHost: x\r\nX-Endless: ",
    # authenticated: the app reads the body, so the trailers are what the server refuses
    "trailer": _TRAILER % (b"authorization: Bearer " + KEY.encode() + b"\r\n"),
    # no key: the app answers 401 without reading the body; one answer only
    "trailer-unauthenticated": _TRAILER % b"",
}
ANSWER = {"header": (b"HTTP/1.1 431",), "trailer": (b"HTTP/1.1 431",),
          # whichever comes first: the app's 401 or the protocol's 431 (never both)
          "trailer-unauthenticated": (b"HTTP/1.1 401", b"HTTP/1.1 431")}


@pytest.mark.parametrize("where", sorted(ENDLESS))
def test_never_finished_big_headers_do_not_grow_memory(server: Serve, where: str) -> None:
    """16 connections each stream 4 MB of one header (or trailer) field that never ends
    (64 MB in all)."""
    pid = server.proc.pid
    for _ in range(3):  # warm the paths once so first-use allocations are not counted
        httpx.get(server.url + "/healthz", headers={"x-big": "a" * 100_000})
    before = _rss_kib(pid)
    peak = [before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_kib(pid))
            time.sleep(0.01)

    answers: list[bytes] = []

    def attacker() -> None:
        head = ENDLESS[where]
        with socket.create_connection(("127.0.0.1", server.port)) as c:
            c.settimeout(30)
            got: list[bytes] = []

            def read() -> None:  # read while sending: the 431 comes after the first 32 KiB,
                try:  # and a reset that follows it may drop unread bytes on a slow machine
                    while chunk := c.recv(65536):
                        got.append(chunk)
                except (ConnectionResetError, TimeoutError, OSError):
                    pass

            reader = threading.Thread(target=read)
            reader.start()
            try:
                c.sendall(head)
                for _ in range(64):
                    c.sendall(b"a" * 65536)
            except (BrokenPipeError, ConnectionResetError, OSError):
                pass
            reader.join(timeout=60)
            answers.append(b"".join(got))

    sampler = threading.Thread(target=sample)
    sampler.start()
    threads = [threading.Thread(target=attacker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    stop.set()
    sampler.join()
    growth_mib = (peak[0] - before) / 1024
    print(f"RSS before {before / 1024:.1f} MiB, peak {peak[0] / 1024:.1f} MiB "
          f"(+{growth_mib:.1f} MiB) with 16 x 4 MB never-finished {where}s")
    assert growth_mib < 16, growth_mib  # 64 MB sent; without the limit it is all kept
    assert len(answers) == 16
    for a in answers:
        assert a.startswith(ANSWER[where]), a[:200]
        assert a.count(b"HTTP/1.1 ") == 1, a  # one request, one answer
    assert httpx.get(server.url + "/healthz").status_code == 200


def test_deep_pipelining_is_cut_and_does_not_grow_memory(server: Serve) -> None:
    """16 connections each pipeline 8,000 requests without reading an answer (each parsed
    request waiting its turn costs ~2 KB for 35 bytes sent: +215 MiB before the bound)."""
    pid = server.proc.pid
    before = _rss_kib(pid)
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    conns = []
    for _ in range(16):
        c = socket.create_connection(("127.0.0.1", server.port))
        c.setblocking(False)
        try:
            c.send(request * 8000)
        except BlockingIOError:
            pass
        conns.append(c)
    answers = []
    for c in conns:  # the server closes each one after the bound; none is left hanging
        c.setblocking(True)
        c.settimeout(30)
        out = b""
        try:
            while chunk := c.recv(65536):
                out += chunk
        except ConnectionResetError:
            pass
        answers.append(out.count(b"HTTP/1.1 200 OK"))
        c.close()
    growth_mib = (_rss_kib(pid) - before) / 1024
    print(f"pipelining: answers per connection {sorted(set(answers))}, RSS +{growth_mib:.1f} MiB")
    assert growth_mib < 16, growth_mib
    assert max(answers) < 100, answers  # cut after the bound (32 waiting), not all 8,000
    assert httpx.get(server.url + "/healthz").status_code == 200


MALFORMED = {
    "duplicate content-length":
        b"POST /v1/solve HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    "bad content-length": b"POST /v1/solve HTTP/1.1\r\nHost: x\r\nContent-Length: 2x\r\n\r\n{}",
    "negative content-length":
        b"POST /v1/solve HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n{}",
    "chunked plus content-length": b"POST /v1/solve HTTP/1.1\r\nHost: x\r\nContent-Length: 5"
        b"\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "obs-fold": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n",
    "NUL in a header": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
    "bare LF": b"GET /healthz HTTP/1.1\nHost: x\n\n",
    "bare LF in a header": b"GET /healthz HTTP/1.1\r\nHost: x\nX-A: b\r\n\r\n",
    "space before colon": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A : b\r\n\r\n",
    "bad chunk size": b"POST /v1/solve HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked"
        b"\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    "garbage request line": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
    "HTTP/2 preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_parser_refusals_use_the_json_error_shape(server: Serve, name: str) -> None:
    answer = raw_exchange(server.port, MALFORMED[name])
    status, headers, body = parse_raw(answer)
    err = assert_json_error(status, headers, body, 400)
    assert b"Invalid HTTP request received" not in answer
    if name == "HTTP/2 preface":
        assert err["code"] == "http2_not_supported"
    else:
        assert err["code"] == "malformed_request" and "HTTP/1.1" in err["message"]


def test_head_on_probes(server: Serve) -> None:
    for path in ("/healthz", "/readyz"):
        r = httpx.head(server.url + path, timeout=30)
        assert r.status_code == 200 and r.content == b"", (path, r.status_code)
        assert r.headers["x-request-id"]
