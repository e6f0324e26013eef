"""Routes of the OpenAI-compatible API: chat completions and models."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from service.errors import error_responses
from service.openapi_docs import CHAT_EVENT
from service.protocol_openai import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    ModelCard,
    ModelList,
)
from service.serving_openai import ChatService

router = APIRouter(tags=["openai"])


def _service(request: Request) -> ChatService:
    service: ChatService = request.app.state.chat_service
    return service


@router.post(
    "/v1/chat/completions",
    response_model=None,
    summary="OpenAI-compatible chat completion: the last user message is the agent's task",
    responses={
        200: {
            "model": ChatCompletionResponse,
            "description": "The completion (JSON), or chunks when stream=true",
            "content": {"text/event-stream": CHAT_EVENT},
        },
        **error_responses(400, 404, 413, 429, 500, 502, 503, 504),
    },
)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    return await _service(request).create(body, request)


@router.get(
    "/v1/models",
    response_model=ModelList,
    summary="The served model (OpenAI-compatible)",
    responses=error_responses(503),
)
async def list_models(request: Request) -> ModelList:
    return _service(request).models()


@router.get(
    "/v1/models/{model_id:path}",
    response_model=ModelCard,
    summary="One model (OpenAI-compatible)",
    responses=error_responses(404, 503),
)
async def get_model(model_id: str, request: Request) -> ModelCard:
    return _service(request).model(model_id)
