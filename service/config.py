"""`ServiceConfig`: the plain values the HTTP gateway runs with.

The composition root (`distillery.components.service_config`) builds it from Settings, which
own every default; service/ reads no environment and imports no settings class.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.agent import AgentConfig

__all__ = ["ServiceConfig"]


@dataclass
class ServiceConfig:
    max_concurrency: int
    """Agent runs at once; more requests queue."""
    max_queue: int
    """Requests that may wait for a run slot; past that, 429."""
    request_timeout_s: float
    """Per-request deadline (a request may ask for less)."""
    max_body_bytes: int
    """Request bodies over this are refused with 413."""
    model_timeout_s: float
    """The model client's request timeout (the Retry-After of a model outage derives from it)."""
    host: str
    port: int
    api_keys: list[str] = field(default_factory=list)
    """Accepted Bearer keys; empty = no authentication."""
    agent: AgentConfig = field(default_factory=AgentConfig)
    """Agent defaults; a request may override the knobs it is allowed to."""
    model_name: str | None = None
    """Served model name to report before the model client is up."""
    model_api_key: str | None = None
    """Bearer key the readiness probe sends to the model server."""
    answer_check_timeout_s: float = 5.0
    """Structured outputs: the time limit of one answer's check against a JSON schema."""
    answer_check_workers: int = 2
    """Structured outputs: child processes that check answers (service.schema_check)."""
    shutdown_grace_s: float = 30.0
    """On SIGTERM/SIGINT: how long runs in flight may go on before they are ended (503)."""
    shutdown_retry_after_s: int = 2
    """Retry-After of the 503s sent while shutting down (other replicas take the retry)."""
    body_timeout_s: float | None = 30.0
    """A request body must arrive within this many seconds of its headers (else 408)."""
    drain_on_signals: bool = True
    """Install the SIGTERM/SIGINT drain (only takes effect in the main thread)."""
    probe_port: int | None = None
    """The probe listener's port (it serves only the probe routes); None = no such listener."""
    ready_model_failures: int = 5
    """/readyz fails while the last this many model calls all failed (0 = never)..."""
    ready_model_window_s: float = 60.0
    """... and the oldest of them ended less than this many seconds ago."""
