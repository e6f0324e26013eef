"""`Runtime`: the pieces one agent run needs (model client, executor, per-run tools).

Built by the composition root (`distillery.components.build_components`) from settings and
shared by everything that runs the agent: the HTTP gateway, `distillery solve`, teacher
generation and evaluation. `tools_factory` makes fresh host-side tools for each run (a tool
may keep per-run state, e.g. web_search's cache).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from agent.executor import Executor, ToolFn
from agent.model_client import ModelClient
from retrieval.retriever import Retriever

__all__ = ["Runtime"]


def _no_tools() -> dict[str, ToolFn]:
    return {}


@dataclass
class Runtime:
    model: ModelClient
    executor: Executor
    retriever: Retriever | None = None
    """The search backend behind web_search (retrieval.Retriever), None when search is off."""
    tools_factory: Callable[[], dict[str, ToolFn]] = field(default=_no_tools)

    def tools_for_run(self) -> dict[str, ToolFn]:
        """Fresh host-side tools for one agent run (each holds its own per-run cache)."""
        return self.tools_factory()

    async def start(self) -> None:
        """Pre-start the executor's workers (the sandbox pool) so first requests do not wait."""
        await self.executor.start()

    async def aclose(self) -> None:
        await self.model.aclose()
        await self.executor.aclose()
        if self.retriever is not None:
            await self.retriever.aclose()
