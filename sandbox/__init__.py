"""Jailed Python workers (nsjail): per-run state, copy-on-write forks, proxied tools.

The names below are what other packages may import (checked by tests/test_architecture.py);
they load lazily.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "DEFAULT_ALLOWED_IMPORTS",
    "ErrorKind",
    "ExecutionResult",
    "SandboxConfig",
    "SandboxError",
    "SandboxExecutor",
    "SandboxSetupError",
    "ToolCallRecord",
    "ToolFn",
    "WorkerDied",
    "config_from_settings",
]

_EXPORTS = {
    "DEFAULT_ALLOWED_IMPORTS": "sandbox.config",
    "ErrorKind": "sandbox.results",
    "ExecutionResult": "sandbox.results",
    "SandboxConfig": "sandbox.config",
    "SandboxError": "sandbox.errors",
    "SandboxExecutor": "sandbox.executor",
    "SandboxSetupError": "sandbox.errors",
    "ToolCallRecord": "sandbox.results",
    "ToolFn": "sandbox.results",
    "WorkerDied": "sandbox.errors",
    "config_from_settings": "sandbox.config",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
