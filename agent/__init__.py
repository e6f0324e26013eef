"""The agent loop: prompts, action parsing, self-consistent action generation, model clients.

The names below are what other packages may import (checked by tests/test_architecture.py);
they load lazily, so `import agent` costs nothing until a name is used.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "AgentConfig",
    "Candidate",
    "Choice",
    "Completion",
    "EmbeddedModelError",
    "ErrorKind",
    "ExecutionResult",
    "ExecutionSession",
    "Executor",
    "Message",
    "ModelClient",
    "ModelError",
    "ModelRequest",
    "OpenAIChatClient",
    "PROTOCOL_STOP",
    "ParseError",
    "Runtime",
    "SamplingParams",
    "Step",
    "ToolCallRecord",
    "ToolFn",
    "Trajectory",
    "TransformersEngine",
    "Usage",
    "ensure_embedded_model",
    "initial_messages",
    "load_prompt_template",
    "parse_action",
    "render_error",
    "render_observation",
    "run_agent",
]

_EXPORTS = {
    "AgentConfig": "agent.agent",
    "Candidate": "agent.trajectory",
    "Choice": "agent.model_client",
    "Completion": "agent.model_client",
    "EmbeddedModelError": "agent.embedded_model",
    "ErrorKind": "agent.executor",
    "ExecutionResult": "agent.executor",
    "ExecutionSession": "agent.executor",
    "Executor": "agent.executor",
    "Message": "agent.model_client",
    "ModelClient": "agent.model_client",
    "ModelError": "agent.model_client",
    "ModelRequest": "agent.trajectory",
    "OpenAIChatClient": "agent.openai_client",
    "PROTOCOL_STOP": "agent.model_client",
    "ParseError": "agent.parsing",
    "Runtime": "agent.runtime",
    "SamplingParams": "agent.model_client",
    "Step": "agent.trajectory",
    "ToolCallRecord": "agent.executor",
    "ToolFn": "agent.executor",
    "Trajectory": "agent.trajectory",
    "TransformersEngine": "agent.transformers_engine",
    "Usage": "agent.model_client",
    "ensure_embedded_model": "agent.embedded_model",
    "initial_messages": "agent.prompts",
    "load_prompt_template": "agent.prompts",
    "parse_action": "agent.parsing",
    "render_error": "agent.observation",
    "render_observation": "agent.observation",
    "run_agent": "agent.agent",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
