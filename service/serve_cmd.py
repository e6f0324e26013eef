"""`distillery serve`: the HTTP gateway under uvicorn.

Flags override DISTILLERY_* variables, which override defaults. With --workers > 1 the
flags are exported as DISTILLERY_* variables so that every worker process (started by
uvicorn from the `service.app:create_app_from_env` factory) sees the same settings.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from pydantic import SecretStr, ValidationError

from service.settings import Settings


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="run the HTTP gateway (/v1/solve, OpenAI-compatible chat, /metrics)",
        description="Serve the agent over HTTP. Every flag also reads a DISTILLERY_* variable "
        "(e.g. --max-concurrency = DISTILLERY_MAX_CONCURRENCY); flags win.",
    )
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8080)")
    p.add_argument("--workers", type=int, help="uvicorn worker processes (default 1)")
    m = p.add_argument_group("model (default: embedded engine)")
    m.add_argument("--model-url", help="OpenAI-compatible base URL, e.g. http://vllm:8000/v1")
    m.add_argument("--model", help="served model name at --model-url")
    m.add_argument("--model-path", type=Path, help="local Hugging Face folder run in-process")
    a = p.add_argument_group("agent defaults (a request may override them)")
    a.add_argument("--samples", "-n", type=int, help="N candidate actions per step (SAG)")
    a.add_argument("--max-steps", type=int)
    a.add_argument("--policy", choices=["first", "majority"])
    a.add_argument("--temperature", type=float)
    a.add_argument("--top-p", type=float)
    a.add_argument("--max-tokens", type=int)
    a.add_argument("--prompt", help="'student', 'teacher', or a prompt file")
    x = p.add_argument_group("sandbox and retrieval")
    x.add_argument("--executor", choices=["sandbox", "local"])
    x.add_argument("--es-url", help="Elasticsearch URL (default: the embedded index)")
    x.add_argument("--es-index")
    x.add_argument("--index-dir", type=Path, help="embedded index folder")
    lim = p.add_argument_group("protection")
    lim.add_argument(
        "--api-key", action="append", dest="api_keys", metavar="KEY",
        help="accept this Bearer key (repeatable; DISTILLERY_API_KEYS='[\"k1\",\"k2\"]')",
    )
    lim.add_argument("--max-concurrency", type=int, help="runs at once (default 16)")
    lim.add_argument("--max-queue", type=int, help="requests waiting past that (default 64)")
    lim.add_argument("--request-timeout-s", type=float, help="per-request deadline (default 300)")
    lim.add_argument("--max-body-bytes", type=int, help="request body limit (default 1000000)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=run)


_FIELDS = [
    "host", "port", "workers", "model_url", "model", "model_path", "samples", "max_steps",
    "policy", "temperature", "top_p", "max_tokens", "prompt", "executor", "es_url", "es_index",
    "index_dir", "api_keys", "max_concurrency", "max_queue", "request_timeout_s",
    "max_body_bytes", "log_level",
]


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    return {f: getattr(args, f) for f in _FIELDS if getattr(args, f, None) is not None}


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
    import uvicorn

    from service.logs import configure_logging

    overrides = overrides_from_args(args)
    try:
        settings = Settings(**overrides)
    except ValidationError as e:
        errs = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
        print(f"distillery serve: error: invalid option: {errs}", file=sys.stderr)
        return 2
    if settings.workers < 1:
        print("distillery serve: error: --workers must be >= 1", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    common: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_config": None,
        "access_log": False,
        "timeout_graceful_shutdown": 30,
    }
    if settings.workers == 1:
        from service.app import create_app

        uvicorn.run(create_app(settings), **common)
    else:
        export_env(overrides)
        uvicorn.run(
            "service.app:create_app_from_env", factory=True, workers=settings.workers, **common
        )
    return 0
