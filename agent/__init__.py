"""The agent loop: prompts, action parsing, self-consistent action generation, model clients.

The names below are what other packages may import (checked by tests/test_architecture.py);
importing the package loads no heavy dependency (torch, transformers, tantivy load
where they are used).
"""

from agent.agent import AgentConfig, run_agent
from agent.answer_check import AnswerCheck
from agent.ct2_engine import CTranslate2Engine
from agent.embedded_model import (
    PREPARED_MODELS,
    EmbeddedModelError,
    convert_gguf_to_hf,
    ensure_embedded_model,
    ensure_smollm2_model,
    prepare_adapter_base,
    smollm2_gguf,
)
from agent.executor import (
    ErrorKind,
    ExecutionResult,
    ExecutionSession,
    Executor,
    JsonText,
    ToolCallRecord,
    ToolFn,
)
from agent.mcp_config import McpConfigError, McpServerConfig, load_mcp_config
from agent.mcp_provider import McpProvider, McpToolError
from agent.model_client import (
    PROTOCOL_STOP,
    CallScope,
    Choice,
    Completion,
    Message,
    ModelClient,
    ModelError,
    ModelRequestError,
    ModelUnavailable,
    SamplingParams,
    Usage,
    call_scope,
)
from agent.observation import render_error, render_observation
from agent.openai_client import OpenAIChatClient
from agent.parsing import ParseError, parse_action
from agent.prompts import (
    initial_messages,
    load_prompt_template,
    system_prompt,
    system_prompt_template,
)
from agent.protocol import (
    PROTOCOL_FILE,
    ObservationLayout,
    Protocol,
    ProtocolError,
    checkpoint_protocol_file,
    default_protocol,
    load_protocol,
    resolve_protocol_spec,
)
from agent.runtime import Runtime
from agent.tool_providers import (
    ProvidedTool,
    ToolArgumentError,
    ToolProvider,
    ToolProviderError,
    ToolSet,
    UnknownToolsError,
)
from agent.tool_web_search import WebSearchProvider
from agent.tools import (
    FINAL_ANSWER,
    KNOWN_TOOLS,
    TRAINED_TOOLS_FILE,
    ToolSpec,
    host_tool_specs,
    read_trained_tools,
    spec_from_schema,
    tool_specs,
)
from agent.trajectory import Candidate, ModelRequest, Step, Trajectory
from agent.transformers_engine import TransformersEngine

__all__ = [
    "FINAL_ANSWER",
    "KNOWN_TOOLS",
    "PREPARED_MODELS",
    "TRAINED_TOOLS_FILE",
    "AnswerCheck",
    "AgentConfig",
    "CTranslate2Engine",
    "CallScope",
    "Candidate",
    "Choice",
    "Completion",
    "EmbeddedModelError",
    "ErrorKind",
    "ExecutionResult",
    "ExecutionSession",
    "Executor",
    "JsonText",
    "McpConfigError",
    "McpProvider",
    "McpServerConfig",
    "McpToolError",
    "Message",
    "ModelClient",
    "ModelError",
    "ModelRequestError",
    "ModelUnavailable",
    "ModelRequest",
    "ObservationLayout",
    "OpenAIChatClient",
    "PROTOCOL_FILE",
    "PROTOCOL_STOP",
    "ParseError",
    "Protocol",
    "ProtocolError",
    "ProvidedTool",
    "Runtime",
    "SamplingParams",
    "Step",
    "ToolArgumentError",
    "ToolCallRecord",
    "ToolFn",
    "ToolProvider",
    "ToolProviderError",
    "ToolSet",
    "ToolSpec",
    "Trajectory",
    "TransformersEngine",
    "UnknownToolsError",
    "Usage",
    "WebSearchProvider",
    "call_scope",
    "checkpoint_protocol_file",
    "convert_gguf_to_hf",
    "default_protocol",
    "ensure_embedded_model",
    "ensure_smollm2_model",
    "host_tool_specs",
    "initial_messages",
    "load_prompt_template",
    "load_mcp_config",
    "load_protocol",
    "parse_action",
    "prepare_adapter_base",
    "read_trained_tools",
    "render_error",
    "render_observation",
    "resolve_protocol_spec",
    "run_agent",
    "smollm2_gguf",
    "spec_from_schema",
    "system_prompt",
    "system_prompt_template",
    "tool_specs",
]
