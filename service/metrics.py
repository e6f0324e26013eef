"""Prometheus metrics of the gateway, in a registry owned by one app instance.

Request counters are labelled by route template (never the raw path) to bound cardinality.
Per-run numbers (steps, candidates, errors, sandbox/retrieval latency, tokens) are read
off the finished Trajectory, so the agent loop needs no metrics hooks. Model calls are
timed as they happen, failed ones included (`service.model_metrics`), and model retries
come from the client's own counters at scrape time.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from agent.trajectory import Trajectory
from service.model_health import ModelHealth

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_FAST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        p = "distillery_"
        self.requests = Counter(
            p + "http_requests_total", "HTTP requests by route and status",
            ["method", "route", "status"], registry=r,
        )
        self.request_latency = Histogram(
            p + "http_request_duration_seconds", "HTTP request latency (to the last byte)",
            ["method", "route"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.runs = Counter(
            p + "runs_total", "Agent runs by endpoint and finish reason",
            ["endpoint", "finish_reason"], registry=r,
        )
        self.run_latency = Histogram(
            p + "run_duration_seconds", "Agent run latency (admission to result)",
            ["endpoint"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.queue_wait = Histogram(
            p + "queue_wait_seconds", "Time a run waited for a concurrency slot",
            buckets=_FAST_BUCKETS, registry=r,
        )
        self.steps = Histogram(
            p + "run_steps", "Steps per run (including the final-answer call)",
            buckets=(1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 50), registry=r,
        )
        self.candidates = Histogram(
            p + "step_candidates", "Candidates sampled per step",
            buckets=(1, 2, 4, 8, 16, 32, 64), registry=r,
        )
        self.valid_candidates = Histogram(
            p + "step_valid_candidates", "Candidates per step that parsed and ran without error",
            buckets=(0, 1, 2, 4, 8, 16, 32, 64), registry=r,
        )
        self.parse_errors = Counter(
            p + "candidate_parse_errors_total", "Candidates whose reply could not be parsed",
            registry=r,
        )
        self.execution_errors = Counter(
            p + "candidate_execution_errors_total", "Candidates whose code failed, by error kind",
            ["kind"], registry=r,
        )
        self.sandbox_latency = Histogram(
            p + "sandbox_execution_seconds", "Execution time of one candidate's code",
            buckets=_FAST_BUCKETS, registry=r,
        )
        self.retrieval_latency = Histogram(
            p + "retrieval_seconds", "web_search tool call latency (cache misses)",
            buckets=_FAST_BUCKETS, registry=r,
        )
        self.model_latency = Histogram(
            p + "model_request_seconds",
            "Model request latency (retries included), by outcome: ok or error",
            ["outcome"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.model_failures = Counter(
            p + "model_failures_total",
            "Model requests that failed (after retries), by error type", ["error_type"],
            registry=r,
        )
        self.tokens = Counter(
            p + "model_tokens_total", "Model tokens by kind", ["kind"], registry=r
        )
        self.in_flight = Gauge(p + "runs_in_flight", "Requests holding a run slot", registry=r)
        self.queue_depth = Gauge(p + "queue_depth", "Requests waiting for a run slot", registry=r)
        self.rejected = Counter(
            p + "rejected_total", "Requests refused before running, by reason",
            ["reason"], registry=r,
        )
        self.answer_checks = Counter(
            p + "answer_checks_total",
            "Structured-output answer checks by outcome (ok, rejected, timeout: the check "
            "ran out of time; cancelled: its request ended first; both kill the checker)",
            ["outcome"], registry=r,
        )
        self.model_health = ModelHealth()
        """Recent model-call outcomes for /readyz (not exported; replaced by the app)."""

    def observe_trajectory(self, traj: Trajectory, endpoint: str) -> None:
        self.runs.labels(endpoint, traj.finish_reason).inc()
        self.steps.observe(len(traj.steps))
        self.tokens.labels("prompt").inc(traj.usage.prompt_tokens)
        self.tokens.labels("completion").inc(traj.usage.completion_tokens)
        for step in traj.steps:
            self.candidates.observe(len(step.candidates))
            valid = 0
            for cand in step.candidates:
                if cand.parse_error is not None:
                    self.parse_errors.inc()
                ex = cand.execution
                if ex is None:
                    continue
                self.sandbox_latency.observe(ex.duration_s)
                if ex.ok:
                    valid += 1
                else:
                    self.execution_errors.labels(ex.error_kind or "unknown").inc()
                for call in ex.tool_calls:
                    if call.name == "web_search" and not call.cached:
                        self.retrieval_latency.observe(call.duration_s)
            self.valid_candidates.observe(valid)

    def render(self) -> bytes:
        return generate_latest(self.registry)
