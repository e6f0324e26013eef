"""`create_app(settings, components)`: the FastAPI gateway.

Without `components`, the app builds them from the settings at startup (in a thread: the
embedded model or index may take a while) and closes them at shutdown; passed-in
components stay the caller's to close. `create_app_from_env` is the uvicorn factory used
with several workers (each worker builds its own components).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI

from service import ops, router_openai, router_solve
from service.auth import make_auth_dependency
from service.errors import error_responses, install_error_handlers
from service.gateway import Gateway
from service.limits import BodyLimitMiddleware
from service.metrics import Metrics
from service.middleware import RequestContextMiddleware
from service.openapi_docs import install_openapi_extras
from service.serving_openai import ChatService
from service.serving_solve import SolveService
from service.settings import Settings

if TYPE_CHECKING:
    from service.components import Components

log = logging.getLogger("distillery.app")

DESCRIPTION = """Small tool-using agents (Agent Distillation, arXiv 2505.17612) over HTTP.

`POST /v1/solve` runs the agent (thought -> code -> observation, N candidate actions per
step) and returns the answer with every step; `POST /v1/chat/completions` is the same
agent behind the OpenAI chat API. Errors share one JSON shape:
`{"error": {"message", "type", "code", "param", "request_id"}}`.
"""


def create_app(settings: Settings | None = None, components: Components | None = None) -> FastAPI:
    settings = settings or _settings_from_env()
    metrics = Metrics()
    gateway = Gateway(settings, metrics)
    owns_components = components is None
    if components is not None:
        gateway.components = components

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if owns_components:
            from service.components import build_components

            log.info("building components (model, sandbox, retriever)")
            try:
                gateway.components = await asyncio.to_thread(build_components, settings)
                await gateway.components.start()
            except Exception as e:
                log.error("startup failed: %s", e)
                raise
            log.info(
                "ready",
                extra={"fields": {"event": "ready", "model": gateway.model_name,
                                  "host": settings.host, "port": settings.port}},
            )
        try:
            yield
        finally:
            if owns_components and gateway.components is not None:
                await gateway.components.aclose()
                gateway.components = None

    app = FastAPI(
        title="distillery",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.gateway = gateway
    app.state.solve_service = SolveService(gateway)
    app.state.chat_service = ChatService(gateway)
    install_error_handlers(app)
    install_openapi_extras(app)

    keys = [k.get_secret_value() for k in settings.api_keys if k.get_secret_value()]
    protected: dict = {}
    if keys:
        protected = {
            "dependencies": [Depends(make_auth_dependency(keys))],
            "responses": error_responses(401),
        }
    app.include_router(router_solve.router, **protected)
    app.include_router(router_openai.router, **protected)
    app.include_router(ops.router)

    # Outermost first at request time: request id/log/metrics, then the body limit.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    return app


def create_app_from_env() -> FastAPI:
    """uvicorn factory (`--factory`): settings from DISTILLERY_* variables."""
    from service.logs import configure_logging

    settings = _settings_from_env()
    configure_logging(settings.log_level)
    return create_app(settings)


def _settings_from_env() -> Settings:
    no_overrides: dict[str, Any] = {}  # (spelled so that mypy, without the pydantic
    return Settings(**no_overrides)  # plugin, does not demand every field)
