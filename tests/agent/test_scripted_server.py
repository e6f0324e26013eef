"""The scripted server itself (a shared test helper): replies, stops, errors, drops, records."""

from __future__ import annotations

import httpx
import pytest

from tests.helpers.scripted_server import Drop, Error, Reply, ScriptedServer


def _chat(srv: ScriptedServer, **extra: object) -> httpx.Response:
    body = {"model": srv.model, "messages": [{"role": "user", "content": "two words"}], **extra}
    return httpx.post(srv.url + "/chat/completions", json=body, timeout=10)


def test_models_and_scripted_choices(scripted_server: ScriptedServer) -> None:
    srv = scripted_server
    r = httpx.get(srv.url + "/models", timeout=10)
    assert r.json()["data"][0]["id"] == srv.model
    srv.script(["a b<end_code> tail", "c Observation: invented"], "same")
    r = _chat(srv, n=2, stop=["<end_code>", "Observation:"], seed=7)
    out = r.json()
    assert [c["message"]["content"] for c in out["choices"]] == ["a b", "c "]
    assert out["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
    assert srv.requests[0]["seed"] == 7 and srv.requests[0]["n"] == 2
    r = _chat(srv, n=3)
    assert [c["message"]["content"] for c in r.json()["choices"]] == ["same"] * 3
    assert srv.pending == 0


def test_errors_drop_handler_and_exhaustion(scripted_server: ScriptedServer) -> None:
    srv = scripted_server
    srv.script(
        Error(429, "slow down", headers={"Retry-After": "3"}), Drop(), Reply("x", delay_s=0.2)
    )
    r = _chat(srv)
    assert r.status_code == 429 and r.headers["retry-after"] == "3"
    assert r.json()["error"]["message"] == "slow down"
    with pytest.raises(httpx.TransportError):
        _chat(srv)
    r = _chat(srv)
    assert r.elapsed.total_seconds() >= 0.2
    r = _chat(srv)  # nothing scripted, no handler
    assert r.status_code == 400 and "nothing scripted" in r.json()["error"]["message"]
    srv.handler = lambda body: [m["content"] for m in body["messages"]][-1:] * body.get("n", 1)
    assert _chat(srv, n=2).json()["choices"][1]["message"]["content"] == "two words"
    srv.script(["only one", "two"])  # n=3 asked: the script is wrong, said clearly
    r = _chat(srv, n=3)
    assert r.status_code == 400 and "n=3" in r.json()["error"]["message"]
    assert _chat(srv, model="other").status_code == 404
    assert len(srv.requests) == 7
