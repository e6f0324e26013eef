"""The HTTP gateway (FastAPI): /v1/solve, the OpenAI-compatible chat API, probes, metrics.

`create_app(ServiceConfig, components | build=...)` is the whole surface; the composition
root (`distillery.app`) maps Settings onto it. service/ never reads the environment. The
names below are what other packages may import (checked by tests/test_architecture.py);
they load lazily.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "GatewayUvicornConfig",
    "ServiceConfig",
    "api_key_problem",
    "configure_logging",
    "create_app",
    "serve",
]

_EXPORTS = {
    "GatewayUvicornConfig": "service.http_protocol",
    "ServiceConfig": "service.config",
    "api_key_problem": "service.auth",
    "configure_logging": "service.logs",
    "create_app": "service.app",
    "serve": "service.http_protocol",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
