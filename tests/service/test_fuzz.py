"""Property-based fuzzing from the gateway's own OpenAPI document (schemathesis): for
generated requests, valid (positive) and invalid (negative), no 5xx and every response
matches the schema (status documented, content type, body schema, headers).

Strategies are driven with plain hypothesis `@given` per operation (schemathesis' lazy
pytest loader does not run under this pytest version).
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import positive_data_acceptance
from schemathesis.generation.modes import GenerationMode

from tests.helpers.gateway_server import GatewayServer
from tests.helpers.scripted_server import ScriptedServer
from tests.service.conftest import final_handler

# Examples per operation and mode: bounded so the whole fuzz run takes well under a minute.
MAX_EXAMPLES = {"POST /v1/solve": 40, "POST /v1/chat/completions": 40,
                "POST /v1/responses": 40}
DEFAULT_EXAMPLES = 15
OPERATIONS = [
    "POST /v1/solve",
    "POST /v1/chat/completions",
    "POST /v1/responses",
    "GET /v1/models",
    "GET /v1/models/{model_id}",
    "GET /v1/tools",
    "GET /healthz",
    "GET /readyz",
    "GET /metrics",
]


@pytest.fixture
def api_schema(gateway: GatewayServer, scripted_server: ScriptedServer) -> Any:
    # The model answers at once, so generated runs are short whatever N and max_steps are.
    scripted_server.handler = final_handler
    return schemathesis.openapi.from_url(gateway.url + "/openapi.json")


def test_schema_lists_every_operation(api_schema: Any) -> None:
    found = set()
    for result in api_schema.get_all_operations():
        op = result.ok()
        found.add(f"{op.method.upper()} {op.path}")
    assert found == set(OPERATIONS)


def _assert_documented_refusal(body: Any, response: Any) -> None:
    """A schema-valid body may still be refused, only for what docs/api.md says the JSON
    Schema cannot express: a whole-number float (2.0) in an integer field (JSON Schema
    counts it as an integer; the gateway takes integers only), a question without a
    visible character (whitespace and invisible characters differ between regex engines),
    and the OpenAI features refused with a 400 (`unsupported_parameter`,
    `invalid_value`: no user message, tools, top_logprobs, ...)."""
    error = response.json()["error"]
    floats = (
        {k for k, v in body.items() if isinstance(v, float) and v.is_integer()}
        if isinstance(body, dict) else set()
    )
    documented = (
        error["code"] in ("unsupported_parameter", "invalid_value")
        or (error["code"] == "validation_error" and error["param"] in floats)
        or (error["code"] == "validation_error" and error["param"] == "question"
            and ("visible characters" in error["message"] or "pattern" in error["message"]))
    )
    assert documented, response.text


# Negative examples exist only for operations with a body (any string is a valid model id).
CASES = [(op, GenerationMode.POSITIVE) for op in OPERATIONS] + [
    (op, GenerationMode.NEGATIVE)
    for op in ("POST /v1/solve", "POST /v1/chat/completions", "POST /v1/responses")
]


@pytest.mark.parametrize(("label", "mode"), CASES)
def test_api_conforms_to_its_schema(
    api_schema: Any, gateway: GatewayServer, label: str, mode: GenerationMode
) -> None:
    method, path = label.split(" ", 1)
    operation = api_schema[path][method]
    strategy = operation.as_strategy(generation_mode=mode)
    calls = []

    @given(case=strategy)
    @settings(
        max_examples=MAX_EXAMPLES.get(label, DEFAULT_EXAMPLES),
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def check(case: Any) -> None:
        if mode is GenerationMode.POSITIVE:
            response = case.call_and_validate(
                base_url=gateway.url, timeout=60, excluded_checks=[positive_data_acceptance]
            )
            if response.status_code in (400, 422):
                _assert_documented_refusal(case.body, response)
        else:
            response = case.call_and_validate(base_url=gateway.url, timeout=60)
        calls.append(response.status_code)

    check()
    assert calls, "no request was generated"
    assert all(status < 500 for status in calls)
