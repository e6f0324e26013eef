"""`POST /v1/solve`: one agent run per request, as one JSON body or as server-sent events.

Events with `stream: true` (each `data:` is one JSON object on one line):
    event: start   {"id", "model", "created"}
    event: step    a StepOut, as each step completes
    event: result  the SolveResponse (same body as without streaming)
    event: error   the error shape, if the run could not produce a result: the same error
                   object (and code) the JSON form answers with its status, e.g. 503
                   model_unavailable when the model server is down
plus `: keep-alive` comments during long steps.

Admission, the deadline and the model server's Retry-After: service.serving_base.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response

from service.errors import APIError, api_error_payload, error_payload
from service.gateway import (
    DoneEvent,
    FailedEvent,
    RunGroup,
    RunSpec,
    StepEvent,
    new_run_id,
    outage_error,
)
from service.protocol_solve import SolveRequest, SolveResponse, SolveStart, StepOut
from service.serving_base import ServingBase
from service.sse import KEEPALIVE, RunStreamingResponse, sse_event, sse_json
from service.textsafe import model_json

ENDPOINT = "solve"


class SolveService(ServingBase):
    ENDPOINT = ENDPOINT

    async def solve(self, req: SolveRequest, request: Request) -> Response:
        gw = self.gateway
        arrived = time.monotonic()
        gw.require_components()  # 503 before queueing when not ready
        spec = RunSpec(req.question, gw.agent_config(
            max_steps=req.max_steps,
            samples=req.samples,
            policy=req.policy,
            temperature=req.temperature,
            top_p=req.top_p,
            max_tokens=req.max_tokens,
            seed=req.seed,
        ), new_run_id("solve"), tools=gw.tool_subset(req.tools, "tools"))
        admitted = await self.admit(request, req.timeout_s, lambda: [spec], arrived=arrived)
        group, queue_s = admitted.group, admitted.queue_s
        if req.stream:
            return RunStreamingResponse(
                self._events(group, spec.run_id, req, arrived, queue_s), on_close=group.cancel
            )
        [traj] = await group.results(request)
        outage = outage_error(traj, gw.config)
        if outage is not None:
            raise self.upstream(outage, admitted)
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
