"""One JSON error shape for every endpoint, and the handlers that produce it.

    {"error": {"message": str, "type": str, "code": str, "param": str | null,
               "request_id": str | null}}

It is the OpenAI error object plus `request_id`, so the official SDKs read it too.
`code` is a stable machine-readable name (e.g. "body_too_large"); `type` groups codes
the OpenAI way ("invalid_request_error", "authentication_error", ...).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.request_context import current_request_id
from service.textsafe import dumps, scrub

log = logging.getLogger(__name__)

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    499: "client_closed_request",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout_error",
}
_CODE_BY_STATUS = {
    400: "bad_request",
    401: "invalid_api_key",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "body_too_large",
    422: "validation_error",
    429: "too_many_requests",
    502: "upstream_error",
    503: "unavailable",
    504: "deadline_exceeded",
}


class ErrorBody(BaseModel):
    message: str = Field(description="What went wrong and what to do next")
    type: str = Field(description="Error class, OpenAI style (e.g. invalid_request_error)")
    code: str = Field(description="Stable machine-readable error name")
    param: str | None = Field(None, description="The request field at fault, if any")
    request_id: str | None = Field(None, description="Also in the x-request-id header and logs")


class ErrorResponse(BaseModel):
    error: ErrorBody


class APIError(Exception):
    """Raise anywhere in a request: becomes the JSON error response."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        type: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code or _CODE_BY_STATUS.get(status, "error")
        self.type = type or _TYPE_BY_STATUS.get(status, "server_error")
        self.param = param
        self.headers = headers or {}


def error_payload(
    status: int,
    message: str,
    *,
    code: str | None = None,
    type: str | None = None,
    param: str | None = None,
) -> dict[str, Any]:
    # scrub: a message may quote client or model text; serializing it must never fail
    return {
        "error": scrub({
            "message": message,
            "type": type or _TYPE_BY_STATUS.get(status, "server_error"),
            "code": code or _CODE_BY_STATUS.get(status, "internal_error"),
            "param": param,
            "request_id": current_request_id(),
        })
    }


def api_error_payload(exc: APIError) -> dict[str, Any]:
    return error_payload(exc.status, exc.message, code=exc.code, type=exc.type, param=exc.param)


class SafeJSONResponse(JSONResponse):
    """A JSON response whose rendering cannot fail on text (see service.textsafe)."""

    def render(self, content: Any) -> bytes:
        return dumps(content).encode("utf-8")


def error_response(exc: APIError) -> JSONResponse:
    return SafeJSONResponse(api_error_payload(exc), status_code=exc.status, headers=exc.headers)


def error_bytes(status: int, message: str, *, code: str | None = None) -> bytes:
    return json.dumps(error_payload(status, message, code=code)).encode()


# OpenAPI `responses=` entries, so the schema documents every error the route returns.
def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    descriptions = {
        400: "Bad request (OpenAI-style invalid_request_error)",
        401: "Missing or wrong API key",
        404: "Unknown model or route",
        413: "Request body larger than the limit",
        422: "The request does not match the schema",
        429: "Too many requests in flight and in the queue; see Retry-After",
        502: "The model server refused the request or sent a reply that could not be used",
        503: "The model server (or a component) is unreachable, or the service is not ready",
        504: "The request deadline passed before the run could finish",
        500: "The agent run failed unexpectedly; the server log has the request id",
    }
    return {s: {"model": ErrorResponse, "description": descriptions[s]} for s in statuses}


def _param_of(loc: tuple[Any, ...] | list[Any]) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or None


def _openai_style(request: Request) -> bool:
    return request.url.path.startswith(("/v1/chat/", "/v1/responses"))


async def _validation_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    if any(e.get("type") == "json_invalid" for e in errors):
        api = APIError(400, "the request body is not valid JSON", code="invalid_json")
        return error_response(api)
    unencodable = [e for e in errors if e.get("type") == "invalid_unicode"]
    if unencodable:  # one clear message, wherever the bad string was
        where = str((unencodable[0].get("ctx") or {}).get("where") or "body")
        status = 400 if _openai_style(request) else 422
        return error_response(APIError(
            status,
            f"invalid request: {where}: {unencodable[0].get('msg', 'invalid text')}",
            code="invalid_unicode", param=where,
        ))
    first = errors[0] if errors else {}
    param = _param_of(first.get("loc", ()))
    details = "; ".join(
        f"{_param_of(e.get('loc', ())) or 'body'}: {e.get('msg', 'invalid')}" for e in errors[:5]
    )
    if len(errors) > 5:
        details += f"; and {len(errors) - 5} more"
    # The OpenAI API answers schema violations with 400; /v1/solve uses 422.
    status = 400 if _openai_style(request) else 422
    return error_response(
        APIError(status, f"invalid request: {details}", code="validation_error", param=param)
    )


async def _api_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    return error_response(exc)


async def _http_exception_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    message = str(exc.detail) if exc.detail else "error"
    if status == 404:
        message = f"no route {request.method} {request.url.path}: see /docs for the API"
    elif status == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    api = APIError(status, message, headers=dict(exc.headers or {}))
    return error_response(api)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(APIError, _api_error_handler)
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(StarletteHTTPException, _http_exception_handler)
