"""Request and response models of `POST /v1/solve` (and its server-sent events)."""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agent.executor import ExecutionResult
from agent.model_client import Usage
from agent.trajectory import Candidate, Step, Trajectory
from service.protocol_common import JSON_SAFE_INT, RequestModel, VisibleText
from service.public_errors import public_run_error

MAX_QUESTION_CHARS = 20_000


MIN_TIMEOUT_S = 0.1
"""A shorter deadline cannot cover even one model call: refused rather than ignored."""


class SolveRequest(RequestModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"question": "What is 17 * 23?", "samples": 4}]},
    )

    question: VisibleText = Field(
        min_length=1,
        max_length=MAX_QUESTION_CHARS,
        pattern=r"\S",
        description="The task, in plain text (at least one visible character)",
    )
    max_steps: int | None = Field(
        None, ge=1, le=50, description="Steps before the final-answer call (default: server's)"
    )
    samples: int | None = Field(
        None, ge=1, le=64, description="N candidate actions per step, SAG (default: server's)"
    )
    policy: Literal["early", "first", "majority"] | None = Field(
        None,
        description="How a step picks its candidate: 'early' (first to finish validly), "
        "'first' (first valid in sampling order) or 'majority' (default: server's)",
    )
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(
        None, ge=1, le=32768, description="Max tokens per model reply (per step)"
    )
    seed: int | None = Field(None, ge=0, le=JSON_SAFE_INT)
    timeout_s: float | None = Field(
        None,
        ge=MIN_TIMEOUT_S,
        le=86400,
        description="Deadline for the whole request (queue + run); capped by the server's "
        "DISTILLERY_REQUEST_TIMEOUT_S. A run cut by it ends with finish_reason 'timeout'.",
    )
    stream: bool = Field(
        False, description="Server-sent events: one `step` event per step, then `result`"
    )
    tools: list[str] | None = Field(
        None,
        max_length=256,
        description="Which of the configured tools the run may use, by name (GET /v1/tools "
        "lists them; unknown names are a 400); default: all. The agent runs them server-side",
    )
    include_candidates: bool = Field(
        True, description="Return every candidate of every step (false: the kept one only)"
    )


class UsageOut(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, u: Usage) -> UsageOut:
        return cls(
            prompt_tokens=u.prompt_tokens,
            completion_tokens=u.completion_tokens,
            total_tokens=u.total_tokens,
        )


class ToolCallOut(BaseModel):
    name: str
    args: list[Any]
    kwargs: dict[str, Any]
    result: str | None = None
    error: str | None = None
    duration_s: float = 0.0
    cached: bool = False


class ExecutionOut(BaseModel):
    ok: bool
    stdout: str
    value_repr: str | None = None
    error: str | None = None
    error_kind: str | None = None
    is_final: bool = False
    final_answer: Any = None
    duration_s: float = 0.0
    state_lost: bool = False
    tool_calls: list[ToolCallOut] = Field(default_factory=list)

    @classmethod
    def of(cls, ex: ExecutionResult) -> ExecutionOut:
        return cls.model_validate(ex.to_dict())  # same fields; to_dict adds `ok`


class CandidateOut(BaseModel):
    index: int = Field(description="Position in sampling order")
    text: str = Field(description="The model's reply")
    thought: str | None = None
    code: str | None = None
    parse_error: str | None = None
    valid: bool = Field(description="Parsed and ran without error")
    finish_reason: str | None = None
    execution: ExecutionOut | None = None

    @classmethod
    def of(cls, c: Candidate) -> CandidateOut:
        return cls(
            index=c.index,
            text=c.text,
            thought=c.thought,
            code=c.code,
            parse_error=c.parse_error,
            valid=c.valid,
            finish_reason=c.finish_reason,
            execution=ExecutionOut.of(c.execution) if c.execution is not None else None,
        )


class StepOut(BaseModel):
    number: int = Field(description="1-based; the observation carries `Call id: call_<number>`")
    kind: Literal["action", "final_answer_call"]
    chosen: int | None = Field(description="Index of the kept candidate; null when none was valid")
    thought: str | None = Field(description="The kept candidate's thought")
    code: str | None = Field(description="The kept candidate's code")
    observation: str
    candidates: list[CandidateOut]
    usage: UsageOut
    model_s: float
    exec_s: float
    total_s: float

    @classmethod
    def of(cls, s: Step, *, include_candidates: bool = True) -> StepOut:
        kept = s.kept if s.candidates else None
        if include_candidates:
            cands = [CandidateOut.of(c) for c in s.candidates]
        else:
            cands = [CandidateOut.of(kept)] if kept is not None else []
        return cls(
            number=s.number,
            kind=s.kind,
            chosen=s.chosen,
            thought=kept.thought if kept else None,
            code=kept.code if kept else None,
            observation=s.observation,
            candidates=cands,
            usage=UsageOut.of(s.usage),
            model_s=s.model_s,
            exec_s=s.exec_s,
            total_s=s.total_s,
        )


class SolveStart(BaseModel):
    """The first event of a streamed run."""

    id: str
    model: str
    created: int


class Timings(BaseModel):
    queue_s: float = Field(description="Waiting for a run slot")
    run_s: float = Field(description="The agent run")
    model_s: float = Field(description="Sum over steps of model request time")
    exec_s: float = Field(description="Sum over steps of code execution time")
    total_s: float = Field(description="Request arrival to response")


class SolveResponse(BaseModel):
    id: str = Field(description="Run id (also in logs)")
    object: Literal["solve.result"] = "solve.result"
    created: int = Field(description="Unix time")
    model: str
    answer: Any = Field(description="The value given to final_answer (any JSON), null if none")
    finish_reason: Literal["answer", "max_steps", "stuck", "error", "timeout"]
    error: str | None = Field(None, description="What failed, when finish_reason is 'error'")
    error_type: str | None = None
    steps: list[StepOut]
    usage: UsageOut
    timings: Timings

    @classmethod
    def of(
        cls,
        traj: Trajectory,
        *,
        queue_s: float,
        total_s: float,
        include_candidates: bool = True,
    ) -> SolveResponse:
        return cls(
            id=traj.id,
            created=int(traj.started_at or time.time()),
            model=traj.model,
            answer=traj.answer,
            finish_reason=traj.finish_reason,
            error=public_run_error(traj),
            error_type=traj.error_type,
            steps=[StepOut.of(s, include_candidates=include_candidates) for s in traj.steps],
            usage=UsageOut.of(traj.usage),
            timings=Timings(
                queue_s=round(queue_s, 6),
                run_s=traj.total_s,
                model_s=sum(s.model_s for s in traj.steps),
                exec_s=sum(s.exec_s for s in traj.steps),
                total_s=round(total_s, 6),
            ),
        )
