"""Routes of the tool listing: `GET /v1/tools`.

The tools this gateway's agent calls server-side, from inside its jailed code: web_search
and every tool of the configured MCP servers, each with its Python signature (as the
prompt shows it), description, JSON schema of the arguments, result schema (null: text)
and provider. A request to /v1/solve (`tools`) or to chat and responses (`server_tools`)
may name a subset of these. This is not OpenAI function calling: a client's own `tools`
are refused there, since the agent runs its tools itself.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from service.errors import error_responses

router = APIRouter(tags=["agent"])


class ToolOut(BaseModel):
    name: str = Field(description="What the agent's code calls (a Python identifier)")
    signature: str = Field(description="As the prompt shows it, e.g. `add(a: int, b: int) -> int`")
    description: str
    parameters: dict[str, Any] = Field(description="JSON schema of the keyword arguments")
    returns: dict[str, Any] | None = Field(
        None, description="JSON schema of the structured result; null: the tool returns text"
    )
    provider: str = Field(description="`web_search`, or `mcp:<server>` from the MCP servers file")


class ToolList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ToolOut]


@router.get(
    "/v1/tools",
    response_model=ToolList,
    summary="The tools the agent runs server-side (a request may choose a subset by name)",
    responses=error_responses(503),
)
async def list_tools(request: Request) -> ToolList:
    components = request.app.state.gateway.require_components()
    return ToolList(data=[ToolOut(**spec.to_json()) for spec in components.tools.specs()])
