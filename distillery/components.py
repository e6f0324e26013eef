"""Build the runtime pieces (model client, executor, retriever, per-run tools) from Settings.

The one place that maps configuration to implementations; every command and the HTTP app
share it. Imports are lazy so that `distillery --help` does not load torch.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from agent.executor import ExecutionSession, Executor, ToolFn
from agent.model_client import ModelClient
from agent.runtime import Runtime
from distillery.settings import INTERNAL_SANDBOX_FIELDS, Settings
from retrieval.retriever import Retriever

if TYPE_CHECKING:
    from agent.protocol import Protocol
    from agent.tool_providers import ToolProvider, ToolSet
    from retrieval.tool import SearchLayout
    from sandbox.config import SandboxConfig
    from service.config import ServiceConfig

__all__ = [
    "ConfigError",
    "build_components",
    "build_executor",
    "build_judge",
    "build_model",
    "build_retriever",
    "build_tools",
    "load_settings_protocol",
    "NoExecutor",
    "service_config",
    "trained_tools",
    "web_search_tools",
]

log = logging.getLogger(__name__)


class ConfigError(Exception):
    """The settings cannot be turned into working components; the message says how to fix them."""


def build_model(settings: Settings) -> ModelClient:
    if settings.model_url:
        from agent.openai_client import OpenAIChatClient

        if not settings.model:
            raise ConfigError(
                "a model URL needs a served model name: pass --model NAME or set DISTILLERY_MODEL"
            )
        key = settings.model_api_key.get_secret_value() if settings.model_api_key else None
        return OpenAIChatClient(
            settings.model_url,
            settings.model,
            api_key=key,
            timeout_s=settings.model_timeout_s,
            retries=settings.model_retries,
            retry_after_max_s=settings.model_retry_after_max_s,
        )
    from agent import CTranslate2Engine, TransformersEngine

    path = settings.model_path
    if path is None:
        from agent.embedded_model import ensure_embedded_model

        path = ensure_embedded_model(settings.cache_dir)
    elif not path.is_dir():
        raise ConfigError(f"model path {path} is not a directory (expected a Hugging Face folder)")
    if settings.engine == "ctranslate2":
        return CTranslate2Engine.from_path(
            path, model_name=settings.model, threads=settings.engine_threads
        )
    from agent import prepare_adapter_base

    # an adapter whose base is a model this project prepares from PyPI (the committed student);
    # only this engine loads adapters, so only it pays for preparing their base
    models_dir = prepare_adapter_base(path, settings.cache_dir)
    return TransformersEngine.from_path(
        path, model_name=settings.model, threads=settings.engine_threads, models_dir=models_dir
    )


def build_judge(url: str, model: str, api_key: str | None = None) -> ModelClient:
    """An OpenAI-compatible client for an LLM judge (grading factual answers)."""
    from agent.openai_client import OpenAIChatClient

    return OpenAIChatClient(url, model, api_key=api_key)


def sandbox_config(settings: Settings, **overrides: Any) -> SandboxConfig:
    """The sandbox's plain configuration: each `sandbox_<field>` setting to its field of
    SandboxConfig, `executor` to `unjailed`; the fields operators do not set keep their
    dataclass defaults; `overrides` win. The sandbox never sees Settings."""
    from sandbox.config import SandboxConfig

    values: dict[str, Any] = {"unjailed": settings.executor == "local"}
    for f in dataclasses.fields(SandboxConfig):
        if f.name in INTERNAL_SANDBOX_FIELDS or f.name == "unjailed":
            continue
        value = getattr(settings, f"sandbox_{f.name}")
        values[f.name] = list(value) if isinstance(value, list | tuple) else value
    values.update(overrides)
    config = SandboxConfig(**values)
    config.validate()
    return config


def build_executor(settings: Settings) -> Executor:
    """nsjail sandbox; `executor=local` is the same sandbox in its unjailed mode."""
    from sandbox.executor import SandboxExecutor

    try:
        config = sandbox_config(settings)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    return SandboxExecutor(config)


def build_retriever(settings: Settings) -> Retriever:
    """ES when es_url is set; else the embedded index at index_dir; with no index_dir, the
    demo index under cache_dir, built (or rebuilt when stale) on first use. search_mode
    dense/hybrid loads the embedding model (prepared under cache_dir) on the first search."""
    from retrieval.factory import open_retriever

    index_dir = settings.index_dir
    if not settings.es_url:
        if index_dir is None:
            from retrieval.demo_corpus import ensure_demo_index

            index_dir = ensure_demo_index(settings.cache_dir)
        elif not index_dir.exists():
            raise ConfigError(
                f"no search index at {index_dir}: build one with `distillery index build "
                f"--corpus PATH.jsonl.gz --index-dir {index_dir}` or set DISTILLERY_ES_URL"
            )
    key = settings.es_api_key.get_secret_value() if settings.es_api_key else None
    return open_retriever(
        es_url=settings.es_url,
        es_index=settings.es_index,
        index_dir=index_dir,
        es_api_key=key,
        timeout_s=settings.search_timeout_s,
        mode=settings.search_mode,
        cache_dir=settings.cache_dir,
    )


def web_search_tools(
    settings: Settings, retriever: Retriever | None, layout: SearchLayout | None = None
) -> dict[str, ToolFn]:
    """Fresh host-side tools for one run: web_search over `retriever` (none without one),
    printing in `layout` (None: the layout of the settings' protocol profile)."""
    if retriever is None:
        return {}
    from agent.protocol import load_protocol
    from retrieval.tool import make_web_search

    if layout is None:
        layout = load_protocol(settings.protocol_spec()).web_search
    return {
        "web_search": make_web_search(
            retriever, k=settings.search_k, timeout_s=settings.search_timeout_s, layout=layout
        )
    }


def load_settings_protocol(settings: Settings) -> Protocol:
    """The protocol profile the settings select (see Settings.protocol_spec); a profile that
    cannot be loaded is a ConfigError saying what is wrong."""
    from agent.protocol import ProtocolError, load_protocol

    try:
        return load_protocol(settings.protocol_spec())
    except ProtocolError as e:
        raise ConfigError(f"{e} (--protocol / DISTILLERY_PROTOCOL)") from None


def build_tools(
    settings: Settings, retriever: Retriever | None, layout: SearchLayout | None = None
) -> ToolSet:
    """The tool providers of a runtime, in the order the prompt lists them: web_search over
    `retriever` (none without one), then each server of the MCP servers file (mcp_config).
    Nothing starts here: `Runtime.start()` (or `ToolSet.start()`) connects them."""
    from agent.tool_providers import ToolSet
    from agent.tool_web_search import WebSearchProvider

    if layout is None:
        layout = load_settings_protocol(settings).web_search
    providers: list[ToolProvider] = []
    if retriever is not None:
        providers.append(
            WebSearchProvider(
                retriever, k=settings.search_k, timeout_s=settings.search_timeout_s, layout=layout
            )
        )
    if settings.mcp_config is not None:
        from agent.mcp_config import McpConfigError, load_mcp_config
        from agent.mcp_provider import McpProvider

        try:
            servers = load_mcp_config(settings.mcp_config)
        except McpConfigError as e:
            raise ConfigError(f"{e} (--mcp-config / DISTILLERY_MCP_CONFIG)") from None
        if servers and importlib.util.find_spec("mcp") is None:
            raise ConfigError(
                "MCP servers need the mcp SDK: pip install 'distillery[tools]' "
                "(or drop --mcp-config / DISTILLERY_MCP_CONFIG)"
            )
        providers.extend(McpProvider(server) for server in servers)
    return ToolSet(providers)


def build_components(
    settings: Settings, *, with_retriever: bool = True, with_executor: bool = True
) -> Runtime:
    """Model, executor (unless disabled: chain-of-thought runs no code), retriever and the
    tool providers (started by `Runtime.start()`)."""
    profile = load_settings_protocol(settings)  # resolved once; a bad profile fails first
    executor: Executor = build_executor(settings) if with_executor else NoExecutor()
    retriever = build_retriever(settings) if with_retriever else None
    tools = build_tools(settings, retriever, profile.web_search)  # bad MCP file: fails early
    model = build_model(settings)
    return Runtime(model=model, executor=executor, retriever=retriever, tools=tools,
                   protocol=profile, trained_tools=trained_tools(settings))


def trained_tools(settings: Settings) -> frozenset[str] | None:
    """The tools the checkpoint in use was trained with: the distillery_tools.json beside
    the protocol profile the settings resolve to (an exported checkpoint folder); None when
    there is none. A bad file is a ConfigError."""
    from agent.tools import read_trained_tools

    try:
        specs = read_trained_tools(settings.protocol_spec())
    except ValueError as e:
        raise ConfigError(f"{e} (the checkpoint's tools; export it again)") from None
    return None if specs is None else frozenset(spec.name for spec in specs)


class NoExecutor:
    """Runs no code (CoT generation): an executor that refuses to open sessions."""

    async def start(self) -> None:
        return None

    async def open_session(self, tools: Mapping[str, ToolFn]) -> ExecutionSession:
        raise RuntimeError("this run executes no code (chain-of-thought mode)")

    async def aclose(self) -> None:
        return None


def service_config(settings: Settings) -> ServiceConfig:
    """The gateway's plain configuration (service/ never reads Settings)."""
    from service.config import ServiceConfig

    return ServiceConfig(
        max_concurrency=settings.max_concurrency,
        max_queue=settings.max_queue,
        request_timeout_s=settings.request_timeout_s,
        max_body_bytes=settings.max_body_bytes,
        api_keys=[k.get_secret_value() for k in settings.api_keys if k.get_secret_value()],
        agent=settings.agent_config(),
        model_name=settings.model,
        model_api_key=(
            settings.model_api_key.get_secret_value() if settings.model_api_key else None
        ),
        model_timeout_s=settings.model_timeout_s,
        host=settings.host,
        port=settings.port,
        shutdown_grace_s=settings.shutdown_grace_s,
        answer_check_timeout_s=settings.answer_check_timeout_s,
        answer_check_workers=settings.answer_check_workers,
        body_timeout_s=settings.body_timeout_s,
        probe_port=settings.probe_port,
        ready_model_failures=settings.ready_model_failures,
        ready_model_window_s=settings.ready_model_window_s,
    )
