"""The answer-validation worker: a child process that checks values against JSON schemas.

Run as a script (`python -I service/schema_worker.py`) by `service.schema_check`, never
imported by the gateway: a check that takes too long is ended by killing this process,
which no thread in the gateway could be. It imports only the standard library, jsonschema
and google-re2, so it starts in about 0.1 s.

Protocol: one JSON object per line on stdin, one JSON object per line on stdout.
- request  `{"key": str, "schema": object | null, "value": any}`: `schema` null means "any
  JSON object" (json_object); `key` names the schema (its digest) so its validator is
  built once and kept (the last CACHE_SIZE schemas).
- reply    `{"ok": true, "parsed": bool}` when the value (or, when the value is a string
  holding JSON, the parsed string: `parsed` true) satisfies the schema, else
  `{"ok": false, "error": str}`: the first validation error and where it is.
Stdin closed (the gateway is gone): the process exits.

Patterns (`pattern`, `patternProperties`, `additionalProperties` next to
`patternProperties`) are matched with RE2, in time linear in the text; the gateway refuses
at admission a pattern RE2 cannot compile (backreferences, lookaround). The process also
limits its own address space (MEMORY_LIMIT_BYTES) so that no schema can exhaust the pod.
"""

from __future__ import annotations

import json
import resource
import sys
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import re2
from jsonschema import Draft202012Validator, ValidationError, validators

CACHE_SIZE = 32
MESSAGE_CHARS = 600
"""An error message is cut to this many characters (it may quote a long answer)."""
MEMORY_LIMIT_BYTES = 1 << 30

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False
_patterns: dict[str, Any] = {}


def _search(pattern: str, text: str) -> bool:
    compiled = _patterns.get(pattern)
    if compiled is None:
        if len(_patterns) > 256:
            _patterns.clear()
        compiled = _patterns[pattern] = re2.compile(pattern, options=_OPTIONS)
    return compiled.search(text) is not None


def _short(text: str, limit: int = 80) -> str:
    shown = repr(text)
    return shown if len(shown) <= limit else f"{shown[:limit]}... ({len(text)} characters)"


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not _search(pattern, instance):
        yield ValidationError(f"{_short(instance)} does not match the pattern {pattern!r}")


def _pattern_properties(
    validator: Any, patterns: dict[str, Any], instance: Any, schema: Any
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            if _search(pattern, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _extra_keys(instance: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    named = schema.get("properties", {})
    patterns = list(schema.get("patternProperties", {}))
    return [k for k in instance
            if k not in named and not any(_search(p, k) for p in patterns)]


def _additional_properties(
    validator: Any, additional: Any, instance: Any, schema: Any
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    extras = _extra_keys(instance, schema)
    if validator.is_type(additional, "object"):
        for key in extras:
            yield from validator.descend(instance[key], additional, path=key)
    elif additional is False and extras:
        names = ", ".join(repr(k) for k in sorted(extras))
        yield ValidationError(f"properties not allowed by the schema: {names}")


Validator = validators.extend(Draft202012Validator, {
    "pattern": _pattern,
    "patternProperties": _pattern_properties,
    "additionalProperties": _additional_properties,
})


def _first_error(validator: Any, value: Any) -> str | None:
    if validator is None:
        if isinstance(value, dict):
            return None
        return f"the answer must be a JSON object (a dict), not {_json_type(value)}"
    errors = sorted(validator.iter_errors(value), key=lambda e: [str(p) for p in e.absolute_path])
    if not errors:
        return None
    error = errors[0]
    where = "".join(f"[{p!r}]" for p in error.absolute_path) or "the answer"
    message = f"{where}: {error.message}"
    if len(message) > MESSAGE_CHARS:
        message = message[:MESSAGE_CHARS] + " [...]"
    return message


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer",
             float: "number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def check(validator: Any, value: Any) -> dict[str, Any]:
    """The reply for one value (see the module docstring)."""
    problem = _first_error(validator, value)
    if problem is None:
        return {"ok": True, "parsed": False}
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except (ValueError, RecursionError):
            parsed = None
        else:
            if _first_error(validator, parsed) is None:
                return {"ok": True, "parsed": True}
    return {"ok": False, "error": problem}


def _validator_for(cache: OrderedDict[str, Any], key: str, schema: Any) -> Any:
    if schema is None:
        return None
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    cache[key] = Validator(schema)
    if len(cache) > CACHE_SIZE:
        cache.popitem(last=False)
    return cache[key]


def serve(lines: Any, out: Any) -> None:
    cache: OrderedDict[str, Any] = OrderedDict()
    for line in lines:
        try:
            request = json.loads(line)
            validator = _validator_for(cache, request["key"], request["schema"])
            reply = check(validator, request["value"])
        except RecursionError:
            reply = {"ok": False, "error": "the answer nests too deeply to be checked"}
        except MemoryError:
            reply = {"ok": False, "error": "checking the answer needed too much memory"}
        except Exception as e:  # a bad request is answered, never the end of the worker
            reply = {"ok": False, "error": f"the answer could not be checked ({type(e).__name__})"}
        out.write(json.dumps(reply) + "\n")
        out.flush()


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_BYTES, MEMORY_LIMIT_BYTES))
    serve(sys.stdin, sys.stdout)
