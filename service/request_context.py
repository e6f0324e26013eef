"""The current request's id, readable anywhere (logs, error bodies) through a context variable."""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar

_request_id: ContextVar[str | None] = ContextVar("distillery_request_id", default=None)
_VALID_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def current_request_id() -> str | None:
    return _request_id.get()


def set_request_id(value: str | None) -> object:
    """Set the id for the current context; returns a token for `reset_request_id`."""
    return _request_id.set(value)


def reset_request_id(token: object) -> None:
    _request_id.reset(token)  # type: ignore[arg-type]


def choose_request_id(client_value: str | None) -> str:
    """The client's X-Request-ID when it is a sane token, else a fresh one."""
    if client_value and _VALID_ID.match(client_value):
        return client_value
    return uuid.uuid4().hex
