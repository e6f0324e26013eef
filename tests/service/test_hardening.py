"""Issue 14 regressions over real HTTP (the in-thread gateway, scripted model): bad input
is never a 5xx, strict types, solve streams `event: error` on outages, model-failure and
retry metrics, route labels of early answers, current chat parameters accepted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.gateway_server import GatewayServer
from tests.helpers.scripted_server import Error, ScriptedServer
from tests.service.conftest import MODEL, final_handler, make_settings, metric_value, sse_events

LONE = "\\udfff"  # a JSON escape of a lone low surrogate (valid JSON, not valid text)


def _raw_post(url: str, body: str) -> httpx.Response:
    return httpx.post(url, content=body.encode("ascii"),
                      headers={"content-type": "application/json"}, timeout=30)


CHAT = '{"model":"%s","messages":[{"role":"user","content":%s}]%s}'
SURROGATE_CASES = [
    ("/v1/chat/completions", CHAT % (MODEL, f'"x{LONE}y"', ""), "messages.0.content"),
    ("/v1/chat/completions", CHAT % (MODEL, f'"x{LONE}y"', ',"stream":true'),
     "messages.0.content"),
    ("/v1/chat/completions", CHAT % (MODEL, f'[{{"type":"text","text":"a{LONE}"}}]', ""),
     "messages.0.content.0.text"),
    ("/v1/chat/completions", CHAT % (MODEL, '"q"', f',"user":"{LONE}"'), "user"),
    ("/v1/chat/completions", CHAT % (MODEL, '"q"', f',"metadata":{{"k{LONE}":"v"}}'),
     "metadata.k?"),
    ("/v1/chat/completions", CHAT % (MODEL, '"q"', f',"x{LONE}":1'), "x?"),
    ("/v1/solve", f'{{"question":"a{LONE}b"}}', "question"),
    ("/v1/solve", f'{{"question":"a{LONE}b","stream":true}}', "question"),
    ("/v1/responses", f'{{"model":"{MODEL}","input":"a{LONE}"}}', "input"),
    ("/v1/responses", f'{{"model":"{MODEL}","input":[{{"role":"user","content":'
     f'[{{"type":"input_text","text":"{LONE}"}}]}}]}}', "input.0.content.0.text"),
]


@pytest.mark.parametrize(("path", "body", "param"), SURROGATE_CASES)
def test_lone_surrogates_are_client_errors_everywhere(
    gateway: GatewayServer, scripted_server: ScriptedServer, path: str, body: str, param: str
) -> None:
    scripted_server.handler = final_handler
    r = _raw_post(gateway.url + path, body)
    assert r.status_code in (400, 422), r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert err["code"] == "invalid_unicode"
    assert err["param"] == param
    assert scripted_server.chat_requests == []  # nothing reached the model


def test_model_ids_and_headers_that_cannot_be_encoded_are_not_5xx(
    gateway: GatewayServer,
) -> None:
    r = _raw_post(gateway.url + "/v1/chat/completions",
                  CHAT.replace('"model":"%s"', f'"model":"m{LONE}"') % ('"q"', ""))
    assert r.status_code == 400
    r = httpx.get(gateway.url + "/v1/models/%ED%B3%BF")  # the surrogate's bytes in a path
    assert r.status_code == 404
    r = httpx.post(gateway.url + "/v1/solve", content=b'{"question": "\xff\xfe"}',
                   headers={b"content-type": b"application/json", b"x-request-id": b"\xff"})
    assert r.status_code in (400, 422)


@pytest.mark.parametrize(
    "extra",
    [{"samples": "4"}, {"samples": True}, {"stream": "yes"}, {"max_steps": 2.5},
     {"timeout_s": 1e-9}, {"temperature": "0.5"}, {"include_candidates": 1}],
)
def test_solve_types_are_strict(gateway: GatewayServer, extra: dict[str, Any]) -> None:
    r = httpx.post(gateway.url + "/v1/solve", json={"question": "q", **extra})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["param"] == next(iter(extra))


@pytest.mark.parametrize("blank", ["\u200b\u200b", " \u200d\ufeff\t", "\u3164", "\u2800 "])
def test_blank_means_no_visible_characters(
    gateway: GatewayServer, scripted_server: ScriptedServer, blank: str
) -> None:
    r = httpx.post(gateway.url + "/v1/solve", json={"question": blank})
    assert r.status_code == 422 and r.json()["error"]["param"] == "question"
    r = httpx.post(gateway.url + "/v1/chat/completions",
                   json={"model": MODEL, "messages": [{"role": "user", "content": blank}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages.0.content"
    r = httpx.post(gateway.url + "/v1/responses", json={"model": MODEL, "input": blank})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input"
    assert scripted_server.chat_requests == []


def test_integer_fields_take_integers_only(
    gateway: GatewayServer, scripted_server: ScriptedServer
) -> None:
    """`2.0` is refused where an integer is expected (types are strict; every integer field
    of every route: tests/service/test_strictness.py); an int where a float is expected is
    fine."""
    scripted_server.handler = final_handler
    r = httpx.post(gateway.url + "/v1/solve",
                   json={"question": "q", "samples": 2.0, "temperature": 0}, timeout=60)
    assert r.status_code == 422 and r.json()["error"]["param"] == "samples", r.text
    r = httpx.post(gateway.url + "/v1/solve",
                   json={"question": "q", "samples": 2, "temperature": 0}, timeout=60)
    assert r.status_code == 200, r.text
    assert scripted_server.chat_requests[0]["n"] == 2


def test_solve_stream_sends_event_error_like_the_json_form(
    gateway: GatewayServer, scripted_server: ScriptedServer
) -> None:
    scripted_server.script(Error(503, "down"))
    plain = httpx.post(gateway.url + "/v1/solve", json={"question": "q"}, timeout=60)
    assert plain.status_code == 503
    scripted_server.script(Error(503, "down"))
    streamed = httpx.post(gateway.url + "/v1/solve", json={"question": "q", "stream": True},
                          timeout=60)
    assert streamed.status_code == 200
    events = sse_events(streamed.text)
    names = [e for e, _ in events]
    assert names == ["start", "error"], names
    err = json.loads(events[-1][1])["error"]
    assert err["code"] == plain.json()["error"]["code"] == "model_unavailable"
    assert err["type"] == plain.json()["error"]["type"]


def test_model_failure_metrics_and_route_labels(
    gateway: GatewayServer, scripted_server: ScriptedServer
) -> None:
    before = httpx.get(gateway.url + "/metrics").text
    scripted_server.script(Error(503, "down"))
    assert httpx.post(gateway.url + "/v1/solve", json={"question": "q"},
                      timeout=60).status_code == 503
    big = json.dumps({"question": "x" * 2_000_000})
    assert httpx.post(gateway.url + "/v1/solve", content=big,
                      headers={"content-type": "application/json"}).status_code == 413
    after = httpx.get(gateway.url + "/metrics").text

    def delta(name: str, **labels: str) -> float:
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    assert delta("distillery_model_failures_total", error_type="ModelUnavailable") == 1
    assert delta("distillery_model_request_seconds_count", outcome="error") == 1
    assert delta("distillery_http_requests_total", route="/v1/solve", status="413") == 1
    assert delta("distillery_http_requests_total", route="unmatched", status="413") == 0


def test_model_retries_are_counted(scripted_server: ScriptedServer, index_dir: Path) -> None:
    settings = make_settings(scripted_server, index_dir, model_retries=2, sandbox_pool_size=0)
    with GatewayServer(settings) as gw:
        scripted_server.script(Error(500, headers={"Retry-After": "0"}),
                               Error(502, headers={"Retry-After": "0"}))
        scripted_server.handler = final_handler
        r = httpx.post(gw.url + "/v1/solve", json={"question": "q"}, timeout=60)
        assert r.status_code == 200 and r.json()["answer"] == 42
        text = httpx.get(gw.url + "/metrics").text
    assert metric_value(text, "distillery_model_retries_total") == 2
    assert metric_value(text, "distillery_model_request_seconds_count", outcome="ok") == 1
    assert metric_value(text, "distillery_model_failures_total") == 0


CURRENT_PARAMS: dict[str, Any] = {
    "service_tier": "auto",
    "reasoning_effort": "low",
    "verbosity": "medium",
    "prompt_cache_key": "k",
    "safety_identifier": "user-1",
    "modalities": ["text"],
    "prediction": {"type": "content", "content": "42"},
    "web_search_options": {"search_context_size": "low"},
    "prompt_cache_retention": "24h",
}


def test_current_chat_parameters_are_accepted_and_ignored(
    gateway: GatewayServer, scripted_server: ScriptedServer
) -> None:
    scripted_server.handler = final_handler
    body = {"model": MODEL, "messages": [{"role": "user", "content": "q"}], **CURRENT_PARAMS}
    r = httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "42"
    sent = scripted_server.chat_requests[0]
    assert not set(CURRENT_PARAMS) & set(sent)  # none is forwarded to the model


@pytest.mark.parametrize(
    ("extra", "param"),
    [({"modalities": ["text", "audio"]}, "modalities"),
     ({"audio": {"voice": "alloy", "format": "wav"}}, "audio")],
)
def test_what_cannot_be_honoured_is_an_openai_400(
    gateway: GatewayServer, extra: dict[str, Any], param: str
) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "q"}], **extra}
    r = httpx.post(gateway.url + "/v1/chat/completions", json=body)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param


def test_model_replies_that_cannot_be_encoded_are_not_5xx(
    gateway: GatewayServer, scripted_server: ScriptedServer
) -> None:
    from tests.service.conftest import reply

    # the model server's JSON escapes a lone surrogate; the agent must still work with it
    scripted_server.script(["x\udfff not code"] * 2, reply('final_answer("ok")'))
    r = httpx.post(gateway.url + "/v1/chat/completions", timeout=60, json={
        "model": MODEL, "messages": [{"role": "user", "content": "q"}]})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "ok"
    resent = json.dumps(scripted_server.chat_requests[1]["messages"])
    assert "x? not code" in resent  # replaced, then sent back to the model


def test_client_gone_while_sending_the_body_is_labelled_with_the_route(
    gateway: GatewayServer,
) -> None:
    import socket
    import time

    def count(text: str) -> float:
        return metric_value(text, "distillery_http_requests_total", route="/v1/solve",
                            status="499")

    before = count(httpx.get(gateway.url + "/metrics").text)
    c = socket.create_connection(("127.0.0.1", gateway.port))
    c.sendall(b"POST /v1/solve HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
              b"Content-Length: 100\r\n\r\n{\"question\"")
    time.sleep(0.2)
    c.close()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if count(httpx.get(gateway.url + "/metrics").text) == before + 1:
            return
        time.sleep(0.1)
    raise AssertionError("no 499 labelled route=/v1/solve")


# Integer literals past 2**53 are not exact doubles: -9223372036854776000 reads as -2**63 in
# a client that parses numbers as doubles and as an exact integer out of int64 here. The
# seed's documented range is the exactly representable one, on both ends, on every route.
SEED_CASES = [
    ("/v1/chat/completions", CHAT % (MODEL, '"q"', ',"seed":%s'), 2**53 - 1, -(2**53 - 1)),
    ("/v1/solve", '{"question":"q","seed":%s}', 2**53 - 1, 0),
]


@pytest.mark.parametrize(("path", "body", "high", "low"), SEED_CASES)
def test_seed_takes_exactly_the_integers_a_json_number_holds(
    gateway: GatewayServer, scripted_server: ScriptedServer, path: str, body: str,
    high: int, low: int,
) -> None:
    scripted_server.handler = final_handler
    for ok in (high, low):
        r = _raw_post(gateway.url + path, body % ok)
        assert r.status_code == 200, r.text
    sent = [req.get("seed") for req in scripted_server.chat_requests]
    assert high in sent and low in sent, sent  # passed on unchanged
    for bad in (high + 1, low - 1, -9223372036854776000, 9223372036854775808):
        r = _raw_post(gateway.url + path, body % bad)
        assert r.status_code in (400, 422), (bad, r.text)
        assert r.json()["error"]["param"] == "seed", r.text
