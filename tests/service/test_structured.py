"""Structured outputs through the clients people use: the SDK's `chat.completions.parse`
(pydantic model -> json_schema), langchain's `with_structured_output`, json_object, and the
Responses API's `text.format`. The answer is checked on the host; an invalid one is an
error observation and the model tries again."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest
from pydantic import BaseModel

from tests.helpers.gateway_server import GatewayServer
from tests.helpers.scripted_server import ScriptedServer
from tests.service.conftest import MODEL, one_valid, reply


class Person(BaseModel):
    name: str
    age: int


def client(gw: GatewayServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0)


def wrong_then_right(body: dict[str, Any]) -> list[str]:
    """First a final answer without `age`; after the rejection, a valid one."""
    seen = json.dumps(body["messages"])
    if "final_answer rejected" in seen:
        return one_valid(body, reply('final_answer({"name": "Ada", "age": 36})'))
    return one_valid(body, reply('final_answer({"name": "Ada"})'))


def test_sdk_parse_retries_until_the_answer_matches_the_schema(
    gateway: GatewayServer, scripted_server: ScriptedServer
) -> None:
    scripted_server.handler = wrong_then_right
    out = client(gateway).chat.completions.parse(
        model=MODEL, messages=[{"role": "user", "content": "Who wrote the first program?"}],
        response_format=Person,
    )
    msg = out.choices[0].message
    assert msg.parsed == Person(name="Ada", age=36)
    assert json.loads(msg.content or "") == {"name": "Ada", "age": 36}
    reqs = scripted_server.chat_requests
    assert len(reqs) == 2
    first_task = reqs[0]["messages"][-1]["content"]
    assert "JSON Schema" in first_task and '"age"' in first_task  # the model is told
    observation = reqs[1]["messages"][-1]["content"]
    assert "final_answer rejected" in observation and "age" in observation


def test_json_object_content_is_json(
    gateway: GatewayServer, scripted_server: ScriptedServer
) -> None:
    scripted_server.handler = lambda b: one_valid(b, reply('final_answer(\'{"x": 1}\')'))
    r = httpx.post(gateway.url + "/v1/chat/completions", json={
        "model": MODEL, "messages": [{"role": "user", "content": "q"}],
        "response_format": {"type": "json_object"}}, timeout=60)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert json.loads(choice["message"]["content"]) == {"x": 1}  # a JSON string is parsed
    assert choice["finish_reason"] == "stop"


def test_a_run_without_a_conforming_answer_finishes_with_length(
    gateway: GatewayServer, scripted_server: ScriptedServer
) -> None:
    scripted_server.handler = lambda b: one_valid(b, reply("final_answer([1, 2])"))
    r = httpx.post(gateway.url + "/v1/chat/completions", json={
        "model": MODEL, "messages": [{"role": "user", "content": "q"}], "max_steps": 1,
        "response_format": {"type": "json_object"}}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize(
    "schema",
    [{"type": "objekt"}, {"$ref": "https://example.com/schema.json"}],
)
def test_bad_schemas_are_400(gateway: GatewayServer, schema: dict[str, Any]) -> None:
    r = httpx.post(gateway.url + "/v1/chat/completions", json={
        "model": MODEL, "messages": [{"role": "user", "content": "q"}],
        "response_format": {"type": "json_schema",
                            "json_schema": {"name": "s", "schema": schema}}})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "response_format.json_schema.schema"


def test_responses_text_format(gateway: GatewayServer, scripted_server: ScriptedServer) -> None:
    scripted_server.handler = wrong_then_right
    out = client(gateway).responses.parse(model=MODEL, input="Who?", text_format=Person)
    assert out.output_parsed == Person(name="Ada", age=36)
    assert out.status == "completed"


def test_langchain_with_structured_output(
    gateway: GatewayServer, scripted_server: ScriptedServer
) -> None:
    langchain_openai = pytest.importorskip("langchain_openai")
    scripted_server.handler = wrong_then_right
    llm = langchain_openai.ChatOpenAI(
        model=MODEL, base_url=gateway.url + "/v1", api_key="unused", max_retries=0
    )
    result = llm.with_structured_output(Person, method="json_schema").invoke("Who?")
    assert result == Person(name="Ada", age=36)
    scripted_server.reset()
    scripted_server.handler = wrong_then_right
    default = llm.with_structured_output(Person).invoke("Who?")  # the library's default method
    assert default == Person(name="Ada", age=36)
