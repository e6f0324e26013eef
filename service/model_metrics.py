"""Model-call metrics without hooks in the model client: a wrapper and a scrape-time collector.

`InstrumentedModel(model, metrics)` is the `ModelClient` the gateway's runs use: every
`complete` call (and, for a streaming client, every `stream` until it ends or fails) is
timed into `distillery_model_request_seconds{outcome="ok"|"error"}`, and a failure adds
one to `distillery_model_failures_total{error_type}` (ModelUnavailable: an outage;
ModelRequestError: the server refused the request; ModelError: a malformed reply, such as
a stream with `choices: []` throughout or one cut off without a finish reason or
`[DONE]`). These names are stable (dashboards, alerts and readiness read them). Other
attributes pass through to the wrapped client, which stays the runtime's.
Replies are also made safe to re-send: a choice's text (or a streamed delta's) that
holds characters UTF-8 cannot encode (a lone surrogate from a `\udfff` escape in the
server's JSON) has them replaced, so the next model request and the response can always
be encoded. `ModelStatsCollector` exposes `distillery_model_retries_total` (and attempts) from the
client's own counters (`OpenAIChatClient.stats.retries` / `.attempts`), read at scrape time:
a retry happens inside one call, so only the client can count it. A client without
`stats` reports 0.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from agent.model_client import Completion, Message, ModelClient, SamplingParams
from service.metrics import Metrics
from service.textsafe import is_encodable, scrub

__all__ = ["InstrumentedModel", "ModelStatsCollector", "instrument"]


class InstrumentedModel:
    """See the module docstring."""

    def __init__(self, model: ModelClient, metrics: Metrics) -> None:
        self.inner = model
        self.metrics = metrics
        self.model_name: str = model.model_name

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _observe(self, started: float, error: BaseException | None) -> None:
        outcome = "ok" if error is None else "error"
        self.metrics.model_latency.labels(outcome).observe(time.perf_counter() - started)
        if error is not None:
            self.metrics.model_failures.labels(type(error).__name__).inc()
        self.metrics.model_health.record(error)  # readiness (service.model_health)

    async def complete(
        self, messages: Sequence[Message], params: SamplingParams, **kwargs: Any
    ) -> Completion:
        t0 = time.perf_counter()
        try:
            completion = await self.inner.complete(messages, params, **kwargs)
        except Exception as e:
            self._observe(t0, e)
            raise
        self._observe(t0, None)
        for choice in completion.choices:
            if not is_encodable(choice.text):
                choice.text = scrub(choice.text)
        return completion

    async def aclose(self) -> None:
        await self.inner.aclose()


class InstrumentedStreamingModel(InstrumentedModel):
    """For clients with `stream(...)`: the stream is timed from the first read to its end."""

    def stream(self, messages: Sequence[Message], params: SamplingParams, **kwargs: Any) -> Any:
        inner_stream = self.inner.stream(messages, params, **kwargs)  # type: ignore[attr-defined]
        return _TimedStream(inner_stream, self)


class _TimedStream:
    def __init__(self, inner: Any, owner: InstrumentedModel) -> None:
        self._inner = inner
        self._owner = owner
        self._started: float | None = None
        self._observed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _end(self, error: BaseException | None) -> None:
        if not self._observed and self._started is not None:
            self._observed = True
            self._owner._observe(self._started, error)

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        self._started = time.perf_counter()
        try:
            async for item in self._inner:
                text = getattr(item, "text", None)
                if isinstance(text, str) and not is_encodable(text):
                    item.text = scrub(text)
                yield item
        except Exception as e:
            self._end(e)
            raise
        self._end(None)

    async def aclose(self) -> None:
        self._end(None)
        await self._inner.aclose()


def instrument(model: ModelClient, metrics: Metrics) -> InstrumentedModel:
    if isinstance(model, InstrumentedModel):
        return model
    if callable(getattr(model, "stream", None)):
        return InstrumentedStreamingModel(model, metrics)
    return InstrumentedModel(model, metrics)


class ModelStatsCollector(Collector):
    """Retries and attempts from the live model client's `stats` (see the module)."""

    def __init__(self, model: Callable[[], Any]) -> None:
        self._model = model

    def collect(self) -> Iterable[CounterMetricFamily]:
        model = self._model()
        inner = getattr(model, "inner", model)
        stats = getattr(inner, "stats", None) if inner is not None else None
        retries = CounterMetricFamily(
            "distillery_model_retries", "Model requests re-sent after a transient failure"
        )
        attempts = CounterMetricFamily(
            "distillery_model_attempts", "Model HTTP attempts, retries included"
        )
        retries.add_metric([], float(getattr(stats, "retries", 0) or 0))
        attempts.add_metric([], float(getattr(stats, "attempts", 0) or 0))
        yield retries
        yield attempts

    def describe(self) -> Iterable[CounterMetricFamily]:
        return []
