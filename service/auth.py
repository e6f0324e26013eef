"""Optional API keys: `Authorization: Bearer <key>` on every /v1 route when keys are configured.

The dependency is attached only when keys exist, so the OpenAPI document declares the
bearer scheme exactly when the server enforces it. Probes and /metrics stay open.

Contract:
- Keys must be visible ASCII (`api_key_problem`): `make_auth_dependency` refuses any
  other key with ValueError (a client could never send it, so it could never match).
- A request passes with exactly one `Authorization` header whose scheme is Bearer and
  whose token equals one of the keys (compared in constant time against every key).
  No header, another scheme or a wrong key is a 401 with `WWW-Authenticate: Bearer`;
  two or more `Authorization` headers are a 401 `ambiguous_api_key`, whatever they hold
  (which one a proxy or a server reads differs: refusing both closes that gap).
- Authentication comes before the body is read: FastAPI reads and parses a body before
  it runs a route's dependencies, so `APIKeyMiddleware` runs the same check on every
  `/v1/` request first (a malformed or oversized body without a valid key is a 401,
  never a 400/413/422, and is never read). The route dependency checks again and is what
  declares the scheme in the OpenAPI document.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import APIError, error_response, error_responses

__all__ = ["APIKeyMiddleware", "api_key_problem", "make_auth_dependency", "route_protection"]

_bearer = HTTPBearer(auto_error=False, description="One of DISTILLERY_API_KEYS")
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def api_key_problem(key: str) -> str | None:
    """Why `key` can never be sent as a Bearer token, or None when it can: a key must be
    visible ASCII (letters, digits, punctuation; no spaces or other characters)."""
    if not key:
        return "is empty"
    for ch in key:
        if not "!" <= ch <= "~":
            return (
                f"holds the character {ascii(ch)}: an API key must be visible ASCII "
                "(letters, digits and punctuation, no spaces), the only text an HTTP client "
                "sends in 'Authorization: Bearer <key>'"
            )
    return None


def _checker(keys: Sequence[str]) -> Callable[[Request], None]:
    """The check of one request against `keys` (raises the 401 APIError); ValueError for
    a key that can never match."""
    for i, key in enumerate(keys):
        problem = api_key_problem(key) if key else None
        if problem is not None:
            raise ValueError(f"API key #{i + 1} {problem}; set another key")
    encoded = [k.encode() for k in keys if k]

    def check(request: Request) -> None:
        values = request.headers.getlist("authorization")
        if len(values) > 1:
            raise APIError(
                401,
                f"{len(values)} Authorization headers: send exactly one "
                "'Authorization: Bearer <key>'",
                code="ambiguous_api_key",
                headers=_CHALLENGE,
            )
        scheme, _, token = values[0].strip().partition(" ") if values else ("", "", "")
        if scheme.lower() != "bearer" or not token.strip():
            raise APIError(
                401,
                "missing API key: send 'Authorization: Bearer <key>'",
                code="missing_api_key",
                headers=_CHALLENGE,
            )
        given = token.strip().encode("latin-1")  # the bytes as sent (Starlette's decoding)
        ok = False
        for key in encoded:  # every key, no early exit: constant time per key
            ok |= hmac.compare_digest(given, key)
        if not ok:
            raise APIError(401, "invalid API key", code="invalid_api_key", headers=_CHALLENGE)

    return check


def make_auth_dependency(keys: Sequence[str]) -> Callable[..., Awaitable[None]]:
    """The route dependency that enforces `keys` (see the module docstring)."""
    check = _checker(keys)

    async def require_api_key(
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),  # noqa: B008
    ) -> None:
        # `credentials` only declares the scheme in the OpenAPI document; `check` reads
        # every Authorization header itself (HTTPBearer reads the first one only).
        check(request)

    return require_api_key


def route_protection(keys: Sequence[str]) -> dict[str, Any]:
    """`include_router` arguments that protect a router with `keys` (the dependency and
    the documented 401); none without keys."""
    if not keys:
        return {}
    return {
        "dependencies": [Depends(make_auth_dependency(keys))],
        "responses": error_responses(401),
    }


class APIKeyMiddleware:
    """ASGI: every HTTP request whose path starts with `prefix` must pass the key check
    before the app sees it (its body unread); see the module docstring."""

    def __init__(self, app: ASGIApp, keys: Sequence[str], prefix: str = "/v1/") -> None:
        self.app = app
        self.prefix = prefix
        self.check = _checker(keys)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and str(scope.get("path", "")).startswith(self.prefix):
            try:
                self.check(Request(scope))
            except APIError as e:
                await error_response(e)(scope, receive, send)
                return
        await self.app(scope, receive, send)
