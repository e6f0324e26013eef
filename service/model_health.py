"""Recent model-call outcomes, for readiness: `ModelHealth`.

`/readyz` asks the model server whether it lists the model, which stays true while every
call fails (overloaded, a broken adapter, a server that answers 500 to everything). The
gateway's own calls say more: `ModelHealth.record(error)` is told the outcome of every
model call (`service.model_metrics.InstrumentedModel`), and `check()` reports not ready
while the last `failures` calls all failed and the oldest of them ended less than
`window_s` seconds ago. A success clears it; so does time: with the pod out of the
Service no new calls come, the failures age out of the window and the pod is tried again.

Only failures of the model server count: a `ModelRequestError` (the server refused this
request, 4xx) says nothing about the server's health, and counting it would let one
client take every replica out of rotation.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from agent.model_client import ModelRequestError

__all__ = ["ModelHealth", "ModelHealthReport"]


@dataclass(frozen=True)
class ModelHealthReport:
    ok: bool
    recent_calls: int
    recent_failures: int
    last_error: str | None
    error: str | None


class ModelHealth:
    """See the module docstring. `failures=0` turns the check off."""

    def __init__(self, failures: int = 5, window_s: float = 60.0) -> None:
        self.failures = failures
        self.window_s = window_s
        self._recent: deque[tuple[float, str | None]] = deque(maxlen=max(1, failures))
        self._last_error: str | None = None

    def record(self, error: BaseException | None) -> None:
        """One model call ended: `error` is None on success."""
        if isinstance(error, ModelRequestError):
            return  # this request's fault, not the server's
        text = None if error is None else f"{type(error).__name__}: {error}"[:300]
        if text is not None:
            self._last_error = text
        self._recent.append((time.monotonic(), text))

    def check(self, now: float | None = None) -> ModelHealthReport:
        now = time.monotonic() if now is None else now
        failed = [t for t, err in self._recent if err is not None]
        unhealthy = (
            self.failures > 0
            and len(failed) == len(self._recent) == self.failures
            and now - failed[0] < self.window_s
        )
        error = None
        if unhealthy:
            error = (f"the last {self.failures} model calls failed within {self.window_s:g} s "
                     f"(last: {self._last_error})")
        return ModelHealthReport(
            ok=not unhealthy, recent_calls=len(self._recent), recent_failures=len(failed),
            last_error=self._last_error, error=error,
        )
