"""OpenAIChatClient against the scripted server over real HTTP."""

from __future__ import annotations

import socket
import time

import pytest

from agent.model_client import (
    ModelClient,
    ModelError,
    ModelRequestError,
    ModelUnavailable,
    SamplingParams,
    call_scope,
)
from agent.openai_client import OpenAIChatClient, normalize_base_url, parse_retry_after
from agent.streaming import collect
from tests.helpers.scripted_server import Drop, Error, RawStream, Reply, ScriptedServer

MSGS = [{"role": "system", "content": "sys"}, {"role": "user", "content": "New task:\nq"}]


def _client(srv: ScriptedServer, **kw: object) -> OpenAIChatClient:
    kw.setdefault("backoff_s", 0.01)
    return OpenAIChatClient(srv.url, srv.model, **kw)  # type: ignore[arg-type]


async def test_body_choices_and_usage(scripted_server: ScriptedServer) -> None:
    srv = scripted_server
    srv.script(Reply(["one two<end_code>", "three"], usage={"prompt_tokens": 11}))
    client = _client(srv, api_key="sk-test")
    assert isinstance(client, ModelClient)
    params = SamplingParams(n=2, temperature=0.7, top_p=0.9, max_tokens=64, seed=5)
    out = await client.complete(MSGS, params)
    await client.aclose()
    assert [c.text for c in out.choices] == ["one two", "three"]  # cut at the stop string
    assert out.usage.prompt_tokens == 11 and out.usage.completion_tokens == 3
    assert out.model == srv.model and out.latency_s > 0
    body = srv.requests[0]
    assert body["n"] == 2 and body["seed"] == 5 and body["max_tokens"] == 64
    assert body["temperature"] == 0.7 and body["top_p"] == 0.9
    assert body["stop"] == ["<end_code>", "Observation:"] and body["stream"] is False
    assert body["messages"] == MSGS
    assert "continue_final_message" not in body
    assert srv.headers[0]["authorization"] == "Bearer sk-test"
    assert client.stats.requests == 1 and client.stats.usage.total_tokens == 14


async def test_continue_final_message_body(scripted_server: ScriptedServer) -> None:
    srv = scripted_server
    srv.script(Reply("continued"))
    client = _client(srv)
    prefixed = [*MSGS, {"role": "assistant", "content": "Thought: first"}]
    out = await client.complete(prefixed, SamplingParams(), continue_final_message=True)
    await client.aclose()
    body = srv.requests[0]
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    assert body["messages"][-1] == {"role": "assistant", "content": "Thought: first"}
    assert "seed" not in body
    assert out.choices[0].text == "continued"
    with pytest.raises(ValueError, match="assistant"):
        client.request_body(MSGS, SamplingParams(), continue_final_message=True)


async def test_retries_429_and_500_then_succeeds(scripted_server: ScriptedServer) -> None:
    srv = scripted_server
    srv.script(Error(429, "busy"), Error(500, "boom"), Drop(), Reply("ok"))
    client = _client(srv, retries=3, backoff_s=0.05)
    out = await client.complete(MSGS, SamplingParams())
    await client.aclose()
    assert out.choices[0].text == "ok"
    assert len(srv.requests) == 4 and client.stats.retries == 3
    gaps = [b - a for a, b in zip(srv.arrival_times, srv.arrival_times[1:], strict=False)]
    # exponential backoff with jitter in [0.5, 1] x 0.05 * 2**k
    assert gaps[0] >= 0.02 and gaps[1] >= 0.045 and gaps[2] >= 0.095


async def test_retry_after_is_honoured(scripted_server: ScriptedServer) -> None:
    srv = scripted_server
    srv.script(Error(429, "slow down", headers={"Retry-After": "0.4"}), Reply("ok"))
    client = _client(srv, backoff_s=0.0)
    await client.complete(MSGS, SamplingParams())
    await client.aclose()
    assert srv.arrival_times[1] - srv.arrival_times[0] >= 0.38


