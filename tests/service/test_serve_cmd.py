"""`distillery serve` as a user runs it: a real process, flags and DISTILLERY_* variables."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.helpers.ports import free_port
from tests.helpers.scripted_server import ScriptedServer
from tests.service.conftest import MODEL, executor_kind, final_handler

REPO = Path(__file__).resolve().parents[2]


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"distillery serve exited with {proc.returncode}"
        try:
            if httpx.get(url + "/readyz", timeout=10).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("distillery serve did not become ready")


def test_serve_with_two_workers_flags_and_env(
    scripted_server: ScriptedServer, index_dir: Path
) -> None:
    scripted_server.handler = final_handler
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "DISTILLERY_INDEX_DIR": str(index_dir),  # from the environment...
        "DISTILLERY_SAMPLES": "3",
        "DISTILLERY_SANDBOX_POOL_SIZE": "0",
        "DISTILLERY_MAX_STEPS": "9",
    }
    cmd = [
        sys.executable, "-m", "distillery.cli", "serve", "--port", str(port), "--workers", "2",
        "--model-url", scripted_server.url, "--model", MODEL, "--executor", executor_kind(),
        "--api-key", "k1", "--api-key", "k2", "--max-steps", "2",  # ...and from flags
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_ready(url, proc)
        assert httpx.post(url + "/v1/solve", json={"question": "q"}).status_code == 401
        for key in ("k1", "k2"):  # both keys reach every worker (exported as JSON)
            r = httpx.post(url + "/v1/solve", json={"question": "q"},
                           headers={"Authorization": f"Bearer {key}"}, timeout=60)
            assert r.status_code == 200, r.text
            assert r.json()["answer"] == 42
        reqs = scripted_server.chat_requests
        assert [q["n"] for q in reqs] == [3, 3]  # DISTILLERY_SAMPLES
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            _, err = proc.communicate()
    assert proc.returncode == 0, err.decode()[-2000:]
    # structured logs: JSON lines with request ids
    lines = [ln for ln in err.decode().splitlines() if '"event": "http_request"' in ln]
    assert lines and all('"request_id"' in ln for ln in lines)


def test_serve_rejects_bad_flags() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "distillery.cli", "serve", "--max-concurrency", "0"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 2
    assert "max_concurrency" in r.stderr
