"""Optional API keys: `Authorization: Bearer <key>` on every /v1 route when keys are configured.

The dependency is attached only when keys exist, so the OpenAPI document declares the
bearer scheme exactly when the server enforces it. Probes and /metrics stay open.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Sequence

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.errors import APIError

_bearer = HTTPBearer(auto_error=False, description="One of DISTILLERY_API_KEYS")


def make_auth_dependency(keys: Sequence[str]) -> Callable[..., Awaitable[None]]:
    encoded = [k.encode() for k in keys if k]

    async def require_api_key(
        credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),  # noqa: B008
    ) -> None:
        challenge = {"WWW-Authenticate": "Bearer"}
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise APIError(
                401,
                "missing API key: send 'Authorization: Bearer <key>'",
                code="missing_api_key",
                headers=challenge,
            )
        given = credentials.credentials.encode()
        # Compare against every key (no early exit) in constant time per key.
        ok = False
        for key in encoded:
            ok |= hmac.compare_digest(given, key)
        if not ok:
            raise APIError(401, "invalid API key", code="invalid_api_key", headers=challenge)

    return require_api_key
