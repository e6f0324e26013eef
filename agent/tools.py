"""How tools are described to the model.

Tool names, argument names and return layouts are part of the protocol: a student
trained on these descriptions breaks if they change. The host-side implementations
live elsewhere (retrieval.tool.make_web_search); `final_answer` is built into every
execution session.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

FINAL_ANSWER = "final_answer"
WEB_SEARCH = "web_search"


@dataclass(frozen=True)
class ToolSpec:
    name: str
    signature: str
    """Python-style signature shown to the model, e.g. `web_search(query: str) -> str`."""
    description: str

    def render(self) -> str:
        return f"- {self.signature}\n    {self.description}"


KNOWN_TOOLS: dict[str, ToolSpec] = {
    WEB_SEARCH: ToolSpec(
        name=WEB_SEARCH,
        signature="web_search(query: str) -> str",
        description=(
            "Searches a Wikipedia index and returns the most relevant passages as text: "
            "'Retrieved documents:' followed by blocks '===== Document i, similarity: s =====', "
            "each with the article title in quotes and a passage. Use short, specific queries "
            "(an entity, a fact); print() the result to read it."
        ),
    ),
    FINAL_ANSWER: ToolSpec(
        name=FINAL_ANSWER,
        signature="final_answer(answer: any) -> None",
        description=(
            "Gives the final answer to the task and ends the run. Pass just the answer "
            "(a number, a name, a short phrase), not a sentence about it."
        ),
    ),
}


def tool_specs(tool_names: Iterable[str]) -> list[ToolSpec]:
    """Specs for the host tools given, then final_answer (always available), in that order.

    A tool this module does not know gets a generic description so it is at least listed.
    """
    specs: list[ToolSpec] = []
    seen: set[str] = set()
    for name in tool_names:
        if name == FINAL_ANSWER or name in seen:
            continue
        seen.add(name)
        if not name.isidentifier():
            raise ValueError(f"tool name {name!r} is not a Python identifier")
        specs.append(
            KNOWN_TOOLS.get(name)
            or ToolSpec(name, f"{name}(*args, **kwargs) -> str", "A host tool (no description).")
        )
    specs.append(KNOWN_TOOLS[FINAL_ANSWER])
    return specs


def render_tool_list(tool_names: Iterable[str]) -> str:
    return "\n".join(spec.render() for spec in tool_specs(tool_names))
