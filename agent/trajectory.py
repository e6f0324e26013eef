"""The record of one agent run: every request, every candidate, outcomes, timings, usage.

Serializes to JSON (`Trajectory.to_dict` / `from_dict`); the service returns it, the
CLI prints it with --json, and training reads it back to build SFT data.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from agent.executor import ExecutionResult, ToolCallRecord
from agent.model_client import Message, SamplingParams, Usage

FinishReason = Literal["answer", "max_steps", "stuck", "error", "timeout"]
"""'stuck': the kept action repeated an earlier step (code and observation) with no other
valid candidate, so the run went to the final-answer call before max_steps."""


@dataclass
class ModelRequest:
    """What was sent to the model for one step (or the final-answer call)."""

    messages: list[Message]
    params: SamplingParams
    continue_final_message: bool = False


@dataclass
class Candidate:
    index: int
    """Position in sampling order (0-based)."""
    text: str
    """The model's reply as stored (`<end_code>` appended after a closing fence)."""
    thought: str | None = None
    code: str | None = None
    parse_error: str | None = None
    execution: ExecutionResult | None = None
    finish_reason: str | None = None
    """"stop", "length", or "cancelled": the step ended before this candidate was complete
    (early exit); `text` is then the partial reply, never parsed nor run."""
    tokens: int | None = None
    """Completion tokens of this candidate (None where the backend does not say)."""
    repeat: bool = False
    """Valid, but repeats an earlier step's code with the same observation (stuck detection)."""

    @property
    def valid(self) -> bool:
        return self.parse_error is None and self.execution is not None and self.execution.ok


@dataclass
class Step:
    number: int
    """1-based; the observation of step k carries `Call id: call_k`."""
    request: ModelRequest
    candidates: list[Candidate]
    chosen: int | None
    """Index of the kept candidate; None when none was valid (candidate 0's error is shown)."""
    observation: str
    """The user turn fed back to the model after this step."""
    usage: Usage = field(default_factory=Usage)
    model_s: float = 0.0
    exec_s: float = 0.0
    total_s: float = 0.0
    kind: Literal["action", "final_answer_call"] = "action"
    stuck: bool = False
    """The kept action repeated an earlier step and no other candidate was valid: the run
    went to the final-answer call next."""
    policy: str | None = None
    """How the candidate was picked ('first', 'early', 'majority')."""
    first_valid_s: float | None = None
    """Seconds from the request to the kept candidate's validation (early exit)."""
    note: str | None = None
    """Why the step ran differently from its policy (e.g. a model server that answered the
    streamed request with one JSON body: the candidates came at once, checked in order)."""

    @property
    def kept(self) -> Candidate:
        """The candidate whose text enters the transcript (the chosen one, else the first)."""
        return self.candidates[self.chosen if self.chosen is not None else 0]


@dataclass
class Trajectory:
    id: str
    question: str
    model: str
    answer: Any = None
    answer_source: str | None = None
    """How `answer` was obtained: 'final_answer' (an action step's final_answer call), or
    for the final-answer call an `agent.final_answer.AnswerSource`."""
    finish_reason: FinishReason = "error"
    steps: list[Step] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    """The chat transcript: system, task, then per step the kept assistant turn and observation."""
    usage: Usage = field(default_factory=Usage)
    error: str | None = None
    error_type: str | None = None
    """Exception class name behind `error` (e.g. "ModelUnavailable"), for callers that map it."""
    config: dict[str, Any] = field(default_factory=dict)
    started_at: float = 0.0
    """Unix time."""
    total_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["usage"] = self.usage.to_dict()
        for step_d, step in zip(d["steps"], self.steps, strict=True):
            step_d["usage"] = step.usage.to_dict()
            for cand_d, cand in zip(step_d["candidates"], step.candidates, strict=True):
                cand_d["valid"] = cand.valid
                if cand.execution is not None:
                    cand_d["execution"]["ok"] = cand.execution.ok
        return d

    def to_json(self, **kw: Any) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, **kw)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Trajectory:
        steps = []
        for s in d.get("steps", []):
            cands = []
            for c in s["candidates"]:
                ex = c.get("execution")
                execution = None
                if ex is not None:
                    ex = {k: v for k, v in ex.items() if k != "ok"}
                    ex["tool_calls"] = [ToolCallRecord(**t) for t in ex.get("tool_calls", [])]
                    execution = ExecutionResult(**ex)
                cands.append(
                    Candidate(
                        index=c["index"],
                        text=c["text"],
                        thought=c.get("thought"),
                        code=c.get("code"),
                        parse_error=c.get("parse_error"),
                        execution=execution,
                        finish_reason=c.get("finish_reason"),
                        tokens=c.get("tokens"),
                        repeat=c.get("repeat", False),
                    )
                )
            req = s["request"]
            steps.append(
                Step(
                    number=s["number"],
                    request=ModelRequest(
                        messages=req["messages"],
                        params=SamplingParams(**req["params"]),
                        continue_final_message=req.get("continue_final_message", False),
                    ),
                    candidates=cands,
                    chosen=s.get("chosen"),
                    observation=s["observation"],
                    usage=_usage(s.get("usage")),
                    model_s=s.get("model_s", 0.0),
                    exec_s=s.get("exec_s", 0.0),
                    total_s=s.get("total_s", 0.0),
                    kind=s.get("kind", "action"),
                    stuck=s.get("stuck", False),
                    policy=s.get("policy"),
                    first_valid_s=s.get("first_valid_s"),
                    note=s.get("note"),
                )
            )
        return cls(
            id=d["id"],
            question=d["question"],
            model=d.get("model", ""),
            answer=d.get("answer"),
            answer_source=d.get("answer_source"),
            finish_reason=d.get("finish_reason", "error"),
            steps=steps,
            messages=d.get("messages", []),
            usage=_usage(d.get("usage")),
            error=d.get("error"),
            error_type=d.get("error_type"),
            config=d.get("config", {}),
            started_at=d.get("started_at", 0.0),
            total_s=d.get("total_s", 0.0),
        )

    @classmethod
    def from_json(cls, s: str) -> Trajectory:
        return cls.from_dict(json.loads(s))


def _usage(d: dict[str, Any] | None) -> Usage:
    if not d:
        return Usage()
    return Usage(
        prompt_tokens=d.get("prompt_tokens", 0), completion_tokens=d.get("completion_tokens", 0)
    )
