"""Every rendered object, for the default values, every example and a few feature mixes,
passes the Kubernetes schemas (kubernetes-validate, strict: unknown fields fail) for the
oldest and newest Kubernetes the chart supports, plus the API-server rules in k8s_rules."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from tests.deploy.chart import CHART, OFFLINE_EXAMPLES, Rendered, render
from tests.deploy.k8s_rules import object_problems, release_problems

KUBE_VERSIONS = ["1.30", "1.37"]  # Chart.yaml kubeVersion >=1.30; newest schemas shipped
CRD_SCHEMAS = Path(__file__).parent / "crd_schemas"

EVERYTHING = {
    "secrets": {"apiKeys": ["key-aaaaaaaa", "key-bbbbbbbb"], "modelApiKey": "m-key",
                "esApiKey": "es-key"},
    "retrieval": {"backend": "elasticsearch", "elasticsearch": {
        "url": "https://es.internal:9243",
        "networkPolicyPeers": [{"ipBlock": {"cidr": "10.20.0.0/16"}}]}},
    "persistence": {"data": {"enabled": True}},
    "vllm": {"loraAdapters": [{"name": "math", "path": "adapters/math"}],
             "ingressFrom": [{"namespaceSelector": {"matchLabels": {"team": "obs"}}}]},
    "sandbox": {"securityMode": "capabilities", "runtimeClassName": "kata", "hostCgroupfs": True},
    "gateway": {
        "ingress": {"enabled": True, "className": "nginx",
                    "tls": [{"hosts": ["distillery.example.com"], "secretName": "tls"}]},
        "autoscaling": {"enabled": True, "customMetric": {"enabled": True}},
        "config": {"samples": 4, "temperature": 0.6, "sandbox_allowed_imports": ["math"]},
        "mcpServers": {"time": {"command": "mcp-server-time"},
                       "docs": {"url": "http://docs.internal:8000/mcp"}},
    },
    "metrics": {"serviceMonitor": {"enabled": True}},
    "jobs": {"index": {"enabled": True, "corpus": {"url": "https://data.example.com/c.jsonl.gz"}},
             "generate": {"enabled": True}, "train": {"enabled": True},
             "export": {"enabled": True, "nameSuffix": "v2"}},
}
UNJAILED_EXTERNAL_MODEL = {
    "sandbox": {"enabled": False},
    "model": {"source": "external", "name": "teacher",
              "external": {"url": "https://models.example.com/v1",
                           "networkPolicyPeers": [{"ipBlock": {"cidr": "192.0.2.0/24"}}]}},
    "networkPolicy": {"extraEgress": [{"to": [{"ipBlock": {"cidr": "198.51.100.0/24"}}],
                                       "ports": [{"port": 443, "protocol": "TCP"}]}]},
}
CPU_VLLM_DOWNLOAD = {
    "vllm": {"gpu": {"count": 0}, "modelSource": "download",
             "download": {"url": "https://models.example.com/s.tar.gz"}},
    "persistence": {"models": {"enabled": False}},
    "networkPolicy": {"enabled": False},
}

CASES: list[tuple[str, list[Path], dict[str, Any] | None]] = [
    ("default", [], None),
    *[(p.stem, [p], None) for p in OFFLINE_EXAMPLES],
    ("everything-on", [], EVERYTHING),
    ("unjailed-external-model", [], UNJAILED_EXTERNAL_MODEL),
    ("cpu-vllm-download", [], CPU_VLLM_DOWNLOAD),
]


@cache
def rendered(case: str) -> Rendered:
    _, files, values = next(c for c in CASES if c[0] == case)
    return render(files, values)


def crd_schema(doc: dict[str, Any]) -> dict[str, Any] | None:
    path = CRD_SCHEMAS / f"{doc['kind'].lower()}-{doc['apiVersion'].replace('/', '-')}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def validate(doc: dict[str, Any], version: str) -> str | None:
    try:
        kubernetes_validate.validate(doc, version, strict=True)
        return None
    except kubernetes_validate.ValidationError as e:
        return f"{'.'.join(map(str, e.path))}: {e.message}"
    except kubernetes_validate.SchemaNotFoundError as e:
        # The CLI only WARNs here; an unknown kind is a failure unless we carry its schema.
        schema = crd_schema(doc)
        if schema is None:
            return f"no schema: {e.message} (add one under tests/deploy/crd_schemas/)"
        try:
            jsonschema.validate(doc, schema)
            return None
        except jsonschema.ValidationError as ve:
            return f"{'.'.join(map(str, ve.path))}: {ve.message} (crd_schemas)"


@pytest.mark.parametrize("case", [c[0] for c in CASES])
@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_every_object_passes_kubernetes_schemas(case: str, version: str) -> None:
    r = rendered(case)
    assert r.objects, f"{r.source}: rendered nothing"
    problems = []
    for obj in r.objects:
        err = validate(obj.doc, version)
        if err:
            problems.append(f"{r.where(obj)}: Kubernetes {version}: {err}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("case", [c[0] for c in CASES])
def test_api_server_rules(case: str) -> None:
    r = rendered(case)
    problems = [f"{r.where(o)}: {p}" for o in r.objects for p in object_problems(o)]
    problems += release_problems(r)
    assert not problems, "\n".join(problems)


def test_cases_cover_every_template() -> None:
    """Each template renders at least one object in some case, so each one is validated."""
    templates = {p.name for p in (CHART / "templates").glob("*.yaml")}
    seen = {o.template.removeprefix("templates/") for c in CASES for o in rendered(c[0]).objects}
    assert templates <= seen, f"templates never rendered by test_manifests: {templates - seen}"
