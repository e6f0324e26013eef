"""`distillery serve`: the HTTP gateway under uvicorn.

Flags override DISTILLERY_* variables, which override defaults. With --workers > 1 the
flags are exported as DISTILLERY_* variables so that every worker process (started by
uvicorn from the `distillery.app:create_app_from_env` factory) sees the same settings.

uvicorn runs with the gateway's connection protection (`service.http_protocol`: header
read timeout and size limit, max connections, the probe listener on `--probe-port`; the
body read timeout is in the app) and its shutdown
(`service.shutdown`: on SIGTERM the app drains for `--shutdown-grace-s`; uvicorn's own
graceful timeout only covers the flush after that).
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from pydantic import SecretStr

from distillery.options import (
    AGENT_FIELDS,
    ALIASES,
    EXIT_CONFIG,
    EXIT_FAILED,
    MODEL_FIELDS,
    RETRIEVAL_FIELDS,
    SANDBOX_FIELDS,
    UsageError,
    add_settings_flags,
    fail,
    settings_from_args,
)
from distillery.settings import Settings

SERVER_FIELDS = ["host", "port", "workers", "log_level"]
PROTECTION_FIELDS = [
    "api_keys", "max_concurrency", "max_queue", "request_timeout_s", "max_body_bytes",
    "header_timeout_s", "body_timeout_s", "max_connections", "max_header_bytes",
    "shutdown_grace_s",
]
PROBE_FIELDS = ["probe_port", "ready_model_failures", "ready_model_window_s"]
KEEP_ALIVE_S = 5
"""Idle keep-alive connections are closed after this (uvicorn's timeout_keep_alive)."""
FLUSH_S = 10
"""uvicorn's graceful timeout: after the app's drain, time to finish sending responses."""
FIELDS = [
    *SERVER_FIELDS, *MODEL_FIELDS, "model_timeout_s", "model_retries",
    "model_retry_after_max_s", *AGENT_FIELDS,
    *SANDBOX_FIELDS, *RETRIEVAL_FIELDS, "cache_dir", *PROTECTION_FIELDS, *PROBE_FIELDS,
    "mcp_config",
]


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="run the HTTP gateway (/v1/solve, OpenAI-compatible chat, /metrics)",
        description="Serve the agent over HTTP. Every flag also reads a DISTILLERY_* variable "
        "(e.g. --max-concurrency = DISTILLERY_MAX_CONCURRENCY); flags win.",
    )
    add_settings_flags(p, SERVER_FIELDS)
    add_settings_flags(
        p.add_argument_group("model (default: embedded engine)"),
        [*MODEL_FIELDS, "model_timeout_s", "model_retries", "model_retry_after_max_s"],
        flags=ALIASES,
    )
    add_settings_flags(
        p.add_argument_group("agent defaults (a request may override them)"),
        AGENT_FIELDS,
        flags=ALIASES,
    )
    add_settings_flags(p.add_argument_group("sandbox"), SANDBOX_FIELDS)
    add_settings_flags(
        p.add_argument_group("retrieval"),
        [*RETRIEVAL_FIELDS, "cache_dir"],
    )
    add_settings_flags(
        p.add_argument_group("protection"),
        PROTECTION_FIELDS,
        flags={"api_keys": ["--api-key"]},
        helps={"api_keys": "accept this Bearer key (repeatable)"},
    )
    add_settings_flags(p.add_argument_group("probes"), PROBE_FIELDS)
    add_settings_flags(p.add_argument_group("tools"), ["mcp_config"])
    p.set_defaults(func=run)


def settings_for(args: argparse.Namespace) -> Settings:
    return settings_from_args(args, FIELDS)


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    return {f: getattr(args, f) for f in FIELDS if getattr(args, f, None) is not None}


def export_env(overrides: dict[str, Any]) -> None:
    """Put flag values where worker processes' Settings() will read them."""
    for name, value in overrides.items():
        if isinstance(value, list):
            text = json.dumps(
                [v.get_secret_value() if isinstance(v, SecretStr) else v for v in value]
            )
        else:
            text = str(value)
        os.environ[f"DISTILLERY_{name.upper()}"] = text


def run(args: argparse.Namespace) -> int:
    from service.http_protocol import GatewayUvicornConfig, serve
    from service.logs import configure_logging

    overrides = overrides_from_args(args)
    try:
        settings = settings_for(args)
    except UsageError as e:
        return fail(str(e), EXIT_CONFIG)
    from distillery.components import ConfigError, load_settings_protocol

    try:  # a bad protocol profile: one line now, not a failed startup later
        load_settings_protocol(settings)
    except ConfigError as e:
        return fail(str(e), EXIT_CONFIG)
    if settings.probe_port is not None and settings.probe_port == settings.port:
        return fail(f"--probe-port {settings.probe_port} is also --port: the probe listener "
                    "needs a port of its own (or leave it unset)", EXIT_CONFIG)
    configure_logging(settings.log_level)
    common: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_config": None,
        "access_log": False,
        "timeout_keep_alive": KEEP_ALIVE_S,
        "timeout_graceful_shutdown": FLUSH_S,
        "header_timeout_s": settings.header_timeout_s,
        "max_connections": settings.max_connections,
        "max_header_bytes": settings.max_header_bytes,
        "probe_port": settings.probe_port,
        # a bound on buffered, not yet parsed request data (h11 fallback only)
        "h11_max_incomplete_event_size": 64 * 1024,
    }
    if settings.workers == 1:
        from distillery.app import create_app

        config = GatewayUvicornConfig(create_app(settings), **common)
    else:
        export_env(overrides)
        config = GatewayUvicornConfig(
            "distillery.app:create_app_from_env", factory=True, workers=settings.workers, **common
        )
    if not serve(config):
        return EXIT_FAILED  # startup failed; the log says why
    return 0
