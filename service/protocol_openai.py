"""OpenAI-compatible request/response models: chat completions (and chunks) and models.

Only what the gateway honours is typed strictly; fields of the OpenAI API that do not
change the meaning of the answer (service tier, reasoning effort, verbosity, caching and
safety identifiers, predictions, web search options, ...) are accepted and ignored
(documented per field); what cannot be honoured is rejected with a 400 by the serving code.
Unknown fields are rejected (400), like the OpenAI API does. Strict types, text that
encodes and visible-text rules come from `service.protocol_common.RequestModel`.
`response_format` json_schema / json_object is honoured: see `service.structured`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.protocol_common import JSON_SAFE_INT, RequestModel
from service.protocol_solve import MIN_TIMEOUT_S, StepOut, UsageOut


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    type: str = Field(description="Only 'text' parts are supported")
    text: str | None = None


class ChatMessage(BaseModel):
    # extra="allow": clients replay whole histories (tool_calls, tool_call_id, ...); only
    # the last user message is read.
    model_config = ConfigDict(extra="allow", strict=True)
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    include_usage: bool = False
    include_obfuscation: bool | None = Field(None, description="Ignored (no obfuscation)")


class ResponseFormatText(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["text"]


class ResponseFormatJSONObject(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["json_object"]


class JSONSchemaSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_-]+$")
    description: str | None = None
    schema_: dict[str, Any] | None = Field(
        None, alias="schema", description="The JSON Schema the final answer must satisfy"
    )
    strict: bool | None = Field(None, description="Answers are always validated")


class ResponseFormatJSONSchema(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["json_schema"]
    json_schema: JSONSchemaSpec


ResponseFormat = Annotated[
    ResponseFormatText | ResponseFormatJSONObject | ResponseFormatJSONSchema,
    Field(discriminator="type"),
]


class AgentExtensions(RequestModel):
    """The distillery extensions every OpenAI-style request takes (the SDK's extra_body)."""

    max_steps: int | None = Field(None, ge=1, le=50, description="Extension: agent steps")
    samples: int | None = Field(None, ge=1, le=64, description="Extension: SAG candidates")
    policy: Literal["early", "first", "majority"] | None = Field(
        None, description="Extension: SAG policy"
    )
    timeout_s: float | None = Field(
        None, ge=MIN_TIMEOUT_S, le=86400,
        description="Extension: request deadline (capped by the server)",
    )


class ChatCompletionRequest(AgentExtensions):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"model": "MODEL", "messages": [{"role": "user", "content": "2+2?"}]}]
        },
    )

    model: str = Field(min_length=1, max_length=256, description="Must be the served model id")
    messages: list[ChatMessage] = Field(
        min_length=1, max_length=512, description="The last user message is the task"
    )
    n: int = Field(1, ge=1, le=8, description="Independent agent runs, one choice each")
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="Per model call")
    top_p: float | None = Field(None, gt=0.0, le=1.0, description="Per model call")
    max_tokens: int | None = Field(None, ge=1, le=32768, description="Per model call (step)")
    max_completion_tokens: int | None = Field(None, ge=1, le=32768, description="= max_tokens")
    seed: int | None = Field(
        None, ge=-JSON_SAFE_INT, le=JSON_SAFE_INT,
        description="Choice i uses seed+i; |seed| < 2**53 (an exact JSON number)",
    )
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = Field(None, description="Accepted and ignored")
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0, description="Ignored")
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0, description="Ignored")
    user: str | None = Field(None, max_length=256, description="Ignored")
    metadata: dict[str, str] | None = Field(None, description="Ignored")
    store: bool | None = Field(None, description="Ignored")
    parallel_tool_calls: bool | None = Field(None, description="Ignored")
    logprobs: bool | None = Field(None, description="Only false is supported")
    top_logprobs: int | None = Field(None, ge=0, le=20, description="Only 0 is supported")
    logit_bias: dict[str, float] | None = Field(None, description="Only empty is supported")
    response_format: ResponseFormat | None = Field(
        None,
        description="text, json_object or json_schema: the final answer must be JSON (valid "
        "against the schema); the message content is that JSON",
    )
    tools: list[dict[str, Any]] | None = Field(
        None, description="Not supported (the agent runs its own tools; see server_tools); "
        "only empty"
    )
    server_tools: list[str] | None = Field(
        None,
        max_length=256,
        description="Which of the configured tools the run may use, by name (GET /v1/tools "
        "lists them; unknown names are a 400); default: all. The agent runs them server-side",
    )
    tool_choice: str | dict[str, Any] | None = Field(None, description="Only 'none' or 'auto'")
    functions: list[dict[str, Any]] | None = Field(None, description="Not supported")
    function_call: str | dict[str, Any] | None = Field(None, description="Not supported")
    # --- accepted and ignored: they do not change the meaning of the answer ---------------
    service_tier: str | None = Field(None, max_length=64, description="Ignored")
    reasoning_effort: str | None = Field(None, max_length=64, description="Ignored")
    verbosity: str | None = Field(None, max_length=64, description="Ignored")
    prompt_cache_key: str | None = Field(None, max_length=1024, description="Ignored")
    prompt_cache_retention: str | None = Field(None, max_length=64, description="Ignored")
    prompt_cache_options: dict[str, Any] | None = Field(None, description="Ignored")
    safety_identifier: str | None = Field(None, max_length=1024, description="Ignored")
    prediction: dict[str, Any] | None = Field(
        None, description="Ignored (a latency hint; the answer comes from the agent)"
    )
    web_search_options: dict[str, Any] | None = Field(
        None, description="Ignored (the agent searches with its own web_search tool)"
    )
    modalities: list[Literal["text", "audio"]] | None = Field(
        None, description="Only ['text'] (audio output is refused)"
    )
    audio: dict[str, Any] | None = Field(None, description="Not supported (no audio output)")
    # --- distillery extensions (send with the SDK's extra_body) -------------------------
    steps_detail: Literal["none", "kept", "all"] = Field(
        "kept",
        description="Extension: steps in the `distillery` field (non-streaming) or one chunk "
        "per step (streaming): none, kept candidate only, or all candidates",
    )


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class RunInfo(BaseModel):
    id: str
    finish_reason: Literal["answer", "max_steps", "stuck", "error", "timeout"]
    error: str | None = None
    steps_count: int
    steps: list[StepOut] | None = None


class DistilleryExtension(BaseModel):
    runs: list[RunInfo] = Field(description="One per choice, in choice order")


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: UsageOut
    system_fingerprint: str | None = None
    distillery: DistilleryExtension


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "distillery"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# --- streaming (documented in the OpenAPI schema; the server writes these as JSON directly) ---
class ChunkDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: ChunkDelta
    logprobs: None = None
    finish_reason: Literal["stop", "length"] | None = None


class ChunkStep(BaseModel):
    run_index: int = Field(description="The choice whose run took this step")
    step: StepOut


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChunkChoice]
    usage: UsageOut | None = Field(
        None, description="Only with stream_options.include_usage: null, then the last chunk's"
    )
    distillery: ChunkStep | None = Field(
        None, description="Extension, on step chunks (empty delta) unless steps_detail='none'"
    )
