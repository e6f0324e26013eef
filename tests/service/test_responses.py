"""`POST /v1/responses` with the official SDK: non-streaming, streaming events in the
spec's order, steps in the extension, errors as the SDK expects them."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from tests.helpers.gateway_server import GatewayServer
from tests.helpers.scripted_server import Error, ScriptedServer
from tests.service.conftest import MODEL, final_handler, square_handler, sse_events


def client(gw: GatewayServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0)


def test_sdk_responses_create(gateway: GatewayServer, scripted_server: ScriptedServer) -> None:
    scripted_server.handler = square_handler
    out = client(gateway).responses.create(model=MODEL, input="square 12",
                                           instructions="be brief", store=False)
    assert out.output_text == "144"
    assert out.status == "completed" and out.object == "response"
    assert out.output[0].type == "message" and out.output[0].role == "assistant"
    assert out.usage is not None and out.usage.total_tokens > 0
    ext: Any = out.model_extra["distillery"]  # type: ignore[index]
    assert ext["run"]["finish_reason"] == "answer" and ext["run"]["steps"]


def test_input_items_last_user_message_is_the_task(
    gateway: GatewayServer, scripted_server: ScriptedServer
) -> None:
    scripted_server.handler = square_handler
    out = client(gateway).responses.create(model=MODEL, input=[
        {"role": "user", "content": "square 2"},
        {"role": "assistant", "content": "4"},
        {"type": "message", "role": "user", "content": [{"type": "input_text",
                                                         "text": "square 5"}]},
    ])
    assert out.output_text == "25"


def test_sdk_streaming_events(gateway: GatewayServer, scripted_server: ScriptedServer) -> None:
    scripted_server.handler = final_handler
    events = list(client(gateway).responses.create(model=MODEL, input="q", stream=True))
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-7:] == [
        "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.completed",
    ]
    assert set(types[2:-7]) == {"response.distillery.step"}
    assert [e.sequence_number for e in events] == list(range(len(events)))
    done = events[-1]
    assert done.response.output_text == "42"  # type: ignore[union-attr]


def test_sdk_stream_helper(gateway: GatewayServer, scripted_server: ScriptedServer) -> None:
    scripted_server.handler = final_handler
    with client(gateway).responses.stream(model=MODEL, input="q") as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert text == "42" and final.output_text == "42"


def test_stream_error_event_when_the_model_is_down(
    gateway: GatewayServer, scripted_server: ScriptedServer
) -> None:
    scripted_server.script(Error(503, "down"))
    with httpx.stream("POST", gateway.url + "/v1/responses",
                      json={"model": MODEL, "input": "q", "stream": True}, timeout=60) as r:
        text = r.read().decode()
    names = [e for e, _ in sse_events(text)]
    assert names[-2:] == ["error", "response.failed"]
    scripted_server.script(Error(503, "down"))
    with pytest.raises(openai.APIStatusError) as info:
        client(gateway).responses.create(model=MODEL, input="q")
    assert info.value.status_code == 503


@pytest.mark.parametrize(
    ("extra", "param"),
    [({"tools": [{"type": "function", "name": "f"}]}, "tools"),
     ({"previous_response_id": "resp_1"}, "previous_response_id"),
     ({"background": True}, "background"),
     ({"input": []}, "input")],
)
def test_unsupported_is_400(gateway: GatewayServer, extra: dict[str, Any], param: str) -> None:
    r = httpx.post(gateway.url + "/v1/responses", json={"model": MODEL, "input": "q", **extra})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
