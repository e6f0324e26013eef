"""`Runtime`: the pieces one agent run needs (model client, executor, tool providers).

Built by the composition root (`distillery.components.build_components`) from settings and
shared by everything that runs the agent: the HTTP gateway, `distillery solve`, teacher
generation and evaluation. The runtime owns what it starts: `start()` fills the sandbox
pool and starts the tool providers (`tools`, an agent.tool_providers.ToolSet: web_search,
MCP servers, ...), `aclose()` closes them all. `tools_for_run(names)` makes fresh host-side
tools for one run (a tool may keep per-run state, e.g. web_search's cache), all of them or
the subset a request names (unknown names raise UnknownToolsError). `tools_factory` adds
tools that no provider serves (tests, embedding code); providers win on a shared name.
`protocol` is the profile the settings select, resolved once; runs receive it as a value.
`trained_tools` are the tools the model's checkpoint was trained with (when it records
them): `start()` logs a warning naming any configured tool outside them, and /readyz
reports it (`untrained_warning()`), without failing readiness.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from agent.executor import Executor, ToolFn
from agent.model_client import ModelClient
from agent.protocol import Protocol
from agent.tool_providers import ToolSet
from retrieval.retriever import Retriever

__all__ = ["Runtime"]

log = logging.getLogger(__name__)


def _no_tools() -> dict[str, ToolFn]:
    return {}


@dataclass
class Runtime:
    model: ModelClient
    executor: Executor
    retriever: Retriever | None = None
    """The search backend behind web_search (retrieval.Retriever), None when search is off."""
    tools_factory: Callable[[], dict[str, ToolFn]] = field(default=_no_tools)
    tools: ToolSet = field(default_factory=ToolSet)
    """The tool providers this runtime starts and closes."""
    protocol: Protocol | None = None
    """The protocol profile, resolved once from the settings: runs are handed this value
    (None: each run loads the profile its AgentConfig names)."""
    trained_tools: frozenset[str] | None = None
    """The host tools the model's checkpoint was trained with (its distillery_tools.json);
    None: unknown (a base model, an older export), nothing is checked."""

    def untrained_tools(self) -> list[str]:
        """Configured tools the model was not trained with (none when that is unknown)."""
        if self.trained_tools is None:
            return []
        configured = [*self.tools.names(), *self.tools_factory()]
        return sorted({n for n in configured if n not in self.trained_tools})

    def untrained_warning(self) -> str | None:
        """What to tell an operator about untrained tools, None when there are none."""
        untrained = self.untrained_tools()
        if not untrained:
            return None
        trained = ", ".join(sorted(self.trained_tools or ())) or "none"
        return (
            f"the model was not trained with the tools {', '.join(untrained)} (trained with: "
            f"{trained}): it has never seen them and may misuse or ignore them; distil a "
            "student on these tools or configure only those it knows"
        )

    def tools_for_run(self, names: Collection[str] | None = None) -> dict[str, ToolFn]:
        """Fresh host-side tools for one agent run (each holds its own per-run cache): every
        configured tool, or only those in `names`."""
        extra = self.tools_factory()
        if names is not None:
            self.tools.check([n for n in names if n not in extra])
        provided = self.tools.tools_for_run(
            None if names is None else [n for n in names if n not in extra]
        )
        merged = {**extra, **provided}
        return merged if names is None else {k: v for k, v in merged.items() if k in names}

    async def start(self) -> None:
        """Pre-start the executor's workers (the sandbox pool) so first requests do not wait,
        and start the tool providers (a provider that cannot start raises, naming it)."""
        await self.executor.start()
        await self.tools.start()
        warning = self.untrained_warning()
        if warning is not None:
            log.warning("%s", warning)

    async def aclose(self) -> None:
        await self.tools.close()
        await self.model.aclose()
        await self.executor.aclose()
        if self.retriever is not None:
            await self.retriever.aclose()
