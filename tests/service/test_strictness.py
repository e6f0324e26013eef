"""Strict integers and strict authentication, over real HTTP against the real gateway:
every integer field of every request model refuses a whole-number float (`4.0`), found
from the gateway's own OpenAPI document so that a new field is covered too; API keys
are checked before the body is read (malformed JSON without a key is a 401), two
`Authorization` headers are refused, and a key no client can send is refused when
`distillery serve` starts."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.gateway_server import GatewayServer
from tests.helpers.scripted_server import ScriptedServer
from tests.service.conftest import MODEL, final_handler, make_settings

BODIES: dict[str, dict[str, Any]] = {
    "/v1/solve": {"question": "What is 6 * 7?"},
    "/v1/chat/completions": {"model": MODEL,
                             "messages": [{"role": "user", "content": "What is 6 * 7?"}]},
    "/v1/responses": {"model": MODEL, "input": "What is 6 * 7?"},
}


def _integer_fields(schema: dict[str, Any], path: str) -> dict[str, int]:
    """Every integer property of the route's request body, with a valid value for it."""
    ref = schema["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    model = schema["components"]["schemas"][ref["$ref"].rsplit("/", 1)[-1]]
    out = {}
    for name, prop in model["properties"].items():
        options = [prop, *prop.get("anyOf", [])]
        ints = [o for o in options if o.get("type") == "integer"]
        if ints:
            low = ints[0].get("minimum", ints[0].get("exclusiveMinimum", -1) + 1)
            out[name] = max(0, int(low))
    return out


def test_integer_fields_refuse_whole_number_floats(
    gateway: GatewayServer, scripted_server: ScriptedServer
) -> None:
    scripted_server.handler = final_handler
    schema = httpx.get(gateway.url + "/openapi.json").json()
    tried = 0
    for path, body in BODIES.items():
        fields = _integer_fields(schema, path)
        assert {"max_steps", "samples"} <= set(fields), (path, fields)
        status = 422 if path == "/v1/solve" else 400
        for name, value in fields.items():
            r = httpx.post(gateway.url + path, json={**body, name: float(value)}, timeout=60)
            assert r.status_code == status, (path, name, r.text)
            err = r.json()["error"]
            assert err["code"] == "validation_error" and err["param"] == name, err
            r = httpx.post(gateway.url + path, json={**body, name: value}, timeout=60)
            assert r.status_code == 200, (path, name, r.text)  # the integer itself is fine
            tried += 1
    assert tried >= 15
    assert {"n", "seed", "max_completion_tokens"} <= set(
        _integer_fields(schema, "/v1/chat/completions")
    )


@pytest.fixture
def keyed_gateway(scripted_server: ScriptedServer, index_dir: Path) -> Iterator[GatewayServer]:
    settings = make_settings(scripted_server, index_dir, api_keys=["key-one"],
                             sandbox_pool_size=0)
    with GatewayServer(settings) as gw:
        yield gw


@pytest.mark.parametrize("path", list(BODIES))
def test_authentication_comes_before_the_body(
    keyed_gateway: GatewayServer, scripted_server: ScriptedServer, path: str
) -> None:
    url = keyed_gateway.url + path
    json_type = {"content-type": "application/json"}
    r = httpx.post(url, content=b"{not json", headers=json_type)
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key", r.text
    assert r.headers["www-authenticate"] == "Bearer"
    assert r.json()["error"]["request_id"] == r.headers["x-request-id"]
    r = httpx.post(url, content=b"{not json", headers={**json_type, "authorization": "Bearer x"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = httpx.post(url, json={"unknown": 1})  # a schema error without a key: still the 401
    assert r.status_code == 401
    r = httpx.post(url, content=b"{not json",
                   headers={**json_type, "authorization": "Bearer key-one"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    assert scripted_server.chat_requests == []


@pytest.mark.parametrize("order", [("key-one", "nope"), ("nope", "key-one"),
                                   ("key-one", "key-one")])
def test_two_authorization_headers_are_refused(
    keyed_gateway: GatewayServer, scripted_server: ScriptedServer, order: tuple[str, str]
) -> None:
    scripted_server.handler = final_handler
    for path, body in BODIES.items():
        headers = [("authorization", f"Bearer {order[0]}"),
                   ("authorization", f"Bearer {order[1]}")]
        r = httpx.post(keyed_gateway.url + path, json=body, headers=headers, timeout=60)
        assert r.status_code == 401, (path, r.text)
        assert r.json()["error"]["code"] == "ambiguous_api_key"
    assert scripted_server.chat_requests == []
    r = httpx.post(keyed_gateway.url + "/v1/solve", json=BODIES["/v1/solve"],
                   headers={"authorization": "Bearer key-one"}, timeout=60)
    assert r.status_code == 200 and r.json()["answer"] == 42


@pytest.mark.parametrize("key", ["ключ", "key with space", "tab\tkey", "é-key"])
def test_serve_refuses_a_key_no_client_can_send(key: str, tmp_path: Path) -> None:
    """`distillery serve` exits with the config status and says which key and why, before
    it binds a port or builds anything."""
    env = {**os.environ, "DISTILLERY_API_KEYS": f'["good-key", "{key}"]'.replace("\t", "\\t")}
    proc = subprocess.run(
        [sys.executable, "-m", "distillery", "serve", "--model-url", "http://127.0.0.1:9/v1",
         "--model", "m", "--port", "0"],
        env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    assert "API key #2" in proc.stderr and "visible ASCII" in proc.stderr, proc.stderr
    assert key not in proc.stderr  # the secret itself is not printed
