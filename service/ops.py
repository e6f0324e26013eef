"""Operations routes: liveness, readiness (with per-component details), Prometheus metrics.

/healthz (GET and HEAD) says only that the process serves HTTP: it never looks at a
component or at load, so an outage or a full listener does not make a liveness probe
restart the pod. /readyz checks, concurrently and each within a few seconds:
  model       GET <model_url>/models lists the configured model (in-process engine: loaded)
  model_calls the gateway's own recent model calls did not all fail
              (`service.model_health`: the last N failed within a window = not ready)
  capacity    the public listener is not full (`max_connections` connections open; the
              probe listener and the fields under `scope["state"]` are set by
              `service.http_protocol`; under another server it is always ok)
  sandbox     executor.ping() when it has one, else a session runs `1 + 1` and closes
  retriever   retriever.ping() (backend, index, document count); "disabled" without one
  tools       every tool provider's health; a configured tool the checkpoint was not trained
              with (its distillery_tools.json) is a `warning` on the check and in
              `warnings`, and the gateway stays ready
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Literal

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.responses import Response

from service.gateway import Gateway
from service.http_protocol import LISTENER_KEY, ListenerInfo
from service.metrics import CONTENT_TYPE

router = APIRouter(tags=["operations"])

CHECK_TIMEOUT_S = 5.0


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    uptime_s: float


class CheckResult(BaseModel):
    ok: bool
    latency_ms: float
    detail: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None
    warning: str | None = None
    """Something an operator should know that does not stop serving (e.g. untrained tools)."""


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    checks: dict[str, CheckResult]
    in_flight: int
    queued: int
    warnings: list[str] = Field(default_factory=list)
    """Every check's warning, prefixed with the check's name (ready all the same)."""


def _gateway(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


@router.head("/healthz", include_in_schema=False)
@router.get("/healthz", response_model=Health, summary="Liveness: the process serves HTTP")
async def healthz(request: Request) -> Health:
    return Health(uptime_s=round(time.time() - _gateway(request).started_at, 3))


@router.head("/readyz", include_in_schema=False)
@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Readiness: model server, sandbox and retriever reachable",
    responses={503: {"model": Readiness, "description": "Some component is not usable"}},
)
async def readyz(request: Request) -> JSONResponse:
    gw = _gateway(request)
    checks: dict[str, CheckResult]
    if gw.draining:
        checks = {"shutdown": CheckResult(ok=False, latency_ms=0.0,
                                          error="draining: the server is shutting down")}
    elif gw.components is None:
        why = gw.startup_error or "components are still loading"
        checks = {"components": CheckResult(ok=False, latency_ms=0.0, error=why)}
    else:
        names = ["model", "sandbox", "retriever", "tools"]
        results = await asyncio.gather(
            _timed(_check_model(gw)), _timed(_check_sandbox(gw)), _timed(_check_retriever(gw)),
            _timed(_check_tools(gw)),
        )
        checks = dict(zip(names, results, strict=True))
        checks["tools"].warning = gw.components.untrained_warning()
        checks["model_calls"] = _check_model_calls(gw)
        checks["capacity"] = _check_capacity(request)
    ready = all(c.ok for c in checks.values())
    body = Readiness(
        status="ready" if ready else "not_ready",
        checks=checks,
        in_flight=gw.admission.active,
        queued=gw.admission.queued,
        warnings=[f"{name}: {c.warning}" for name, c in checks.items() if c.warning],
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if ready else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE.split(";")[0]: {"schema": {"type": "string"}}},
                     "description": "Prometheus text exposition format"}},
)
async def metrics(request: Request) -> Response:
    return Response(_gateway(request).metrics.render(), media_type=CONTENT_TYPE)


async def _timed(check: Any) -> CheckResult:
    t0 = time.perf_counter()
    try:
        detail = await asyncio.wait_for(check, CHECK_TIMEOUT_S)
        return CheckResult(ok=True, latency_ms=_ms(t0), detail=detail)
    except TimeoutError:
        return CheckResult(ok=False, latency_ms=_ms(t0), error=f"no answer in {CHECK_TIMEOUT_S}s")
    except Exception as e:  # a failed check is a result, not a server error
        return CheckResult(ok=False, latency_ms=_ms(t0), error=f"{type(e).__name__}: {e}")


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 2)


async def _check_model(gw: Gateway) -> dict[str, Any]:
    assert gw.components is not None
    model = gw.components.model
    base_url = getattr(model, "base_url", None)
    if not base_url:
        return {"kind": "in-process", "model": model.model_name}
    headers = {}
    key = gw.config.model_api_key
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    # One quick request, no retries: readiness must answer fast and say why.
    async with httpx.AsyncClient(timeout=CHECK_TIMEOUT_S - 1) as client:
        resp = await client.get(f"{base_url}/models", headers=headers)
    if resp.status_code != 200:
        raise RuntimeError(f"GET {base_url}/models answered HTTP {resp.status_code}")
    served = [str(m.get("id")) for m in resp.json().get("data", [])]
    if model.model_name not in served:
        raise RuntimeError(
            f"model server {base_url} does not serve {model.model_name!r} (it serves {served})"
        )
    return {"kind": "openai", "url": base_url, "model": model.model_name}


async def _check_sandbox(gw: Gateway) -> dict[str, Any]:
    assert gw.components is not None
    executor = gw.components.executor
    ping = getattr(executor, "ping", None)
    if ping is not None:
        pinged = await ping()
        return dict(pinged) if isinstance(pinged, dict) else {"detail": str(pinged)}
    session = await executor.open_session({})
    try:
        result = await session.run("1 + 1")
    finally:
        await session.close()
    if not result.ok:
        raise RuntimeError(f"sandbox could not run `1 + 1`: {result.error}")
    detail: dict[str, Any] = {"kind": type(executor).__name__, "value": result.value_repr}
    stats = getattr(executor, "stats", None)
    if callable(stats):
        detail["stats"] = stats()
    return detail


async def _check_retriever(gw: Gateway) -> dict[str, Any]:
    assert gw.components is not None
    retriever = gw.components.retriever
    if retriever is None:
        return {"kind": "disabled"}
    return dict(await retriever.ping())


async def _check_tools(gw: Gateway) -> dict[str, Any]:
    """Each tool provider's health (web_search, MCP servers); any failing one fails it.
    With a checkpoint that records its trained tools, `untrained` lists the configured ones
    outside them (a warning on the check, not a failure)."""
    assert gw.components is not None
    report: dict[str, Any] = await gw.components.tools.health()
    failed = [f"{name}: {r.get('error')}" for name, r in report.items() if not r["ok"]]
    if failed:
        raise RuntimeError("; ".join(failed))
    if gw.components.trained_tools is not None:
        report["untrained"] = gw.components.untrained_tools()
    return report


def _check_model_calls(gw: Gateway) -> CheckResult:
    report = gw.metrics.model_health.check()
    return CheckResult(ok=report.ok, latency_ms=0.0, error=report.error, detail={
        "recent_calls": report.recent_calls, "recent_failures": report.recent_failures,
        "last_error": report.last_error})


def _check_capacity(request: Request) -> CheckResult:
    info = request.scope.get("state", {}).get(LISTENER_KEY)
    if not isinstance(info, ListenerInfo):
        return CheckResult(ok=True, latency_ms=0.0, detail={"connections": None})
    stats = info.stats
    detail = {"connections": stats.public_open, "max_connections": stats.max_connections}
    if info.saturated:
        return CheckResult(ok=False, latency_ms=0.0, detail=detail, error=(
            f"the public listener holds its maximum of {stats.max_connections} connections "
            "(new ones are refused)"))
    return CheckResult(ok=True, latency_ms=0.0, detail=detail)
