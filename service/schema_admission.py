"""Admission checks for client-supplied JSON schemas (structured outputs), before any run.

Contract: `admit_schema(schema)` returns None for a schema the gateway can evaluate in
bounded time and memory, or raises `SchemaRefused` whose message names the problem and
where it is (a JSON pointer). Nothing here recurses, so no schema can raise RecursionError.
A schema is refused when:
- its document nests deeper than MAX_DEPTH objects/arrays or has more than MAX_NODES values;
- a `$ref` is not local ("#", "#/json/pointer" or "#anchor"), or points at nothing;
- it uses `$dynamicRef` / `$recursiveRef` (dynamic scopes) or an `$id` below the root
  (a new base for references): not supported;
- it refers to itself without descending into the value (`{"$ref": "#"}`, `$defs` a -> b
  -> a through `$ref`, `allOf`, `anyOf`, `oneOf`, `not`, `if`/`then`/`else`,
  `dependentSchemas`): checking any value would never end;
- one value would be checked against more than MAX_EXPANSION subschemas through those
  same keywords (references that fan out: exponential work without a cycle);
- a `pattern` or `patternProperties` key is not a regular expression that RE2 (linear-time
  matching) accepts: backreferences and lookaround are refused.
What remains (the cost of a valid schema on a large answer) is bounded by the answer
validator's time limit (service.schema_check).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote

import re2

__all__ = ["MAX_DEPTH", "MAX_EXPANSION", "MAX_NODES", "SchemaRefused", "admit_schema"]

MAX_DEPTH = 64
MAX_NODES = 20_000
MAX_EXPANSION = 2_000

IN_PLACE_ONE = ("not", "if", "then", "else")
IN_PLACE_MANY = ("allOf", "anyOf", "oneOf")
CHILD_ONE = ("items", "contains", "additionalProperties", "propertyNames",
             "unevaluatedItems", "unevaluatedProperties")
CHILD_MANY = ("prefixItems",)
CHILD_MAP = ("properties", "patternProperties")
DEFS = ("$defs", "definitions")
UNSUPPORTED = ("$dynamicRef", "$recursiveRef")

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False


class SchemaRefused(ValueError):
    """The schema cannot be admitted; the message says why and where."""


def admit_schema(schema: Any) -> None:
    """See the module docstring."""
    _check_size(schema)
    anchors = dict(_anchors(schema))
    nodes, edges = _in_place_graph(schema, anchors)
    _check_cycles_and_expansion(edges, nodes)


def _check_size(doc: Any) -> None:
    stack: list[tuple[Any, int]] = [(doc, 1)]
    count = 0
    while stack:
        value, depth = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise SchemaRefused(f"the JSON schema has more than {MAX_NODES} values")
        if isinstance(value, dict | list):
            if depth > MAX_DEPTH:
                raise SchemaRefused(
                    f"the JSON schema nests deeper than {MAX_DEPTH} objects/arrays")
            children = value.values() if isinstance(value, dict) else value
            stack.extend((child, depth + 1) for child in children)


def _anchors(doc: Any) -> Iterator[tuple[str, Any]]:
    stack = [doc]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            if isinstance(value.get("$anchor"), str):
                yield value["$anchor"], value
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)


def _in_place_graph(
    root: Any, anchors: dict[str, Any]
) -> tuple[dict[int, tuple[Any, str]], dict[int, list[int]]]:
    """Every subschema reachable by keyword or reference (id -> (schema, JSON pointer)),
    checked by `_check_keywords`, and its in-place edges (see `_in_place`)."""
    nodes: dict[int, tuple[Any, str]] = {}
    edges: dict[int, list[int]] = {}
    stack: list[tuple[Any, str]] = [(root, "#")]
    while stack:
        node, where = stack.pop()
        if not isinstance(node, dict | bool) or id(node) in nodes:
            continue
        nodes[id(node)] = (node, where)
        if isinstance(node, bool):
            continue
        _check_keywords(node, where, root=node is root)
        stack.extend(_children(node, where))
        targets = list(_in_place(node, where, root, anchors))
        edges[id(node)] = [id(t) for t in targets]
        if isinstance(node.get("$ref"), str) and targets:
            stack.append((targets[-1], node["$ref"]))  # named by its reference
    return nodes, edges


def _children(node: dict[str, Any], where: str) -> Iterator[tuple[Any, str]]:
    for key in IN_PLACE_ONE + CHILD_ONE:
        if key in node:
            yield node[key], f"{where}/{key}"
    for key in IN_PLACE_MANY + CHILD_MANY:
        if isinstance(node.get(key), list):
            yield from ((s, f"{where}/{key}/{i}") for i, s in enumerate(node[key]))
    for key in CHILD_MAP + DEFS + ("dependentSchemas",):
        if isinstance(node.get(key), dict):
            yield from ((s, f"{where}/{key}/{_escape(k)}") for k, s in node[key].items())


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def _check_keywords(node: dict[str, Any], where: str, *, root: bool) -> None:
    for key in UNSUPPORTED:
        if key in node:
            raise SchemaRefused(f"{key} (at {where}) is not supported; use a local $ref")
    if "$id" in node and not root:
        raise SchemaRefused(f"$id below the root (at {where}) is not supported; "
                            "use $defs with local $refs")
    patterns: list[tuple[Any, str]] = []
    if "pattern" in node:
        patterns.append((node["pattern"], f"{where}/pattern"))
    if isinstance(node.get("patternProperties"), dict):
        patterns.extend((p, f"{where}/patternProperties") for p in node["patternProperties"])
    for pattern, at in patterns:
        if isinstance(pattern, str):  # another type: the metaschema check reports it
            _check_pattern(pattern, at)


def _check_pattern(pattern: str, at: str) -> None:
    try:
        re2.compile(pattern, options=_RE2_OPTIONS)
    except re2.error as e:
        raw = e.args[0] if e.args else ""
        detail = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
        raise SchemaRefused(
            f"the pattern {pattern[:80]!r} (at {at}) cannot be matched in linear time "
            f"({detail}); backreferences and lookaround are not supported") from None


def _in_place(node: dict[str, Any], where: str, root: Any,
              anchors: dict[str, Any]) -> Iterator[Any]:
    """The subschemas `node` applies to the same value (its in-place applicators)."""
    for key in IN_PLACE_ONE:
        if isinstance(node.get(key), dict | bool):
            yield node[key]
    for key in IN_PLACE_MANY:
        if isinstance(node.get(key), list):
            yield from (s for s in node[key] if isinstance(s, dict | bool))
    if isinstance(node.get("dependentSchemas"), dict):
        yield from (s for s in node["dependentSchemas"].values() if isinstance(s, dict | bool))
    ref = node.get("$ref")
    if isinstance(ref, str):
        yield _resolve(ref, f"{where}/$ref", root, anchors)


def _resolve(ref: str, where: str, root: Any, anchors: dict[str, Any]) -> Any:
    if not ref.startswith("#"):
        raise SchemaRefused(f"the JSON schema refers outside itself ($ref {ref!r} at {where}); "
                            "only local references (#/...) are supported")
    fragment = unquote(ref[1:])
    if fragment and not fragment.startswith("/"):
        if fragment in anchors:
            return anchors[fragment]
        raise SchemaRefused(f"$ref {ref!r} (at {where}) names no $anchor in the schema")
    target = root
    for token in fragment.split("/")[1:]:
        token = token.replace("~1", "/").replace("~0", "~")
        if isinstance(target, dict) and token in target:
            target = target[token]
        elif isinstance(target, list) and token.isdigit() and int(token) < len(target):
            target = target[int(token)]
        else:
            raise SchemaRefused(f"$ref {ref!r} (at {where}) points at nothing in the schema")
    if not isinstance(target, dict | bool):
        raise SchemaRefused(f"$ref {ref!r} (at {where}) points at a value that is not a schema")
    return target


def _check_cycles_and_expansion(
    edges: dict[int, list[int]], nodes: dict[int, tuple[Any, str]]
) -> None:
    """Depth-first over the in-place graph without recursion: a back edge is a cycle;
    `size[n]` = subschemas one value meets from n (saturating at MAX_EXPANSION + 1)."""
    size: dict[int, int] = {}
    on_path: set[int] = set()
    for start in edges:
        if start in size:
            continue
        stack: list[tuple[int, int]] = [(start, 0)]
        on_path.add(start)
        while stack:
            node, i = stack[-1]
            children = edges.get(node, [])
            if i < len(children):
                stack[-1] = (node, i + 1)
                child = children[i]
                if child in on_path:
                    raise SchemaRefused(
                        f"the JSON schema refers to itself without descending into the value "
                        f"(at {_where(nodes, node)}): checking an answer would never end")
                if child not in size:
                    on_path.add(child)
                    stack.append((child, 0))
                continue
            stack.pop()
            on_path.discard(node)
            size[node] = min(MAX_EXPANSION + 1, 1 + sum(size[c] for c in children))
            if size[node] > MAX_EXPANSION:
                raise SchemaRefused(
                    f"one value would be checked against more than {MAX_EXPANSION} "
                    f"subschemas (from {_where(nodes, node)}: $ref/allOf/anyOf/oneOf fan out)")


def _where(nodes: dict[int, tuple[Any, str]], key: int) -> str:
    entry = nodes.get(key)
    return entry[1] if entry is not None else "a referenced subschema"
