"""The state every route shares (config, components, admission, metrics) and how runs execute.

A request becomes one or more agent runs (`RunGroup`): each run is an asyncio task around
`run_agent`, its steps and its result arrive on one queue, so the same code serves the
plain JSON answer, /v1/solve's event stream and OpenAI streaming chunks. Cancelling the
group (client gone, deadline, shutdown) cancels the tasks; `run_agent` then closes its
execution session, which kills the sandbox processes. The request's run slot is released
only when every task has really finished, so a slot never outlives or undercounts a sandbox.

Shutdown (`service.shutdown`): `Gateway.draining` refuses new runs (503, Retry-After) and
`abort_all(error)` ends the live groups: every unfinished run yields `FailedEvent(error)`
(streams send it as `event: error`) and `results()` raises it (the JSON error body).
Runs reach the model through `service.model_metrics.InstrumentedModel` (request latency
and failures, whatever the outcome).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.types import Receive

from agent.answer_check import AnswerCheck
from agent.tool_providers import UnknownToolsError
from agent.trajectory import Step, Trajectory
from service.config import ServiceConfig
from service.errors import APIError
from service.limits import AdmissionController, Slot
from service.metrics import Metrics
from service.model_metrics import InstrumentedModel, instrument
from service.public_errors import (
    MODEL_ERRORS,
    SANDBOX_OUTAGES,
    model_error_message,
    model_outage_message,
    public_run_error,
    sandbox_outage_message,
)
from service.schema_check import AnswerValidator

if TYPE_CHECKING:
    from agent.agent import AgentConfig
    from agent.runtime import Runtime as Components

log = logging.getLogger("distillery.runs")

# Extra time past a run's own deadline before the gateway gives up on it (504): the agent
# normally ends a late run itself with finish_reason "timeout".
HARD_DEADLINE_GRACE_S = 5.0
KEEPALIVE_S = 15.0


@dataclass
class RunSpec:
    question: str
    config: AgentConfig
    run_id: str
    answer_check: AnswerCheck | None = None
    """Host-side check of the final answer (structured outputs), see agent.answer_check."""
    tools: tuple[str, ...] | None = None
    """The configured tools this run may use (a request's subset); None: all of them."""


@dataclass
class StepEvent:
    index: int
    step: Step


@dataclass
class DoneEvent:
    index: int
    trajectory: Trajectory


@dataclass
class FailedEvent:
    index: int
    error: BaseException


RunEvent = StepEvent | DoneEvent | FailedEvent


def new_run_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


class Gateway:
    """Shared by all routes through `app.state.gateway`."""

    def __init__(self, config: ServiceConfig, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        self.admission = AdmissionController(
            config.max_concurrency, config.max_queue, metrics
        )
        self.components: Components | None = None
        self.startup_error: str | None = None
        self.started_at = time.time()
        self.groups: set[RunGroup] = set()
        """Live run groups (for shutdown)."""
        self.draining = False
        """Set at shutdown: no new run is admitted."""
        self._instrumented: InstrumentedModel | None = None
        self.answer_validator = AnswerValidator(
            workers=config.answer_check_workers, timeout_s=config.answer_check_timeout_s,
            on_outcome=lambda outcome: metrics.answer_checks.labels(outcome).inc(),
        )
        """Checks structured-output answers in child processes (closed with the app)."""

    # -- shutdown ------------------------------------------------------------------
    def shutdown_error(self) -> APIError:
        retry = str(self.config.shutdown_retry_after_s)
        return APIError(
            503,
            f"the server is shutting down; retry in {retry}s (another replica will answer)",
            code="shutting_down",
            headers={"Retry-After": retry, "Connection": "close"},
        )

    def begin_drain(self) -> int:
        """Refuse new runs from now on and fail the queued ones; returns how many were queued."""
        self.draining = True
        return self.admission.reject_waiters(self.shutdown_error())

    def abort_all(self, error: APIError | None = None) -> int:
        """End every live run group with `error` (default: the shutdown 503)."""
        err = error or self.shutdown_error()
        groups = list(self.groups)
        for group in groups:
            group.abort(err)
        return len(groups)

    def run_model(self, components: Components) -> InstrumentedModel:
        """The runtime's model client, wrapped for metrics (one wrapper per client)."""
        current = self._instrumented
        if current is None or current.inner is not components.model:
            current = self._instrumented = instrument(components.model, self.metrics)
        return current

    # -- components ----------------------------------------------------------------
    def require_components(self) -> Components:
        if self.components is None:
            why = self.startup_error or "components are still loading"
            raise APIError(
                503,
                f"service not ready: {why}; see GET /readyz",
                code="not_ready",
                headers={"Retry-After": "5"},
            )
        return self.components

    def tool_subset(self, names: list[str] | None, param: str) -> tuple[str, ...] | None:
        """A request's choice of the configured tools; unknown names are a 400 naming them."""
        if names is None:
            return None
        try:
            self.require_components().tools.check(names)
        except UnknownToolsError as e:
            raise APIError(400, f"{e}; GET /v1/tools lists them", code="unknown_tools",
                           param=param) from None  # fmt: skip
        return tuple(dict.fromkeys(names))

    @property
    def model_name(self) -> str:
        if self.components is not None:
            return self.components.model.model_name
        return self.config.model_name or "distillery"

    # -- requests ------------------------------------------------------------------
    def deadline(self, requested_s: float | None) -> float:
        """Absolute (monotonic) deadline: the request's timeout capped by the server's."""
        limit = self.config.request_timeout_s
        if requested_s is not None:
            limit = min(limit, requested_s)
        return time.monotonic() + limit

    def agent_config(self, **overrides: Any) -> AgentConfig:
        known = {k: v for k, v in overrides.items() if v is not None}
        return replace(self.config.agent, **known)

    async def admit(self, deadline: float) -> Slot:
        if self.draining:
            raise self.shutdown_error()
        return await self.admission.acquire(timeout_s=max(0.0, deadline - time.monotonic()))

    async def admit_unless_gone(self, deadline: float, request: Request) -> Slot:
        """A slot, unless the client left while queued (then no run starts for it)."""
        slot = await self.admit(deadline)
        if await request.is_disconnected():
            slot.release()
            self.metrics.rejected.labels("client_gone").inc()
            raise APIError(499, "client closed the connection while queued",
                           code="client_closed_request")
        return slot

    def start(
        self, specs: list[RunSpec], slot: Slot, deadline: float, endpoint: str
    ) -> RunGroup:
        components = self.require_components()
        return RunGroup(self, components, specs, slot, deadline, endpoint)


class RunGroup:
    """One request's agent runs, running concurrently; see the module docstring."""

    def __init__(
        self,
        gateway: Gateway,
        components: Components,
        specs: list[RunSpec],
        slot: Slot,
        deadline: float,
        endpoint: str,
    ) -> None:
        self.gateway = gateway
        self.components = components
        self.endpoint = endpoint
        self.deadline = deadline
        self.queue: asyncio.Queue[RunEvent] = asyncio.Queue()
        self.admitted_at = time.monotonic()
        self.abort_error: APIError | None = None
        self._aborted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.model = gateway.run_model(components)
        self.tasks = [asyncio.create_task(self._run(i, s)) for i, s in enumerate(specs)]
        everything = asyncio.gather(*self.tasks, return_exceptions=True)
        self._all_done = everything
        gateway.groups.add(self)

        def _finished(_: asyncio.Future[Any]) -> None:
            slot.release()
            gateway.groups.discard(self)
            gateway.admission.record_run(time.monotonic() - self.admitted_at)

        everything.add_done_callback(_finished)

    async def _run(self, index: int, spec: RunSpec) -> Trajectory:
        from agent.agent import run_agent

        remaining = self.deadline - time.monotonic()
        config = spec.config
        if config.timeout_s is None or config.timeout_s > remaining:
            config = replace(config, timeout_s=max(0.001, remaining))

        async def on_step(step: Step) -> None:
            self.queue.put_nowait(StepEvent(index, step))

        metrics = self.gateway.metrics
        t0 = time.perf_counter()
        try:
            traj = await asyncio.wait_for(
                run_agent(
                    spec.question,
                    model=self.model,
                    executor=self.components.executor,
                    tools=self.components.tools_for_run(spec.tools),
                    config=config,
                    on_step=on_step,
                    run_id=spec.run_id,
                    answer_check=spec.answer_check,
                    protocol=self.components.protocol,
                ),
                timeout=max(0.001, remaining) + HARD_DEADLINE_GRACE_S,
            )
        except TimeoutError:
            metrics.runs.labels(self.endpoint, "deadline").inc()
            err = APIError(504, "the run did not finish by the request deadline; retry later")
            self.queue.put_nowait(FailedEvent(index, err))
            raise err from None
        except asyncio.CancelledError:
            reason = "shutdown" if self.abort_error is not None else "cancelled"
            metrics.runs.labels(self.endpoint, reason).inc()
            log.info("run cancelled", extra={"fields": {"event": "run_cancelled",
                                                         "run_id": spec.run_id,
                                                         "reason": reason}})
            raise
        except Exception as e:
            metrics.runs.labels(self.endpoint, "crashed").inc()
            log.exception("run crashed", extra={"fields": {"run_id": spec.run_id}})
            self.queue.put_nowait(FailedEvent(index, e))
            raise
        elapsed = time.perf_counter() - t0
        metrics.run_latency.labels(self.endpoint).observe(elapsed)
        metrics.observe_trajectory(traj, self.endpoint)
        log.info(
            "run finished",
            extra={
                "fields": {
                    "event": "run_finished",
                    "run_id": spec.run_id,
                    "finish_reason": traj.finish_reason,
                    "steps": len(traj.steps),
                    "tokens": traj.usage.total_tokens,
                    "run_s": round(elapsed, 4),
                    "error_type": traj.error_type,
                }
            },
        )
        self.queue.put_nowait(DoneEvent(index, traj))
        return traj

    @property
    def done(self) -> bool:
        return self._all_done.done()

    def cancel(self) -> None:
        for t in self.tasks:
            t.cancel()

    def abort(self, error: APIError) -> None:
        """End the unfinished runs with `error`: one FailedEvent each, and `results()`
        raises it. Runs that already finished keep their results."""
        if self.abort_error is not None or self.done:
            return
        self.abort_error = error
        for i, t in enumerate(self.tasks):
            if not t.done():
                self.queue.put_nowait(FailedEvent(i, error))
                t.cancel()
        if not self._aborted.done():
            self._aborted.set_result(None)

    async def events(self, keepalive_s: float = KEEPALIVE_S) -> AsyncIterator[RunEvent | None]:
        """Steps and ends of every run as they happen; None every `keepalive_s` of silence."""
        remaining = len(self.tasks)
        while remaining:
            try:
                ev = await asyncio.wait_for(self.queue.get(), keepalive_s)
            except TimeoutError:
                yield None
                continue
            if isinstance(ev, DoneEvent | FailedEvent):
                remaining -= 1
            yield ev

    async def results(self, request: Request | None = None) -> list[Trajectory]:
        """Every run's trajectory, in order. With `request`, a client disconnect cancels
        the runs (raises APIError 499); any run failure is raised."""
        waiter = asyncio.ensure_future(asyncio.gather(*self.tasks))
        watcher = (
            asyncio.ensure_future(wait_for_disconnect(request.receive))
            if request is not None
            else None
        )
        try:
            pending: set[asyncio.Future[Any]] = {waiter, self._aborted}
            if watcher is not None:
                pending.add(watcher)
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if self.abort_error is not None:
                raise self.abort_error
            if waiter in done:
                return list(waiter.result())
            raise APIError(499, "client closed the connection; run cancelled",
                           code="client_closed_request")
        finally:
            if watcher is not None:
                watcher.cancel()
            if not waiter.done():
                self.cancel()
                waiter.cancel()
            # Consume the gather's outcome so no "exception never retrieved" is logged.
            waiter.add_done_callback(_swallow)


def _swallow(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


async def wait_for_disconnect(receive: Receive) -> None:
    """Return when the client goes away (the ASGI server reports http.disconnect)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


def retry_after_for_model_outage(config: ServiceConfig) -> str:
    return str(max(1, math.ceil(min(30.0, config.model_timeout_s / 4))))


# Error types (Trajectory.error_type) that mean a component is down, not that this run failed.


def outage_error(traj: Trajectory, config: ServiceConfig) -> APIError | None:
    """503 when a run ended in error because the model server or the sandbox is unusable."""
    if traj.finish_reason != "error":
        return None
    if traj.error_type == "ModelUnavailable":
        return APIError(
            503,
            model_outage_message(traj),
            code="model_unavailable",
            headers={"Retry-After": retry_after_for_model_outage(config)},
        )
    if traj.error_type in SANDBOX_OUTAGES:
        return APIError(
            503,
            sandbox_outage_message(traj),
            code="sandbox_unavailable",
            headers={"Retry-After": "5"},
        )
    return None


def run_error(traj: Trajectory, config: ServiceConfig) -> APIError | None:
    """For APIs without a place for a failed run (chat): every error becomes a status."""
    if traj.finish_reason != "error":
        return None
    outage = outage_error(traj, config)
    if outage is not None:
        return outage
    if traj.error_type in MODEL_ERRORS:
        return APIError(502, model_error_message(traj), code="model_error")
    return APIError(500, f"the agent run failed: {public_run_error(traj) or traj.error_type}",
                    code="agent_error", type="server_error")
