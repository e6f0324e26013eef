"""Structured outputs: `response_format` / `text.format` json_object and json_schema.

Contract: `structured_output(kind, schema, name, validator=...)` checks the request when it
is admitted (400 for a schema that is not a valid JSON Schema, refers outside itself, or
cannot be evaluated in bounded time: service.schema_admission) and returns a
`StructuredOutput` with
- `instructions`: appended to the task so the model knows the required format,
- `check(answer)`: the agent's async `answer_check` (agent.answer_check): the value given to
  `final_answer` must be a JSON object (json_object) or validate against the schema; a
  string holding such JSON is parsed first. A rejected answer raises ValueError with the
  first validation error and its location, which the model sees as its observation. The
  validation runs in a killable child process with a time limit (service.schema_check),
  never on the event loop; a check that runs out of time is a rejection that says so,
- `conforms(answer)`: whether a finished run's answer is one that `check` accepted (a run
  that ran out of steps may have none; the APIs then report it as incomplete / length),
- `content(answer)`: the message content, an accepted answer as compact JSON (anything
  else as the run gave it).
Validation is jsonschema's Draft 2020-12 validator with RE2 patterns.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Literal

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from service.errors import APIError
from service.schema_admission import SchemaRefused, admit_schema
from service.schema_check import AnswerValidator, CheckTimeout

__all__ = ["StructuredOutput", "structured_output"]

log = logging.getLogger("distillery.service")

MAX_SCHEMA_CHARS = 50_000


@dataclass
class StructuredOutput:
    kind: Literal["json_object", "json_schema"]
    validator: AnswerValidator
    schema: dict[str, Any] | None = None
    name: str | None = None
    _key: str = ""
    _accepted: list[Any] = field(default_factory=list, repr=False)

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

    async def check(self, answer: Any) -> Any:
        if self.kind == "json_object" and isinstance(answer, dict):
            self._accepted.append(answer)  # nothing to evaluate
            return answer
        try:
            ok, parsed, problem = await self.validator.validate(self.schema, self._key, answer)
        except CheckTimeout as e:
            log.warning("structured output: %s (schema %s)", e, self._key[:12])
            raise ValueError(f"the answer could not be checked in time: {e}; give a "
                             "smaller or simpler answer") from None
        if not ok:
            raise ValueError(f"the answer does not match the required format: {problem}")
        value = json.loads(answer) if parsed else answer
        self._accepted.append(value)
        return value

    def conforms(self, answer: Any) -> bool:
        return any(answer is value for value in self._accepted)

    def content(self, answer: Any) -> str:
        """An accepted answer as JSON text; anything else as the run gave it."""
        if not self.conforms(answer) and (answer is None or isinstance(answer, str)):
            return answer or ""
        try:
            return json.dumps(answer, ensure_ascii=False, separators=(",", ":"))
        except (TypeError, ValueError, RecursionError):
            return str(answer)


def _refuse(message: str, param: str) -> APIError:
    return APIError(400, message, code="invalid_value", param=param)


def structured_output(
    kind: str, schema: dict[str, Any] | None, name: str | None, *, param: str,
    validator: AnswerValidator,
) -> StructuredOutput | None:
    """None for plain text; see the module docstring."""
    if kind == "text":
        return None
    if kind == "json_object" or schema is None:  # no schema given: any JSON object
        return StructuredOutput("json_object", validator, _key="json_object")
    try:
        admit_schema(schema)  # first: bounded, and it never recurses
    except SchemaRefused as e:
        raise _refuse(str(e), param) from None
    text = json.dumps(schema, sort_keys=True)
    if len(text) > MAX_SCHEMA_CHARS:
        raise _refuse(f"the JSON schema is longer than {MAX_SCHEMA_CHARS} characters", param)
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as e:
        raise _refuse(f"invalid JSON schema: {e.message}", param) from None
    key = hashlib.sha256(text.encode()).hexdigest()
    return StructuredOutput("json_schema", validator, schema, name, _key=key)
