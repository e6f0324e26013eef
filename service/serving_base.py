"""`ServingBase`: what every endpoint does around its runs, written once.

Each serving class (solve, chat completions, responses) is a `ServingBase` with its
`ENDPOINT` name. Contract:
- `check_model(model_id, param)`: 503 while the components are not up, 404 (OpenAI's
  model_not_found) unless `model_id` is the served model.
- `await admit(request, timeout_s, build_specs)`: the request's deadline, a run slot
  (429 when the queue is full, 504 when the deadline passes in the queue, nothing when
  the client went away), the queue-wait metric, then `build_specs()` and the runs started
  with their model calls bound to the deadline (`agent.call_scope`: the model client
  never waits to retry past it). If building or starting fails, the slot is released.
  Returns an `Admitted` (the run group, the call scope, when it arrived, how long it
  queued).
- `upstream(error, admitted)`: a model-outage error carrying the model server's own
  Retry-After when it named one.
Request validation that is specific to an endpoint happens before `admit`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from starlette.requests import Request

from agent import CallScope, call_scope
from service.errors import APIError
from service.gateway import Gateway, RunGroup, RunSpec

__all__ = ["Admitted", "ServingBase"]


@dataclass
class Admitted:
    group: RunGroup
    scope: CallScope
    """Collects the Retry-After a failed model call was answered with."""
    arrived: float
    """time.monotonic() when the request arrived."""
    queue_s: float


class ServingBase:
    ENDPOINT: ClassVar[str]
    """The endpoint's name in metrics and logs."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def check_model(self, model_id: str, param: str | None = "model") -> None:
        gw = self.gateway
        gw.require_components()
        if model_id != gw.model_name:
            raise APIError(
                404,
                f"The model `{model_id}` does not exist; this server serves "
                f"`{gw.model_name}` (GET /v1/models)",
                code="model_not_found",
                type="invalid_request_error",
                param=param,
            )

    async def admit(
        self,
        request: Request,
        timeout_s: float | None,
        build_specs: Callable[[], list[RunSpec]],
        *,
        arrived: float | None = None,
    ) -> Admitted:
        gw = self.gateway
        arrived = time.monotonic() if arrived is None else arrived
        deadline = gw.deadline(timeout_s)
        slot = await gw.admit_unless_gone(deadline, request)
        queue_s = time.monotonic() - arrived
        gw.metrics.queue_wait.observe(queue_s)
        try:
            specs = build_specs()
            with call_scope(deadline) as scope:  # the run tasks copy the context at creation
                group = gw.start(specs, slot, deadline, self.ENDPOINT)
        except BaseException:
            slot.release()
            raise
        return Admitted(group, scope, arrived, queue_s)

    @staticmethod
    def upstream(error: APIError, admitted: Admitted | CallScope | None) -> APIError:
        scope = admitted.scope if isinstance(admitted, Admitted) else admitted
        if (scope is not None and error.code == "model_unavailable"
                and scope.retry_after_s is not None):
            error.headers["Retry-After"] = str(max(1, math.ceil(scope.retry_after_s)))
        return error
