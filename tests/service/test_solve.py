"""POST /v1/solve end to end: real uvicorn gateway -> agent -> scripted model server (HTTP),
real executor, embedded retriever."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.helpers.gateway_server import GatewayServer
from tests.helpers.scripted_server import ScriptedServer
from tests.service.conftest import (
    NOT_CODE,
    final_handler,
    metric_value,
    one_valid,
    reply,
    square_handler,
    sse_events,
)


def test_solve_returns_answer_steps_candidates_usage(
    gateway: GatewayServer, scripted_server: ScriptedServer
) -> None:
    scripted_server.handler = square_handler
    r = httpx.post(gateway.url + "/v1/solve", json={"question": "square 12", "samples": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["answer"] == 144
    assert body["finish_reason"] == "answer"
    assert body["id"].startswith("solve-")
    assert body["model"] == "scripted-model"
    [step] = body["steps"]
    assert step["number"] == 1 and step["chosen"] == 0
    assert len(step["candidates"]) == 3
    assert step["candidates"][0]["valid"] is True
    assert step["candidates"][0]["execution"]["final_answer"] == 144
    # the others: prose (a parse error), or stopped when candidate 0 was done (the default
    # policy 'early' ends the step at the first valid candidate)
    assert all(
        c["parse_error"] or c["finish_reason"] == "cancelled" for c in step["candidates"][1:]
    ), step["candidates"]
    assert "x = 12" in step["code"]
    # usage is what the model server reported (the scripted server counts words)
    [req] = scripted_server.chat_requests
    assert req["n"] == 3
    assert body["usage"]["completion_tokens"] > 0
    assert body["usage"]["total_tokens"] == (
        body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    )
    assert body["timings"]["total_s"] >= body["timings"]["run_s"] > 0
    assert r.headers["x-request-id"]


def test_request_overrides_reach_the_model_request(
    gateway: GatewayServer, scripted_server: ScriptedServer
) -> None:
    scripted_server.handler = final_handler
    payload = {"question": "q", "samples": 5, "temperature": 0.9, "top_p": 0.5,
               "max_tokens": 77, "seed": 7}
    r = httpx.post(gateway.url + "/v1/solve", json=payload)
    assert r.status_code == 200, r.text
    [req] = scripted_server.chat_requests
    assert (req["n"], req["temperature"], req["top_p"], req["max_tokens"], req["seed"]) == (
        5, 0.9, 0.5, 77, 7
    )


def test_multi_step_run_with_web_search(
    gateway: GatewayServer, scripted_server: ScriptedServer
) -> None:
    search = reply('r = web_search("Eiffel Tower height")\nprint(r)', "Look it up.")
    scripted_server.script(
        lambda body: one_valid(body, search),
        lambda body: one_valid(body, reply('final_answer("330 metres")')),
    )
    r = httpx.post(gateway.url + "/v1/solve", json={"question": "How tall is the Eiffel Tower?"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["answer"] == "330 metres"
    assert [s["number"] for s in body["steps"]] == [1, 2]
    first = body["steps"][0]
    assert "Eiffel Tower" in first["observation"]  # the retrieved passage came back
    [call] = first["candidates"][0]["execution"]["tool_calls"]
    assert call["name"] == "web_search" and "330 metres" in call["result"]
    # the observation of step 1 is what the model saw in its second request
    second_request = scripted_server.chat_requests[1]
    assert any("Eiffel" in m["content"] for m in second_request["messages"][2:])
    metrics = httpx.get(gateway.url + "/metrics").text
    assert metric_value(metrics, "distillery_retrieval_seconds_count") >= 1


def test_include_candidates_false_keeps_only_the_chosen(
    gateway: GatewayServer, scripted_server: ScriptedServer
) -> None:
    scripted_server.handler = final_handler
    r = httpx.post(
        gateway.url + "/v1/solve",
        json={"question": "q", "samples": 4, "include_candidates": False},
    )
    [step] = r.json()["steps"]
    assert len(step["candidates"]) == 1 and step["candidates"][0]["valid"]


def test_execution_errors_and_max_steps(
    gateway: GatewayServer, scripted_server: ScriptedServer
) -> None:
    # Every step's only candidate raises; after max_steps the final-answer call answers.
    def handler(body: dict[str, Any]) -> list[str]:
        return one_valid(body, reply("1 / 0"))

    scripted_server.handler = handler
    r = httpx.post(gateway.url + "/v1/solve", json={"question": "q", "max_steps": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["finish_reason"] in ("max_steps", "answer", "error")
    actions = [s for s in body["steps"] if s["kind"] == "action"]
    assert len(actions) == 2
    for s in actions:
        assert s["chosen"] is None
        assert "ZeroDivisionError" in s["observation"]
        assert s["candidates"][0]["execution"]["error_kind"] == "exception"
    metrics = httpx.get(gateway.url + "/metrics").text
    assert metric_value(metrics, "distillery_candidate_execution_errors_total",
                        kind="exception") >= 2
    assert metric_value(metrics, "distillery_candidate_parse_errors_total") >= 2


def test_stream_sends_one_event_per_step_then_the_result(
    gateway: GatewayServer, scripted_server: ScriptedServer
) -> None:
    scripted_server.script(
        lambda body: one_valid(body, reply("a = 20")),
        lambda body: one_valid(body, reply("b = a + 1")),
        lambda body: one_valid(body, reply("final_answer(a * b)")),
    )
    with httpx.stream(
        "POST", gateway.url + "/v1/solve", json={"question": "q", "stream": True, "max_steps": 5}
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        text = "".join(r.iter_text())
    events = sse_events(text)
    names = [e for e, _ in events]
    assert names == ["start", "step", "step", "step", "result"]
    start = json.loads(events[0][1])
    steps = [json.loads(d) for e, d in events if e == "step"]
    result = json.loads(events[-1][1])
    assert [s["number"] for s in steps] == [1, 2, 3]
    assert result["id"] == start["id"]
    assert result["answer"] == 420 and result["finish_reason"] == "answer"
    assert result["steps"] == steps  # the streamed steps are the result's steps


def test_model_server_down_gives_503_and_readyz_fails(
    scripted_server_session: ScriptedServer, index_dir: Any
) -> None:
    from tests.service.conftest import make_settings

    dead = ScriptedServer().start()
    dead.stop()  # a port where nothing listens any more
    settings = make_settings(scripted_server_session, index_dir, model_url=dead.url,
                             sandbox_pool_size=0)
    with GatewayServer(settings) as gw:
        r = httpx.post(gw.url + "/v1/solve", json={"question": "q"})
        assert r.status_code == 503, r.text
        err = r.json()["error"]
        assert err["code"] == "model_unavailable"
        assert "unavailable" in err["message"] and err["request_id"] == r.headers["x-request-id"]
        assert int(r.headers["retry-after"]) >= 1
        ready = httpx.get(gw.url + "/readyz", timeout=30)
        assert ready.status_code == 503
        checks = ready.json()["checks"]
        assert checks["model"]["ok"] is False and checks["model"]["error"]
        assert checks["sandbox"]["ok"] is True and checks["retriever"]["ok"] is True
        assert httpx.get(gw.url + "/healthz").status_code == 200


def test_readyz_reports_every_component(gateway: GatewayServer) -> None:
    r = httpx.get(gateway.url + "/readyz", timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ready"
    assert set(body["checks"]) == {
        "model", "sandbox", "retriever", "tools", "capacity", "model_calls"
    }
    assert body["checks"]["model"]["detail"]["model"] == "scripted-model"
    assert all(c["ok"] for c in body["checks"].values())


def test_deadline_ends_the_run_with_timeout(
    gateway: GatewayServer, scripted_server: ScriptedServer
) -> None:
    from tests.helpers.scripted_server import Reply

    scripted_server.script(Reply(NOT_CODE, delay_s=60.0))
    r = httpx.post(gateway.url + "/v1/solve", json={"question": "q", "timeout_s": 0.5},
                   timeout=90)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["finish_reason"] == "timeout"
    assert body["timings"]["total_s"] < 50  # cut by the deadline, not the 60 s reply


def test_every_policy_of_the_agent_is_accepted(
    gateway: GatewayServer, scripted_server: ScriptedServer
) -> None:
    """The request's `policy` extension takes every policy the agent has (early included)."""
    import typing

    from agent.agent import Policy

    scripted_server.handler = square_handler
    for policy in typing.get_args(Policy):
        r = httpx.post(
            gateway.url + "/v1/solve",
            json={"question": "square 3", "policy": policy, "samples": 2},
            timeout=120,
        )
        assert r.status_code == 200, (policy, r.text)
        assert r.json()["answer"] == 9, policy
