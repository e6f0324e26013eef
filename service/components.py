"""Build the runtime pieces (model client, executor, retriever, per-run tools) from Settings.

The one place that maps configuration to implementations; the CLI and the HTTP app share it.
Imports are lazy so that `distillery --help` does not load torch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.executor import Executor, ToolFn
from agent.model_client import ModelClient
from retrieval.retriever import Retriever
from service.settings import Settings

if TYPE_CHECKING:
    from agent.agent import AgentConfig

log = logging.getLogger(__name__)


class ConfigError(Exception):
    """The settings cannot be turned into working components; the message says how to fix them."""


@dataclass
class Components:
    settings: Settings
    model: ModelClient
    executor: Executor
    retriever: Retriever | None

    def tools_for_run(self) -> dict[str, ToolFn]:
        """Fresh host-side tools for one agent run (each holds its own per-run cache)."""
        if self.retriever is None:
            return {}
        from retrieval.tool import make_web_search

        return {
            "web_search": make_web_search(
                self.retriever, k=self.settings.search_k, timeout_s=self.settings.search_timeout_s
            )
        }

    async def start(self) -> None:
        """Pre-start the executor's workers (the sandbox pool) so first requests do not wait."""
        await self.executor.start()

    async def aclose(self) -> None:
        await self.model.aclose()
        await self.executor.aclose()
        if self.retriever is not None:
            await self.retriever.aclose()


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
        )
    from agent.transformers_engine import TransformersEngine

    path = settings.model_path
    if path is None:
        from agent.embedded_model import ensure_embedded_model

        path = ensure_embedded_model(settings.cache_dir)
    elif not path.is_dir():
        raise ConfigError(f"model path {path} is not a directory (expected a Hugging Face folder)")
    return TransformersEngine.from_path(
        path, model_name=settings.model, threads=settings.engine_threads
    )


def build_executor(settings: Settings) -> Executor:
    if settings.executor == "local":
        from agent.local_executor import LocalExecutor

        return LocalExecutor(step_timeout_s=settings.sandbox_step_timeout_s)
    from sandbox.config import config_from_settings
    from sandbox.executor import SandboxExecutor

    return SandboxExecutor(config_from_settings(settings))


def build_retriever(settings: Settings) -> Retriever:
    """ES when es_url is set; else the embedded index at index_dir; with no index_dir, the
    demo index under cache_dir, built (or rebuilt when stale) on first use."""
    from retrieval.factory import open_retriever

    index_dir = settings.index_dir
    if not settings.es_url:
        if index_dir is None:
            from retrieval.demo_corpus import ensure_demo_index

            index_dir = ensure_demo_index(settings.cache_dir)
        elif not index_dir.exists():
            raise ConfigError(
                f"no search index at {index_dir}: build one with `distillery index build "
                f"--corpus PATH.jsonl.gz` or set DISTILLERY_ES_URL"
            )
    key = settings.es_api_key.get_secret_value() if settings.es_api_key else None
    return open_retriever(
        es_url=settings.es_url,
        es_index=settings.es_index,
        index_dir=index_dir,
        es_api_key=key,
        timeout_s=settings.search_timeout_s,
    )


def agent_config(settings: Settings) -> AgentConfig:
    from agent.agent import AgentConfig

    return AgentConfig(
        max_steps=settings.max_steps,
        samples=settings.samples,
        policy=settings.policy,
        temperature=settings.temperature,
        top_p=settings.top_p,
        max_tokens=settings.max_tokens,
        seed=settings.seed,
        prompt=settings.prompt,
        observation_max_chars=settings.observation_max_chars,
    )


def build_components(settings: Settings, *, with_retriever: bool = True) -> Components:
    executor = build_executor(settings)
    retriever = build_retriever(settings) if with_retriever else None
    model = build_model(settings)
    return Components(settings=settings, model=model, executor=executor, retriever=retriever)
