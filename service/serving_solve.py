"""`POST /v1/solve`: one agent run per request, as one JSON body or as server-sent events.

Events with `stream: true` (each `data:` is one JSON object on one line):
    event: start   {"id", "model", "created"}
    event: step    a StepOut, as each step completes
    event: result  the SolveResponse (same body as without streaming)
    event: error   the error shape, if the run could not produce a result: the same error
                   object (and code) the JSON form answers with its status, e.g. 503
                   model_unavailable when the model server is down
plus `: keep-alive` comments during long steps.

Every route starts its runs with `start_runs`: their model calls see the request's
deadline (`agent.call_scope`), so the model client never waits to retry past it, and a
503 for a model outage carries the model server's own Retry-After (`upstream_retry_after`).
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response

from agent import CallScope, call_scope
from service.errors import APIError, api_error_payload, error_payload
from service.gateway import (
    DoneEvent,
    FailedEvent,
    Gateway,
    RunGroup,
    RunSpec,
    StepEvent,
    new_run_id,
    outage_error,
)
from service.limits import Slot
from service.protocol_solve import SolveRequest, SolveResponse, SolveStart, StepOut
from service.sse import KEEPALIVE, RunStreamingResponse, sse_event, sse_json
from service.textsafe import model_json

ENDPOINT = "solve"


def start_runs(
    gw: Gateway, specs: list[RunSpec], slot: Slot, deadline: float, endpoint: str
) -> tuple[RunGroup, CallScope]:
    """`gw.start(...)` with the runs' model calls bound to `deadline` (time.monotonic());
    the returned scope collects the Retry-After a failed model call was answered with."""
    with call_scope(deadline) as scope:  # the run tasks copy the context at creation
        return gw.start(specs, slot, deadline, endpoint), scope


def upstream_retry_after(error: APIError, scope: CallScope) -> APIError:
    """`error`, with the model server's Retry-After (whole seconds, at least 1) when it is
    a model outage and the model server named a wait."""
    if error.code == "model_unavailable" and scope.retry_after_s is not None:
        error.headers["Retry-After"] = str(max(1, math.ceil(scope.retry_after_s)))
    return error


class SolveService:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def solve(self, req: SolveRequest, request: Request) -> Response:
        gw = self.gateway
        arrived = time.monotonic()
        gw.require_components()  # 503 before queueing when not ready
        deadline = gw.deadline(req.timeout_s)
        slot = await gw.admit_unless_gone(deadline, request)
        queue_s = time.monotonic() - arrived
        gw.metrics.queue_wait.observe(queue_s)
        try:
            config = gw.agent_config(
                max_steps=req.max_steps,
                samples=req.samples,
                policy=req.policy,
                temperature=req.temperature,
                top_p=req.top_p,
                max_tokens=req.max_tokens,
                seed=req.seed,
            )
            spec = RunSpec(req.question, config, new_run_id("solve"))
            group, scope = start_runs(gw, [spec], slot, deadline, ENDPOINT)
        except BaseException:
            slot.release()
            raise
        if req.stream:
            return RunStreamingResponse(
                self._events(group, spec.run_id, req, arrived, queue_s), on_close=group.cancel
            )
        [traj] = await group.results(request)
        outage = outage_error(traj, gw.config)
        if outage is not None:
            raise upstream_retry_after(outage, scope)
        body = SolveResponse.of(
            traj,
            queue_s=queue_s,
            total_s=time.monotonic() - arrived,
            include_candidates=req.include_candidates,
        )
        return Response(model_json(body), media_type="application/json")

    async def _events(
        self, group: RunGroup, run_id: str, req: SolveRequest, arrived: float, queue_s: float
    ) -> AsyncIterator[bytes]:
        start = SolveStart(id=run_id, model=self.gateway.model_name, created=int(time.time()))
        yield sse_event(start.model_dump_json(), "start")
        try:
            async for ev in group.events():
                if ev is None:
                    yield KEEPALIVE
                elif isinstance(ev, StepEvent):
                    step = StepOut.of(ev.step, include_candidates=req.include_candidates)
                    yield sse_event(model_json(step), "step")
                elif isinstance(ev, DoneEvent):
                    outage = outage_error(ev.trajectory, self.gateway.config)
                    if outage is not None:
                        yield sse_json(api_error_payload(outage), "error")
                        continue
                    result = SolveResponse.of(
                        ev.trajectory,
                        queue_s=queue_s,
                        total_s=time.monotonic() - arrived,
                        include_candidates=req.include_candidates,
                    )
                    yield sse_event(model_json(result), "result")
                elif isinstance(ev, FailedEvent):
                    yield sse_json(_failure_payload(ev.error), "error")
        finally:
            group.cancel()


def _failure_payload(error: BaseException) -> dict[str, object]:
    if isinstance(error, APIError):
        return api_error_payload(error)
    return error_payload(500, f"the run failed: {type(error).__name__}", code="internal_error")
