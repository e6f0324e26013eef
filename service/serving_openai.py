"""OpenAI-compatible chat completions over the agent, and the model list.

The last user message is the task; each choice is one independent agent run whose final
answer is the assistant message content (non-string answers as JSON). finish_reason is
"stop" for an answer and "length" when the run hit max_steps or its deadline without one.
Streaming follows the OpenAI chunk format: a role chunk per choice, optional step chunks
(empty delta, the step in the `distillery` extension field), the content, a finish chunk,
the usage chunk when stream_options.include_usage, then `data: [DONE]`. A failed run
streams `event: error` + `data: {"error": ...}` (what OpenAI sends; the SDK raises it) and
ends the stream. With `response_format` json_object / json_schema the final answer must
satisfy it (checked on the host, the model retries otherwise: `service.structured`) and
the content is the answer as JSON; a run that ends without a conforming answer finishes
with "length".
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from agent import CallScope
from agent.model_client import Usage
from agent.trajectory import Trajectory
from service.errors import APIError, api_error_payload, error_payload
from service.gateway import (
    DoneEvent,
    FailedEvent,
    Gateway,
    RunGroup,
    RunSpec,
    StepEvent,
    run_error,
)
from service.protocol_openai import (
    AssistantMessage,
    ChatChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    DistilleryExtension,
    ModelCard,
    ModelList,
    RunInfo,
)
from service.protocol_solve import StepOut, UsageOut
from service.public_errors import public_run_error
from service.schema_check import AnswerValidator
from service.serving_base import ServingBase
from service.sse import KEEPALIVE, RunStreamingResponse, sse_event, sse_json
from service.structured import StructuredOutput, structured_output
from service.textsafe import has_visible_text, model_json

ENDPOINT = "chat"
DONE = sse_event("[DONE]")


def answer_text(answer: Any) -> str:
    if answer is None:
        return ""
    if isinstance(answer, str):
        return answer
    return json.dumps(answer, ensure_ascii=False)


def choice_finish_reason(traj: Trajectory, fmt: StructuredOutput | None = None) -> str:
    if traj.finish_reason != "answer":
        return "length"
    if fmt is not None and not fmt.conforms(traj.answer):
        return "length"
    return "stop"


def choice_content(traj: Trajectory, fmt: StructuredOutput | None) -> str:
    return answer_text(traj.answer) if fmt is None else fmt.content(traj.answer)


def request_format(
    req: ChatCompletionRequest, validator: AnswerValidator
) -> StructuredOutput | None:
    rf = req.response_format
    if rf is None:
        return None
    spec = getattr(rf, "json_schema", None)
    return structured_output(
        rf.type,
        spec.schema_ if spec is not None else None,
        spec.name if spec is not None else None,
        param="response_format.json_schema.schema", validator=validator,
    )


def _bad(message: str, param: str, code: str = "unsupported_parameter") -> APIError:
    return APIError(400, message, code=code, param=param)


def check_supported(req: ChatCompletionRequest) -> None:
    """400 for OpenAI features the agent cannot honour (rather than silently ignoring them)."""
    if req.tools:
        raise _bad("tools are client-side function calling, which this agent does not do: it runs "
                   "its own tools on the server; choose among them with `server_tools` (GET "
                   "/v1/tools lists them)", "tools")
    if req.functions:
        raise _bad("functions are not supported: the agent brings its own tools", "functions")
    if req.function_call not in (None, "none", "auto"):
        raise _bad("function_call is not supported", "function_call")
    if req.tool_choice not in (None, "none", "auto"):
        raise _bad("tool_choice must be 'none' or 'auto' (no tools are offered)", "tool_choice")
    if req.logprobs:
        raise _bad("logprobs are not supported (answers come from code execution)", "logprobs")
    if req.top_logprobs:
        raise _bad("top_logprobs is not supported", "top_logprobs")
    if req.logit_bias:
        raise _bad("logit_bias is not supported", "logit_bias")
    if req.modalities is not None and any(m != "text" for m in req.modalities):
        raise _bad("only the text modality is supported (no audio output)", "modalities")
    if req.audio is not None:
        raise _bad("audio output is not supported", "audio")
    if req.stream_options is not None and not req.stream:
        raise _bad("stream_options is only allowed with stream=true", "stream_options",
                   code="invalid_value")


def task_of(req: ChatCompletionRequest) -> str:
    for i in range(len(req.messages) - 1, -1, -1):
        msg = req.messages[i]
        if msg.role != "user":
            continue
        content = msg.content
        if content is None:
            text = ""
        elif isinstance(content, str):
            text = content
        else:
            parts = []
            for part in content:
                if part.type != "text" or part.text is None:
                    raise _bad(
                        f"only text content parts are supported, got {part.type!r}",
                        f"messages.{i}.content",
                    )
                parts.append(part.text)
            text = "\n".join(parts)
        if not has_visible_text(text):
            raise _bad("the last user message is empty: it must hold the task",
                       f"messages.{i}.content", code="invalid_value")
        return text
    raise _bad("no user message: the last user message is the task", "messages",
               code="invalid_value")


class ChatService(ServingBase):
    ENDPOINT = ENDPOINT

    def models(self) -> ModelList:
        gw = self.gateway
        gw.require_components()
        return ModelList(data=[ModelCard(id=gw.model_name, created=int(gw.started_at))])

    def model(self, model_id: str) -> ModelCard:
        gw = self.gateway
        self.check_model(model_id, param=None)
        return ModelCard(id=gw.model_name, created=int(gw.started_at))

    async def create(self, req: ChatCompletionRequest, request: Request) -> Response:
        gw = self.gateway
        arrived = time.monotonic()
        created = int(time.time())
        self.check_model(req.model)
        check_supported(req)
        task = task_of(req)
        fmt = request_format(req, gw.answer_validator)
        if fmt is not None:
            task += fmt.instructions
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"

        def specs() -> list[RunSpec]:
            out = []
            tools = gw.tool_subset(req.server_tools, "server_tools")
            for i in range(req.n):
                seed = req.seed
                if seed is not None:
                    seed += i  # |seed| < 2**53 (the request's bounds): seed+i cannot overflow
                config = gw.agent_config(
                    max_steps=req.max_steps,
                    samples=req.samples,
                    policy=req.policy,
                    temperature=req.temperature,
                    top_p=req.top_p,
                    max_tokens=req.max_completion_tokens or req.max_tokens,
                    seed=seed,
                )
                run_id = completion_id if req.n == 1 else f"{completion_id}-{i}"
                out.append(RunSpec(task, config, run_id,
                                   answer_check=fmt.check if fmt is not None else None,
                                   tools=tools))
            return out

        admitted = await self.admit(request, req.timeout_s, specs, arrived=arrived)
        group, scope = admitted.group, admitted.scope
        if req.stream:
            return RunStreamingResponse(
                self._chunks(group, req, completion_id, created, fmt), on_close=group.cancel
            )
        trajs = await group.results(request)
        for traj in trajs:
            _raise_for_run_error(traj, gw, scope)
        body = self._response(req, completion_id, created, trajs, fmt)
        return Response(model_json(body), media_type="application/json")

    def _response(
        self,
        req: ChatCompletionRequest,
        cid: str,
        created: int,
        trajs: list[Trajectory],
        fmt: StructuredOutput | None = None,
    ) -> ChatCompletionResponse:
        usage = Usage()
        choices = []
        runs = []
        for i, traj in enumerate(trajs):
            usage.add(traj.usage)
            choices.append(
                ChatChoice(
                    index=i,
                    message=AssistantMessage(content=choice_content(traj, fmt)),
                    finish_reason=choice_finish_reason(traj, fmt),  # type: ignore[arg-type]
                )
            )
            steps = None
            if req.steps_detail != "none":
                all_cands = req.steps_detail == "all"
                steps = [StepOut.of(s, include_candidates=all_cands) for s in traj.steps]
            runs.append(
                RunInfo(
                    id=traj.id,
                    finish_reason=traj.finish_reason,
                    error=public_run_error(traj),
                    steps_count=len(traj.steps),
                    steps=steps,
                )
            )
        return ChatCompletionResponse(
            id=cid,
            created=created,
            model=self.gateway.model_name,
            choices=choices,
            usage=UsageOut.of(usage),
            distillery=DistilleryExtension(runs=runs),
        )

    async def _chunks(
        self,
        group: RunGroup,
        req: ChatCompletionRequest,
        cid: str,
        created: int,
        fmt: StructuredOutput | None = None,
    ) -> AsyncIterator[bytes]:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        model = self.gateway.model_name

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            body: dict[str, Any] = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": None,
                "choices": choices,
            }
            if include_usage:
                body["usage"] = None
            body.update(extra)
            return sse_json(body)

        def choice(index: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}

        try:
            for i in range(len(group.tasks)):
                yield chunk([choice(i, {"role": "assistant", "content": ""})])
            usage = Usage()
            async for ev in group.events():
                if ev is None:
                    yield KEEPALIVE
                elif isinstance(ev, StepEvent):
                    if req.steps_detail == "none":
                        continue
                    step = StepOut.of(ev.step, include_candidates=req.steps_detail == "all")
                    ext = {"run_index": ev.index, "step": step.model_dump(mode="json")}
                    yield chunk([choice(ev.index, {})], distillery=ext)
                elif isinstance(ev, DoneEvent):
                    traj = ev.trajectory
                    try:
                        _raise_for_run_error(traj, self.gateway)
                    except APIError as e:
                        yield sse_json(api_error_payload(e), "error")
                        return
                    usage.add(traj.usage)
                    text = choice_content(traj, fmt)
                    yield chunk([choice(ev.index, {"content": text})])
                    yield chunk([choice(ev.index, {}, choice_finish_reason(traj, fmt))])
                elif isinstance(ev, FailedEvent):
                    err = ev.error
                    if isinstance(err, APIError):
                        yield sse_json(api_error_payload(err), "error")
                    else:
                        yield sse_json(
                            error_payload(500, f"the run failed: {type(err).__name__}"), "error"
                        )
                    return
            if include_usage:
                body = {
                    "id": cid,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "system_fingerprint": None,
                    "choices": [],
                    "usage": usage.to_dict(),
                }
                yield sse_json(body)
            yield DONE
        finally:
            group.cancel()


def _raise_for_run_error(traj: Trajectory, gw: Gateway, scope: CallScope | None = None) -> None:
    error = run_error(traj, gw.config)
    if error is not None:
        raise ServingBase.upstream(error, scope)
