"""Route of the OpenAI Responses API: `POST /v1/responses` (see service.serving_responses)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from service.errors import error_responses
from service.openapi_docs import RESPONSES_EVENT
from service.protocol_responses import ResponseObject, ResponsesRequest
from service.serving_responses import ResponsesService

router = APIRouter(tags=["openai"])


@router.post(
    "/v1/responses",
    response_model=None,
    summary="OpenAI Responses API: the last user message of `input` is the agent's task",
    responses={
        200: {
            "model": ResponseObject,
            "description": "The response (JSON), or its events when stream=true",
            "content": {"text/event-stream": RESPONSES_EVENT},
        },
        **error_responses(400, 404, 413, 429, 500, 502, 503, 504),
    },
)
async def create_response(body: ResponsesRequest, request: Request) -> Response:
    service: ResponsesService = request.app.state.responses_service
    return await service.create(body, request)
