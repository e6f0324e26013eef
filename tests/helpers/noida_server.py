"""Start a real ES-API server (noida-db's bundled binary) for tests and benchmarks.

    with noida_server(tmp_dir) as server:
        retriever = ElasticRetriever(server.url, "wiki")

The binary is started directly (the `noida-db` wrapper script's PID does not own the
server), on a free port with a private data folder, and is always stopped (SIGTERM, then
SIGKILL) when the context exits, also on failure. noida-db speaks the Elasticsearch 8.15
API with Lucene's BM25, but scans every document per query: keep corpora small.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import httpx

from tests.helpers.ports import free_port


class NoidaStartError(RuntimeError):
    """The server did not become ready; the message holds its log tail."""


@dataclass
class NoidaServer:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path


def noida_binary() -> Path:
    path = Path(str(files("noida_db").joinpath("noida-db")))
    if not path.is_file():
        raise NoidaStartError(f"noida-db binary missing at {path}: run `make install-dev`")
    path.chmod(0o755)
    return path


@contextlib.contextmanager
def noida_server(data_dir: Path, *, startup_timeout_s: float = 30.0) -> Iterator[NoidaServer]:
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "noida.log"
    port = free_port()
    cmd = [
        str(noida_binary()),
        "start",
        "--only",
        "elasticsearch",
        "--elasticsearch-port",
        str(port),
        "--data-dir",
        str(data_dir / "data"),
    ]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_timeout_s
        while True:
            if proc.poll() is not None:
                raise NoidaStartError(
                    f"noida-db exited ({proc.returncode}): {log_path.read_text()}"
                )
            try:
                if httpx.get(url, timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise NoidaStartError(
                    f"noida-db not ready in {startup_timeout_s} s: {log_path.read_text()[-2000:]}"
                )
            time.sleep(0.1)
        yield NoidaServer(url, proc, log_path)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
