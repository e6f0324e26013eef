"""`web_search` as a tool provider: the Wikipedia search of the protocol over a Retriever.

Lists one spec, `agent.tools.KNOWN_TOOLS["web_search"]` (the text the shipped students
were trained on), and makes a fresh `retrieval.tool.make_web_search` per run (its per-run
cache). Arguments are passed through unchecked, as before: the tool answers odd ones
with a text the model was trained to read. The retriever is owned by the runtime (it
also closes it); `health` is the retriever's ping.
"""

from __future__ import annotations

from typing import Any

from agent.executor import ToolFn
from agent.tool_providers import ProvidedTool
from agent.tools import KNOWN_TOOLS, WEB_SEARCH, ToolSpec
from retrieval.retriever import Retriever
from retrieval.tool import SearchLayout, make_web_search

__all__ = ["WebSearchProvider"]


class WebSearchProvider:
    name = WEB_SEARCH

    def __init__(
        self,
        retriever: Retriever,
        *,
        k: int,
        timeout_s: float,
        layout: SearchLayout | None = None,
    ) -> None:
        self.retriever = retriever
        self.k = k
        self.timeout_s = timeout_s
        self.layout = layout or SearchLayout()

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def health(self) -> dict[str, Any]:
        return dict(await self.retriever.ping())

    def specs(self) -> list[ToolSpec]:
        return [KNOWN_TOOLS[WEB_SEARCH]]

    def tools_for_run(self) -> dict[str, ToolFn]:
        search = make_web_search(
            self.retriever, k=self.k, timeout_s=self.timeout_s, layout=self.layout
        )
        return {WEB_SEARCH: ProvidedTool(KNOWN_TOOLS[WEB_SEARCH], search, check_arguments=False)}
