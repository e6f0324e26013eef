"""Structured outputs: `response_format` / `text.format` json_object and json_schema.

Contract: `structured_output(kind, schema, name)` checks the request (400 for a schema
that is not a valid JSON Schema, or that refers outside itself) and returns a
`StructuredOutput` with
- `instructions`: appended to the task so the model knows the required format,
- `check(answer)`: the agent's `answer_check` (agent.answer_check): the value given to
  `final_answer` must be a JSON object (json_object) or validate against the schema; a
  string holding such JSON is parsed first. A rejected answer raises ValueError with the
  first validation error and its location, which the model sees as its observation,
- `content(answer)`: the message content, the answer as compact JSON,
- `conforms(answer)`: whether a finished run's answer satisfies the format (a run that
  ran out of steps may not; the APIs then report it as incomplete / length).
Validation is jsonschema's Draft 2020-12 validator, on the host.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from service.errors import APIError

__all__ = ["StructuredOutput", "structured_output"]

MAX_SCHEMA_CHARS = 50_000


def _external_ref(schema: Any) -> str | None:
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key == "$ref" and isinstance(value, str) and not value.startswith("#"):
                return value
            found = _external_ref(value)
            if found is not None:
                return found
    elif isinstance(schema, list):
        for value in schema:
            found = _external_ref(value)
            if found is not None:
                return found
    return None


@dataclass
class StructuredOutput:
    kind: Literal["json_object", "json_schema"]
    schema: dict[str, Any] | None = None
    name: str | None = None
    _validator: Any = field(default=None, repr=False)

    @property
    def instructions(self) -> str:
        if self.kind == "json_object" or self.schema is None:
            return (
                "\n\nAnswer format: call final_answer with a JSON object (a Python dict "
                "with string keys and JSON values); it is checked before it is accepted."
            )
        schema = json.dumps(self.schema, ensure_ascii=False, separators=(",", ":"))
        return (
            "\n\nAnswer format: call final_answer with a value (a Python dict, list, str, "
            "number or bool) that is valid against this JSON Schema; it is checked before "
            f"it is accepted.\nJSON Schema: {schema}"
        )

    def _errors(self, value: Any) -> str | None:
        if self.kind == "json_object" or self._validator is None:
            if not isinstance(value, dict):
                return f"the answer must be a JSON object (a dict), not {type(value).__name__}"
            return None
        error = next(iter(sorted(self._validator.iter_errors(value),
                                 key=lambda e: list(e.absolute_path))), None)
        if error is None:
            return None
        where = "".join(f"[{p!r}]" for p in error.absolute_path) or "the answer"
        return f"{where}: {error.message}"

    def check(self, answer: Any) -> Any:
        problem = self._errors(answer)
        if problem is None:
            return answer
        if isinstance(answer, str):
            try:
                parsed = json.loads(answer)
            except ValueError:
                parsed = None
            else:
                if self._errors(parsed) is None:
                    return parsed
        raise ValueError(f"the answer does not match the required format: {problem}")

    def conforms(self, answer: Any) -> bool:
        try:
            self.check(answer)
        except ValueError:
            return False
        return True

    def content(self, answer: Any) -> str:
        """The answer as JSON text when it conforms; otherwise as the run gave it."""
        try:
            value = self.check(answer)
        except ValueError:
            if answer is None or isinstance(answer, str):
                return answer or ""
            value = answer
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def structured_output(
    kind: str, schema: dict[str, Any] | None, name: str | None, *, param: str
) -> StructuredOutput | None:
    """None for plain text; see the module docstring."""
    if kind == "text":
        return None
    if kind == "json_object":
        return StructuredOutput("json_object")
    if schema is None:
        return StructuredOutput("json_object")  # no schema given: any JSON object
    if len(json.dumps(schema)) > MAX_SCHEMA_CHARS:
        raise APIError(400, f"the JSON schema is longer than {MAX_SCHEMA_CHARS} characters",
                       code="invalid_value", param=param)
    ref = _external_ref(schema)
    if ref is not None:
        raise APIError(400, f"the JSON schema refers outside itself ($ref {ref!r}); only "
                       "local references (#/...) are supported", code="invalid_value",
                       param=param)
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as e:
        raise APIError(400, f"invalid JSON schema: {e.message}", code="invalid_value",
                       param=param) from None
    return StructuredOutput("json_schema", schema, name, Draft202012Validator(schema))
