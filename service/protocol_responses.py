"""Request/response models of the OpenAI Responses API (`POST /v1/responses`) over the agent.

The task is the last user message of `input` (a string is one user message). What the
agent honours: `model`, `input`, `stream`, `temperature`, `top_p`, `max_output_tokens`
(per model call), `text.format` (text, json_object, json_schema: see
`service.structured`). Accepted and ignored, as they do not change the meaning of the
answer: `instructions` and system/developer messages (the agent has its own prompt, as
in chat), `store` (nothing is stored), `metadata`, `user`, `include`, `reasoning`,
`truncation`, `service_tier`, `prompt_cache_key`, `prompt_cache_retention`,
`safety_identifier`, `parallel_tool_calls`, `max_tool_calls`, `stream_options`,
`text.verbosity`. Refused with a 400: `tools` (the agent brings its own),
`previous_response_id` / `conversation` (responses are not stored), `background`,
`prompt`, `top_logprobs` > 0. Extensions (the SDK's `extra_body`): `max_steps`,
`samples`, `policy`, `timeout_s`, `steps_detail`; the response carries the run's steps
in `distillery`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.protocol_openai import AgentExtensions, RunInfo

__all__ = [
    "ResponseObject",
    "ResponsesRequest",
]


class InputContentPart(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    type: str = Field(description="input_text / output_text are read; others are refused")
    text: str | None = None


class InputMessage(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    type: Literal["message"] | None = None
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[InputContentPart]


class InputOtherItem(BaseModel):
    """Any other input item (function call outputs, reasoning, ...): replayed history."""

    model_config = ConfigDict(extra="allow", strict=True)
    type: str


class TextFormatText(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["text"]


class TextFormatJSONObject(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["json_object"]


class TextFormatJSONSchema(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["json_schema"]
    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_-]+$")
    schema_: dict[str, Any] = Field(alias="schema")
    description: str | None = None
    strict: bool | None = None


TextFormat = Annotated[
    TextFormatText | TextFormatJSONObject | TextFormatJSONSchema, Field(discriminator="type")
]


class TextConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    format: TextFormat | None = None
    verbosity: str | None = Field(None, max_length=64, description="Ignored")


class ResponsesRequest(AgentExtensions):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"model": "MODEL", "input": "What is 17 * 23?"}]},
    )

    model: str = Field(min_length=1, max_length=256, description="Must be the served model id")
    input: str | list[InputMessage | InputOtherItem] = Field(
        description="The task: a string, or items whose last user message is the task"
    )
    stream: bool | None = False
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="Per model call")
    top_p: float | None = Field(None, gt=0.0, le=1.0, description="Per model call")
    max_output_tokens: int | None = Field(None, ge=1, le=32768, description="Per model call")
    text: TextConfig | None = None
    tools: list[dict[str, Any]] | None = Field(
        None, description="Only empty (the agent runs its own tools; see server_tools)"
    )
    server_tools: list[str] | None = Field(
        None,
        max_length=256,
        description="Which of the configured tools the run may use, by name (GET /v1/tools "
        "lists them; unknown names are a 400); default: all. The agent runs them server-side",
    )
    tool_choice: str | dict[str, Any] | None = Field(None, description="Only 'none' or 'auto'")
    previous_response_id: str | None = Field(None, description="Not supported (no storage)")
    conversation: str | dict[str, Any] | None = Field(None, description="Not supported")
    background: bool | None = Field(None, description="Only false")
    prompt: dict[str, Any] | None = Field(None, description="Not supported")
    top_logprobs: int | None = Field(None, ge=0, le=20, description="Only 0")
    # accepted and ignored
    instructions: str | None = Field(None, description="Ignored (the agent's own prompt)")
    store: bool | None = Field(None, description="Ignored: nothing is stored")
    metadata: dict[str, str] | None = Field(None, description="Ignored")
    user: str | None = Field(None, max_length=256, description="Ignored")
    include: list[str] | None = Field(None, description="Ignored")
    reasoning: dict[str, Any] | None = Field(None, description="Ignored")
    truncation: str | None = Field(None, max_length=64, description="Ignored")
    service_tier: str | None = Field(None, max_length=64, description="Ignored")
    prompt_cache_key: str | None = Field(None, max_length=1024, description="Ignored")
    prompt_cache_retention: str | None = Field(None, max_length=64, description="Ignored")
    safety_identifier: str | None = Field(None, max_length=1024, description="Ignored")
    parallel_tool_calls: bool | None = Field(None, description="Ignored")
    max_tool_calls: int | None = Field(None, ge=0, description="Ignored")
    stream_options: dict[str, Any] | None = Field(None, description="Ignored")
    # --- distillery extensions ---------------------------------------------------------
    steps_detail: Literal["none", "kept", "all"] = Field(
        "kept",
        description="Extension: the run's steps in the `distillery` field: none, the kept "
        "candidate only, or all candidates (streaming: `response.distillery.step` events)",
    )


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)
    logprobs: list[Any] = Field(default_factory=list)


class OutputMessage(BaseModel):
    type: Literal["message"] = "message"
    id: str
    status: Literal["in_progress", "completed", "incomplete"]
    role: Literal["assistant"] = "assistant"
    content: list[OutputText]


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int


class ResponseErrorInfo(BaseModel):
    code: str
    message: str


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens"] = "max_output_tokens"


class ResponseExtension(BaseModel):
    run: RunInfo


class ResponseObject(BaseModel):
    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["in_progress", "completed", "incomplete", "failed"]
    error: ResponseErrorInfo | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    model: str
    output: list[OutputMessage]
    parallel_tool_calls: bool = False
    previous_response_id: None = None
    reasoning: dict[str, Any] = Field(default_factory=lambda: {"effort": None, "summary": None})
    store: bool = False
    temperature: float | None = None
    text: dict[str, Any] = Field(default_factory=lambda: {"format": {"type": "text"}})
    tool_choice: str = "auto"
    tools: list[Any] = Field(default_factory=list)
    top_p: float | None = None
    truncation: str = "disabled"
    usage: ResponseUsage | None = None
    user: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    distillery: ResponseExtension | None = Field(
        None, description="Extension: the agent run behind the response, with its steps"
    )
