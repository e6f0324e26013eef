"""Keep the chart's generated parts in step with the code: `python helm/sync.py [--check]`.

1. values.schema.json `gateway.config`: one property per field of service/settings.py
   (types and bounds from pydantic), except the settings the chart sets itself
   (CHART_MANAGED) and secrets (they come from the chart's Secret).
2. helm/README.md: the table of every value (between the values-table markers), built from
   values.yaml (keys, defaults) and values.schema.json (types, descriptions).

With --check nothing is written; it exits 1 and names what is stale (tests/deploy runs it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "distillery"
SCHEMA = CHART / "values.schema.json"
VALUES = CHART / "values.yaml"
README = ROOT / "helm" / "README.md"
START, END = "<!-- values-table:start -->", "<!-- values-table:end -->"

# Settings the chart derives from other values (README "What the chart sets").
CHART_MANAGED = {
    "model_url": "model.source / model.external.url",
    "model": "model.name / vllm.servedModelName",
    "model_path": "model.embedded.path",
    "executor": "sandbox.enabled",
    "es_url": "retrieval.elasticsearch.url / elasticsearch.enabled",
    "es_index": "retrieval.index",
    "index_dir": "retrieval.embedded.indexDir",
    "cache_dir": "an emptyDir at /var/cache/distillery",
    "mcp_config": "gateway.mcpServers (a ConfigMap mounted at /etc/distillery/mcp/mcp.json)",
    "host": "0.0.0.0",
    "port": "gateway.port",
    "probe_port": "gateway.probePort",
}
# JSON-schema keywords kept from pydantic's output.
KEEP = {"type", "enum", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
        "items", "anyOf", "description", "default"}


def _clean(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _clean(v) for k, v in node.items() if k in KEEP}
    if isinstance(node, list):
        return [_clean(v) for v in node]
    return node


def _is_secret(prop: dict[str, Any]) -> bool:
    text = json.dumps(prop)
    return '"writeOnly": true' in text or '"format": "password"' in text


def config_schema() -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from distillery.settings import Settings

    props = Settings.model_json_schema()["properties"]
    out: dict[str, Any] = {}
    for name, prop in props.items():
        if name in CHART_MANAGED or _is_secret(prop):
            continue
        out[name] = _clean(prop)
        out[name].setdefault("description", f"DISTILLERY_{name.upper()}")
    return out


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if not ref:
        return node
    target: Any = schema
    for part in ref.removeprefix("#/").split("/"):
        target = target[part]
    merged = dict(target)
    merged.update({k: v for k, v in node.items() if k != "$ref"})
    return merged


def _child(schema: dict[str, Any], node: dict[str, Any], key: str) -> dict[str, Any] | None:
    node = _resolve(schema, node)
    child = node.get("properties", {}).get(key)
    if child is None and isinstance(node.get("additionalProperties"), dict):
        child = node["additionalProperties"]
    return _resolve(schema, child) if child is not None else None


def _type_of(node: dict[str, Any]) -> str:
    if "enum" in node:
        return " | ".join(json.dumps(v) for v in node["enum"])
    if "oneOf" in node or "anyOf" in node:
        alts = node.get("oneOf") or node.get("anyOf") or []
        return " or ".join(str(a.get("type", "?")) for a in alts)
    t = node.get("type", "object")
    return " or ".join(t) if isinstance(t, list) else str(t)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def values_rows(schema: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Table rows for every leaf of values.yaml, and the keys lacking a description."""
    values = yaml.safe_load(VALUES.read_text())
    rows: list[str] = []
    missing: list[str] = []

    def walk(value: Any, node: dict[str, Any] | None, path: str) -> None:
        resolved = _resolve(schema, node) if node is not None else {}
        passthrough = resolved.get("type") == "object" and "properties" not in resolved
        leaf = not isinstance(value, dict) or not value or passthrough or path == "gateway.config"
        if not leaf:
            for key, sub in value.items():
                child = _child(schema, node, key) if node is not None else None
                walk(sub, child, f"{path}.{key}" if path else key)
            return
        desc = (node or {}).get("description", "")
        if not desc:
            missing.append(path)
        default = json.dumps(value, separators=(",", ":"))
        rows.append(f"| `{path}` | {_cell(_type_of(node or {}))} | `{_cell(default)}` "
                     f"| {_cell(desc)} |")

    walk(values, schema, "")
    return rows, missing


def config_rows(config: dict[str, Any]) -> list[str]:
    rows = []
    for name, prop in config.items():
        default = json.dumps(prop.get("default"), separators=(",", ":"))
        rows.append(f"| `gateway.config.{name}` | `DISTILLERY_{name.upper()}` | `{_cell(default)}` "
                    f"| {_cell(str(prop.get('description', '')))} |")
    for name, source in CHART_MANAGED.items():
        rows.append(f"| (set by the chart) | `DISTILLERY_{name.upper()}` | | from {source} |")
    return rows


def render_table(schema: dict[str, Any]) -> tuple[str, list[str]]:
    rows, missing = values_rows(schema)
    config = schema["properties"]["gateway"]["properties"]["config"]["properties"]
    lines = [START, "", "| Key | Type | Default | Description |", "|---|---|---|---|", *rows, "",
             "`gateway.config` keys (from service/settings.py; values.schema.json checks "
             "their types and bounds):", "",
             "| Key | Environment variable | Default | Description |", "|---|---|---|---|",
             *config_rows(config), "", END]
    return "\n".join(lines), missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Regenerate the chart's generated parts.")
    parser.add_argument("--check", action="store_true", help="only report what is stale")
    args = parser.parse_args(argv)

    schema_text = SCHEMA.read_text()
    schema = json.loads(schema_text)
    config = schema["properties"]["gateway"]["properties"]["config"]
    config["properties"] = config_schema()
    new_schema_text = json.dumps(schema, indent=2) + "\n"

    readme = README.read_text()
    if START not in readme or END not in readme:
        print(f"sync: {README} lacks the {START} / {END} markers", file=sys.stderr)
        return 1
    table, missing = render_table(schema)
    head, rest = readme.split(START, 1)
    new_readme = head + table + rest.split(END, 1)[1]

    problems = [f"{SCHEMA.relative_to(ROOT)}: values key {m} has no description"
                for m in missing]
    stale = []
    if new_schema_text != schema_text:
        stale.append(str(SCHEMA.relative_to(ROOT)))
    if new_readme != readme:
        stale.append(str(README.relative_to(ROOT)))
    if args.check:
        problems += [f"{name} is stale: run `.venv/bin/python helm/sync.py`" for name in stale]
    else:
        SCHEMA.write_text(new_schema_text)
        README.write_text(new_readme)
        for name in stale:
            print(f"sync: rewrote {name}")
    for p in problems:
        print(f"sync: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
