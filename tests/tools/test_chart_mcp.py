"""The chart's gateway.mcpServers: a ConfigMap with the mcpServers file, mounted read-only,
DISTILLERY_MCP_CONFIG pointing at it, pods rolled when it changes; nothing without it."""

from __future__ import annotations

import json
from typing import Any

from tests.deploy.chart import Rendered, render

SERVERS = {"time": {"command": "mcp-server-time"}, "docs": {"url": "http://docs:8000/mcp"}}


def _gateway_container(r: Rendered) -> dict[str, Any]:
    container: dict[str, Any] = r.get("Deployment", "gateway").doc["spec"]["template"]["spec"][
        "containers"
    ][0]
    return container


def test_mcp_servers_are_mounted_as_the_config_file() -> None:
    r = render(values={"gateway": {"mcpServers": SERVERS}})
    cm = r.get("ConfigMap", "mcp")
    assert json.loads(cm.doc["data"]["mcp.json"]) == {"mcpServers": SERVERS}
    container = _gateway_container(r)
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["DISTILLERY_MCP_CONFIG"] == "/etc/distillery/mcp/mcp.json"
    mount = next(m for m in container["volumeMounts"] if m["name"] == "mcp")
    assert mount == {"name": "mcp", "mountPath": "/etc/distillery/mcp", "readOnly": True}
    deploy = r.get("Deployment", "gateway").doc
    volume = next(v for v in deploy["spec"]["template"]["spec"]["volumes"] if v["name"] == "mcp")
    assert volume["configMap"]["name"] == cm.name
    before = deploy["spec"]["template"]["metadata"]["annotations"]["checksum/mcp"]
    changed = render(values={"gateway": {"mcpServers": {"time": {"command": "other"}}}})
    after = changed.get("Deployment", "gateway").doc["spec"]["template"]["metadata"]
    assert after["annotations"]["checksum/mcp"] != before


def test_no_mcp_servers_no_file() -> None:
    r = render()
    assert not r.has("ConfigMap", "mcp")
    container = _gateway_container(r)
    assert "DISTILLERY_MCP_CONFIG" not in {e["name"] for e in container["env"]}
    assert "mcp" not in {m["name"] for m in container["volumeMounts"]}