async def test_a_long_retry_after_fails_at_once(scripted_server: ScriptedServer) -> None:
    """A server down for an hour: no wait at all (plain and streamed), its Retry-After
    carried on the error and in the call scope."""
    srv = scripted_server
    outage = Error(503, "overloaded", headers={"Retry-After": "3600"})
    srv.script(outage, outage)
    client = _client(srv, retries=3, retry_after_max_s=5.0)
    with call_scope(None) as scope, pytest.raises(ModelUnavailable) as ei:
        await client.complete(MSGS, SamplingParams())
    assert ei.value.retry_after_s == 3600.0 and scope.retry_after_s == 3600.0
    assert "3600" in str(ei.value) and "not retried" in str(ei.value)
    with pytest.raises(ModelUnavailable) as ei:
        await collect(client.stream(MSGS, SamplingParams()))
    await client.aclose()
    assert ei.value.retry_after_s == 3600.0
    assert len(srv.requests) == 2  # one attempt each, no retry
    assert client.stats.retries == 0 and client.stats.failures == 2


async def test_no_retry_wait_past_the_callers_deadline(scripted_server: ScriptedServer) -> None:
    srv = scripted_server
    srv.script(Error(429, "busy", headers={"Retry-After": "2"}), Reply("never sent"))
    client = _client(srv, retries=3, retry_after_max_s=5.0)
    with call_scope(time.monotonic() + 1.0) as scope, pytest.raises(ModelUnavailable) as ei:
        await client.complete(MSGS, SamplingParams())
    assert "deadline" in str(ei.value) and scope.retry_after_s == 2.0
    assert len(srv.requests) == 1 and srv.pending == 1
    # within the deadline and the cap, the wait is taken and the retry succeeds
    srv.reset()
    srv.script(Error(503, "busy", headers={"Retry-After": "0.1"}), Reply("ok"))
    with call_scope(time.monotonic() + 60.0) as scope:
        out = await client.complete(MSGS, SamplingParams())
    await client.aclose()
    assert out.choices[0].text == "ok" and scope.retry_after_s is None


async def test_streamed_requests_share_the_retry_loop(scripted_server: ScriptedServer) -> None:
    """Retried before any token (HTTP errors, a drop), never after one."""
    srv = scripted_server
    srv.script(Error(503, "busy"), Drop(), Reply("one two three"))
    client = _client(srv, retries=3)
    out = await collect(client.stream(MSGS, SamplingParams()))
    assert out.choices[0].text == "one two three" and out.choices[0].finish_reason == "stop"
    assert len(srv.requests) == 3 and client.stats.retries == 2 and client.stats.requests == 1
    # a stream cut after its first token (no finish, no [DONE]) is not re-sent
    srv.reset()
    chunk = {"choices": [{"index": 0, "delta": {"content": "Thought:"}, "token_ids": [1]}]}
    srv.script(RawStream([chunk]), Reply("not sent"))
    with pytest.raises(ModelError, match="without `data: \\[DONE\\]`") as ei:
        await collect(client.stream(MSGS, SamplingParams()))
    await client.aclose()
    assert not isinstance(ei.value, ModelUnavailable)
    assert len(srv.requests) == 1


@pytest.mark.parametrize(
    ("events", "error"),
    [
        ([{"choices": [], "usage": {"prompt_tokens": 3}}] * 3 + ["[DONE]"], "without any choice"),
        ([{"choices": []}], "without any choice"),
        ([{"choices": [{"index": 0, "delta": {"content": "a"}}]},
          {"choices": [{"index": 1, "delta": {"content": "b"}, "finish_reason": "stop"}]}],
         "choice\\(s\\) 0 had no finish reason"),
        (["[DONE]"], "without any server-sent event"),
    ],
)
async def test_malformed_streams_are_model_errors(
    scripted_server: ScriptedServer, events: list[object], error: str
) -> None:
    """Never a short answer: an empty or truncated stream raises (and is not retried)."""
    srv = scripted_server
    srv.script(RawStream(events), Reply("not sent"))  # type: ignore[arg-type]
    client = _client(srv, retries=2)
    with pytest.raises(ModelError, match=error):
        await collect(client.stream(MSGS, SamplingParams(n=2)))
    await client.aclose()
    assert len(srv.requests) == 1 and client.stats.failures == 1


