"""Routes of the agent API: `POST /v1/solve`."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from service.errors import error_responses
from service.openapi_docs import SOLVE_EVENT
from service.protocol_solve import SolveRequest, SolveResponse
from service.serving_solve import SolveService

router = APIRouter(tags=["agent"])


@router.post(
    "/v1/solve",
    response_model=None,
    summary="Solve a task with the agent (thought -> code -> observation)",
    responses={
        200: {
            "model": SolveResponse,
            "description": "The run's result (JSON), or its event stream when stream=true",
            "content": {"text/event-stream": SOLVE_EVENT},
        },
        **error_responses(400, 413, 422, 429, 503, 504),
    },
)
async def solve(body: SolveRequest, request: Request) -> Response:
    service: SolveService = request.app.state.solve_service
    return await service.solve(body, request)
