"""Schema documentation that FastAPI cannot derive: the server-sent events of both APIs.

Each `text/event-stream` response documents one event (the OpenAPI 3.2 convention that
schemathesis validates): `data` is a JSON string whose `contentSchema` names the model.
Models used only inside events are added to components/schemas here.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from service.errors import ErrorResponse
from service.protocol_openai import ChatCompletionChunk
from service.protocol_solve import SolveResponse, SolveStart, StepOut

REF = "#/components/schemas/{model}"
EXTRA_MODELS: list[type[BaseModel]] = [
    ChatCompletionChunk, SolveStart, StepOut, SolveResponse, ErrorResponse
]


def _json_data(ref: str | list[str]) -> dict[str, Any]:
    refs = [ref] if isinstance(ref, str) else ref
    schema: dict[str, Any] = (
        {"$ref": REF.format(model=refs[0])}
        if len(refs) == 1
        else {"anyOf": [{"$ref": REF.format(model=r)} for r in refs]}
    )
    return {"type": "string", "contentMediaType": "application/json", "contentSchema": schema}


def _event(name: str, model: str) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["event", "data"],
        "properties": {"event": {"const": name}, "data": _json_data(model)},
    }


SOLVE_EVENT = {
    "description": "With stream=true: `start`, one `step` per step, then `result` (the "
    "SolveResponse) or `error`; `: keep-alive` comments in between",
    "schema": {
        "oneOf": [
            _event("start", "SolveStart"),
            _event("step", "StepOut"),
            _event("result", "SolveResponse"),
            _event("error", "ErrorResponse"),
        ]
    },
}

CHAT_EVENT = {
    "description": "With stream=true: chat.completion.chunk objects, then `[DONE]` "
    "(or an error object if the run fails)",
    "schema": {
        "type": "object",
        "required": ["data"],
        "properties": {
            "data": {
                "anyOf": [
                    {"const": "[DONE]"},
                    _json_data(["ChatCompletionChunk", "ErrorResponse"]),
                ]
            }
        },
    },
}


RESPONSES_EVENT = {
    "description": "With stream=true: Responses API events (`event:` is the `type` of the "
    "JSON `data`): response.created, response.in_progress, response.distillery.step "
    "(extension), response.output_item.added, response.content_part.added, "
    "response.output_text.delta/.done, response.content_part.done, "
    "response.output_item.done, then response.completed or response.incomplete; or "
    "`error` then response.failed",
    "schema": {
        "type": "object",
        "required": ["event", "data"],
        "properties": {
            "event": {"type": "string"},
            "data": {"type": "string", "contentMediaType": "application/json"},
        },
    },
}


def install_openapi_extras(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)
            comps = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in EXTRA_MODELS:
                js = model.model_json_schema(mode="serialization", ref_template=REF)
                for name, sub in js.pop("$defs", {}).items():
                    comps.setdefault(name, sub)
                comps.setdefault(model.__name__, js)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