async def test_a_stream_may_omit_done_when_every_choice_finished(
    scripted_server: ScriptedServer,
) -> None:
    srv = scripted_server
    srv.script(RawStream([
        {"choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": "stop"}]},
    ]))
    client = _client(srv)
    out = await collect(client.stream(MSGS, SamplingParams()))
    await client.aclose()
    assert out.choices[0].text == "x" and out.choices[0].finish_reason == "stop"


async def test_retries_exhausted_raise_unavailable(scripted_server: ScriptedServer) -> None:
    srv = scripted_server
    srv.script(*[Error(503, "overloaded")] * 3)
    client = _client(srv, retries=2)
    with pytest.raises(ModelUnavailable) as ei:
        await client.complete(MSGS, SamplingParams())
    await client.aclose()
    assert len(srv.requests) == 3
    msg = str(ei.value)
    assert srv.url in msg and "HTTP 503: overloaded" in msg and "3 attempt" in msg


async def test_client_error_is_not_retried(scripted_server: ScriptedServer) -> None:
    srv = scripted_server
    srv.script(Error(400, "This model's maximum context length is 4096 tokens"))
    client = _client(srv)
    with pytest.raises(ModelRequestError, match="maximum context length is 4096") as ei:
        await client.complete(MSGS, SamplingParams())
    assert "HTTP 400" in str(ei.value)
    assert len(srv.requests) == 1
    # a wrong model name: the server's 404, with a hint about the served name
    wrong = OpenAIChatClient(srv.url, "nope", backoff_s=0.01)
    with pytest.raises(ModelRequestError, match="nope") as ei:
        await wrong.complete(MSGS, SamplingParams())
    assert "HTTP 404" in str(ei.value)
    await client.aclose()
    await wrong.aclose()


async def test_unreachable_server_raises_unavailable() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = OpenAIChatClient(f"http://127.0.0.1:{port}", "m", retries=1, backoff_s=0.01)
    assert client.base_url == f"http://127.0.0.1:{port}/v1"
    t0 = time.monotonic()
    with pytest.raises(ModelUnavailable) as ei:
        await client.complete(MSGS, SamplingParams())
    await client.aclose()
    assert time.monotonic() - t0 < 5
    msg = str(ei.value)
    assert f"127.0.0.1:{port}" in msg and "connection failed" in msg and "running" in msg


async def test_timeout_is_retried_then_unavailable(scripted_server: ScriptedServer) -> None:
    srv = scripted_server
    srv.script(Reply("late", delay_s=1.0), Reply("late", delay_s=1.0))
    client = _client(srv, timeout_s=0.2, retries=1)
    with pytest.raises(ModelUnavailable, match="timed out"):
        await client.complete(MSGS, SamplingParams())
    await client.aclose()


async def test_list_models_and_bad_bodies(scripted_server: ScriptedServer) -> None:
    srv = scripted_server
    client = _client(srv)
    assert await client.list_models() == [srv.model]
    srv.script(Error(200, body={"not": "a completion"}))
    with pytest.raises(ModelError, match="without chat choices"):
        await client.complete(MSGS, SamplingParams())
    await client.aclose()


def test_helpers() -> None:
    assert normalize_base_url("http://h:8000/v1/") == "http://h:8000/v1"
    assert normalize_base_url("http://h:8000/") == "http://h:8000/v1"
    with pytest.raises(ValueError, match="http://HOST:PORT/v1"):
        normalize_base_url("localhost:8000")
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412475.0) == 5.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None
