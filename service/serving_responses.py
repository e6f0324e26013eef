"""`POST /v1/responses`: the OpenAI Responses API over the same agent runs as chat.

One request is one agent run; its final answer is one assistant `message` output item
with one `output_text` part (the answer as JSON with `text.format` json_object /
json_schema). status: "completed" for an answer, "incomplete" (`incomplete_details.reason
= "max_output_tokens"`, the closest OpenAI reason) when the run ran out of steps or time
without a (conforming) answer. A failed run is the same HTTP error as chat (503
model_unavailable, 502, 504, ...). The run and its steps are in the `distillery` extension.

Streaming (`stream: true`), each event `event: <type>` + `data: {..., "type", "sequence_number"}`:
    response.created, response.in_progress         (status in_progress, no output)
    response.distillery.step                        (extension, one per step unless
                                                     steps_detail="none": {"step": StepOut})
    response.output_item.added, response.content_part.added,
    response.output_text.delta (the whole answer), response.output_text.done,
    response.content_part.done, response.output_item.done,
    response.completed | response.incomplete        (the full response, usage included)
A run that fails sends `error` ({"code", "message", "param"}) then `response.failed`;
`: keep-alive` comments keep long steps' connections open.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from agent.trajectory import Trajectory
from service.errors import APIError, error_payload
from service.gateway import DoneEvent, FailedEvent, RunGroup, RunSpec, StepEvent, run_error
from service.protocol_openai import RunInfo
from service.protocol_responses import (
    IncompleteDetails,
    InputMessage,
    OutputMessage,
    OutputText,
    ResponseExtension,
    ResponseObject,
    ResponsesRequest,
    ResponseUsage,
)
from service.protocol_solve import StepOut
from service.public_errors import public_run_error
from service.schema_check import AnswerValidator
from service.serving_base import ServingBase
from service.serving_openai import answer_text
from service.sse import KEEPALIVE, RunStreamingResponse, sse_json
from service.structured import StructuredOutput, structured_output
from service.textsafe import has_visible_text, model_json

__all__ = ["ResponsesService"]

ENDPOINT = "responses"


def _bad(message: str, param: str, code: str = "unsupported_parameter") -> APIError:
    return APIError(400, message, code=code, param=param)


def check_supported(req: ResponsesRequest) -> None:
    if req.tools:
        raise _bad("tools are client-side function calling, which this agent does not do: it runs "
                   "its own tools on the server; choose among them with `server_tools` (GET "
                   "/v1/tools lists them)", "tools")
    if req.tool_choice not in (None, "none", "auto"):
        raise _bad("tool_choice must be 'none' or 'auto' (no tools are offered)", "tool_choice")
    if req.previous_response_id is not None:
        raise _bad("previous_response_id is not supported: responses are not stored; send "
                   "the conversation in `input`", "previous_response_id")
    if req.conversation is not None:
        raise _bad("conversation is not supported: responses are not stored", "conversation")
    if req.background:
        raise _bad("background responses are not supported", "background")
    if req.prompt is not None:
        raise _bad("prompt templates are not supported", "prompt")
    if req.top_logprobs:
        raise _bad("top_logprobs is not supported", "top_logprobs")


def task_of(req: ResponsesRequest) -> str:
    if isinstance(req.input, str):
        if not has_visible_text(req.input):
            raise _bad("input is empty: it must hold the task", "input", code="invalid_value")
        return req.input
    for i in range(len(req.input) - 1, -1, -1):
        item = req.input[i]
        if not isinstance(item, InputMessage) or item.role != "user":
            continue
        if isinstance(item.content, str):
            text = item.content
        else:
            parts = []
            for part in item.content:
                if part.type not in ("input_text", "output_text", "text") or part.text is None:
                    raise _bad(f"only text content parts are supported, got {part.type!r}",
                               f"input.{i}.content")
                parts.append(part.text)
            text = "\n".join(parts)
        if not has_visible_text(text):
            raise _bad("the last user message is empty: it must hold the task",
                       f"input.{i}.content", code="invalid_value")
        return text
    raise _bad("no user message in input: the last user message is the task", "input",
               code="invalid_value")


def request_format(req: ResponsesRequest, validator: AnswerValidator) -> StructuredOutput | None:
    fmt = req.text.format if req.text is not None else None
    if fmt is None:
        return None
    return structured_output(
        fmt.type, getattr(fmt, "schema_", None), getattr(fmt, "name", None),
        param="text.format.schema", validator=validator,
    )


class ResponsesService(ServingBase):
    ENDPOINT = ENDPOINT

    async def create(self, req: ResponsesRequest, request: Request) -> Response:
        gw = self.gateway
        arrived = time.monotonic()
        self.check_model(req.model)
        check_supported(req)
        task = task_of(req)
        fmt = request_format(req, gw.answer_validator)
        if fmt is not None:
            task += fmt.instructions
        rid = f"resp_{uuid.uuid4().hex}"

        def specs() -> list[RunSpec]:
            config = gw.agent_config(
                max_steps=req.max_steps,
                samples=req.samples,
                policy=req.policy,
                temperature=req.temperature,
                top_p=req.top_p,
                max_tokens=req.max_output_tokens,
            )
            tools = gw.tool_subset(req.server_tools, "server_tools")
            return [RunSpec(task, config, rid, answer_check=fmt.check if fmt else None,
                            tools=tools)]

        admitted = await self.admit(request, req.timeout_s, specs, arrived=arrived)
        group = admitted.group
        builder = _Builder(req, rid, int(time.time()), gw.model_name, fmt)
        if req.stream:
            return RunStreamingResponse(self._events(group, builder), on_close=group.cancel)
        [traj] = await group.results(request)
        error = run_error(traj, gw.config)
        if error is not None:
            raise self.upstream(error, admitted)
        return Response(model_json(builder.final(traj)), media_type="application/json")

    async def _events(self, group: RunGroup, b: _Builder) -> AsyncIterator[bytes]:
        seq = 0

        def event(kind: str, **fields: Any) -> bytes:
            nonlocal seq
            body = {"type": kind, **fields, "sequence_number": seq}
            seq += 1
            return sse_json(body, kind)

        try:
            yield event("response.created", response=b.pending())
            yield event("response.in_progress", response=b.pending())
            async for ev in group.events():
                if ev is None:
                    yield KEEPALIVE
                elif isinstance(ev, StepEvent):
                    if b.req.steps_detail == "none":
                        continue
                    step = StepOut.of(ev.step, include_candidates=b.req.steps_detail == "all")
                    yield event("response.distillery.step", step=step.model_dump(mode="json"))
                elif isinstance(ev, DoneEvent):
                    traj = ev.trajectory
                    error = run_error(traj, self.gateway.config)
                    if error is not None:
                        for frame in _failure(event, b, error):
                            yield frame
                        return
                    final = b.final(traj).model_dump(mode="json")
                    message = final["output"][0]
                    text = message["content"][0]["text"]
                    item_id = message["id"]
                    started = {**message, "status": "in_progress", "content": []}
                    part0 = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
                    part = message["content"][0]
                    where = {"item_id": item_id, "output_index": 0, "content_index": 0}
                    yield event("response.output_item.added", output_index=0, item=started)
                    yield event("response.content_part.added", **where, part=part0)
                    yield event("response.output_text.delta", **where, delta=text, logprobs=[])
                    yield event("response.output_text.done", **where, text=text, logprobs=[])
                    yield event("response.content_part.done", **where, part=part)
                    yield event("response.output_item.done", output_index=0, item=message)
                    kind = ("response.completed" if final["status"] == "completed"
                            else "response.incomplete")
                    yield event(kind, response=final)
                elif isinstance(ev, FailedEvent):
                    err = ev.error if isinstance(ev.error, APIError) else APIError(
                        500, f"the run failed: {type(ev.error).__name__}", code="internal_error")
                    for frame in _failure(event, b, err):
                        yield frame
                    return
        finally:
            group.cancel()


def _failure(event: Any, b: _Builder, err: APIError) -> list[bytes]:
    payload = error_payload(err.status, err.message, code=err.code, param=err.param)["error"]
    failed = b.pending()
    failed["status"] = "failed"
    failed["error"] = {"code": err.code, "message": payload["message"]}
    return [
        event("error", code=err.code, message=payload["message"], param=err.param),
        event("response.failed", response=failed),
    ]


class _Builder:
    """Response objects for one request (pending while running, final from the run)."""

    def __init__(self, req: ResponsesRequest, rid: str, created: int, model: str,
                 fmt: StructuredOutput | None) -> None:
        self.req = req
        self.rid = rid
        self.created = created
        self.model = model
        self.fmt = fmt
        self.msg_id = f"msg_{uuid.uuid4().hex}"

    def _base(self, status: str, **fields: Any) -> ResponseObject:
        req = self.req
        text_cfg: dict[str, Any] = {"format": {"type": "text"}}
        if req.text is not None and req.text.format is not None:
            text_cfg = {"format": req.text.format.model_dump(mode="json", by_alias=True)}
        return ResponseObject(
            id=self.rid,
            created_at=self.created,
            status=status,  # type: ignore[arg-type]
            instructions=req.instructions,
            max_output_tokens=req.max_output_tokens,
            model=self.model,
            temperature=req.temperature,
            top_p=req.top_p,
            text=text_cfg,
            user=req.user,
            metadata=req.metadata or {},
            **fields,
        )

    def pending(self) -> dict[str, Any]:
        return self._base("in_progress", output=[]).model_dump(mode="json")

    def final(self, traj: Trajectory) -> ResponseObject:
        fmt = self.fmt
        answered = traj.finish_reason == "answer" and (fmt is None or fmt.conforms(traj.answer))
        text = answer_text(traj.answer) if fmt is None else fmt.content(traj.answer)
        message = OutputMessage(
            id=self.msg_id,
            status="completed" if answered else "incomplete",
            content=[OutputText(text=text)],
        )
        u = traj.usage
        usage = ResponseUsage(input_tokens=u.prompt_tokens, output_tokens=u.completion_tokens,
                              total_tokens=u.total_tokens)
        steps = None
        if self.req.steps_detail != "none":
            all_cands = self.req.steps_detail == "all"
            steps = [StepOut.of(s, include_candidates=all_cands) for s in traj.steps]
        run = RunInfo(id=traj.id, finish_reason=traj.finish_reason, error=public_run_error(traj),
                      steps_count=len(traj.steps), steps=steps)
        return self._base(
            "completed" if answered else "incomplete",
            output=[message],
            usage=usage,
            incomplete_details=None if answered else IncompleteDetails(),
            distillery=ResponseExtension(run=run),
        )

