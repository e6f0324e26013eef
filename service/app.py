"""`create_app(config, components | build=...)`: the FastAPI gateway.

With `build` (a function returning the runtime components), the app builds them at startup
(in a thread: the embedded model or index may take a while) and closes them at shutdown;
passed-in `components` stay the caller's to close. The composition root
(`distillery.app`) maps Settings onto this; service/ itself reads no settings.
Under a server in the main thread the lifespan installs the SIGTERM/SIGINT drain
(`service.shutdown`); `app.state.drainer.drain()` runs the same sequence on demand.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from agent.runtime import Runtime
from service import ops, router_openai, router_responses, router_solve, router_tools
from service.auth import APIKeyMiddleware, route_protection
from service.config import ServiceConfig
from service.errors import install_error_handlers
from service.gateway import Gateway
from service.limits import BodyLimitMiddleware
from service.metrics import Metrics
from service.middleware import RequestContextMiddleware
from service.model_health import ModelHealth
from service.model_metrics import ModelStatsCollector
from service.openapi_docs import install_openapi_extras
from service.serving_openai import ChatService
from service.serving_responses import ResponsesService
from service.serving_solve import SolveService
from service.shutdown import Drainer, DrainMiddleware, install_signal_drain

log = logging.getLogger("distillery.app")

DESCRIPTION = """Small tool-using agents (Agent Distillation, arXiv 2505.17612) over HTTP.

`POST /v1/solve` runs the agent (thought -> code -> observation, N candidate actions per
step) and returns the answer with every step; `POST /v1/chat/completions` and
`POST /v1/responses` are the same agent behind the OpenAI chat and Responses APIs
(structured outputs included). Errors share one JSON shape:
`{"error": {"message", "type", "code", "param", "request_id"}}`.
"""


def create_app(
    config: ServiceConfig,
    components: Runtime | None = None,
    *,
    build: Callable[[], Runtime] | None = None,
) -> FastAPI:
    if (components is None) == (build is None):
        raise ValueError("create_app needs exactly one of components= or build=")
    metrics = Metrics()
    metrics.model_health = ModelHealth(config.ready_model_failures, config.ready_model_window_s)
    gateway = Gateway(config, metrics)
    owns_components = components is None
    if components is not None:
        gateway.components = components
    metrics.registry.register(
        ModelStatsCollector(lambda: gateway.components.model if gateway.components else None)
    )
    drainer = Drainer(gateway, config.shutdown_grace_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if build is not None:
            log.info("building components (model, sandbox, retriever)")
            try:
                gateway.components = await asyncio.to_thread(build)
                await gateway.components.start()
            except Exception as e:
                log.error("startup failed: %s", e)
                raise
            log.info(
                "ready",
                extra={"fields": {"event": "ready", "model": gateway.model_name,
                                  "host": config.host, "port": config.port}},
            )
        undo_signals = install_signal_drain(drainer) if config.drain_on_signals else None
        try:
            yield
        finally:
            if undo_signals is not None:
                undo_signals()
            await gateway.answer_validator.aclose()
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
    app.state.responses_service = ResponsesService(gateway)
    app.state.drainer = drainer
    install_error_handlers(app)
    install_openapi_extras(app)

    keys = [k for k in config.api_keys if k]
    protected = route_protection(keys)
    app.include_router(router_solve.router, **protected)
    app.include_router(router_openai.router, **protected)
    app.include_router(router_responses.router, **protected)
    app.include_router(router_tools.router, **protected)
    app.include_router(ops.router)

    # Outermost first at request time: request id/log/metrics, the shutdown drain, the API
    # key (before anything reads the body), then the body limit (size and read time).
    app.add_middleware(
        BodyLimitMiddleware, max_bytes=config.max_body_bytes, body_timeout_s=config.body_timeout_s
    )
    if keys:
        app.add_middleware(APIKeyMiddleware, keys=keys)
    app.add_middleware(DrainMiddleware, drainer=drainer)
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    return app
