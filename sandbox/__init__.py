"""Jailed Python workers (nsjail): per-run state, copy-on-write forks, proxied tools.

The names below are what other packages may import (checked by tests/test_architecture.py);
importing the package loads no heavy dependency.
"""

from sandbox.config import DEFAULT_ALLOWED_IMPORTS, SandboxConfig
from sandbox.errors import SandboxError, SandboxSetupError, WorkerDied
from sandbox.executor import SandboxExecutor
from sandbox.results import ErrorKind, ExecutionResult, JsonText, ToolCallRecord, ToolFn

__all__ = [
    "DEFAULT_ALLOWED_IMPORTS",
    "ErrorKind",
    "ExecutionResult",
    "JsonText",
    "SandboxConfig",
    "SandboxError",
    "SandboxExecutor",
    "SandboxSetupError",
    "ToolCallRecord",
    "ToolFn",
    "WorkerDied",
]
