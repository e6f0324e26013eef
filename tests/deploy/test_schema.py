"""Bad values are refused before anything reaches a cluster: values.schema.json for single
values, template `fail`s for combinations; each message names the value to fix."""

from __future__ import annotations

from typing import Any

import pytest

from tests.deploy.chart import HelmError, nested, render

SCHEMA_REJECTS: list[tuple[str, Any, str]] = [
    ("gateway.replicas", -1, "/gateway/replicas"),
    ("gateway.replica", 2, "'replica' not allowed"),  # a typo is an error, not ignored
    ("gateway.port", 70000, "/gateway/port"),
    ("model.source", "openai", "/model/source"),
    ("vllm.gpu.count", "one", "/vllm/gpu/count"),
    ("vllm.gpuMemoryUtilization", 1.5, "/vllm/gpuMemoryUtilization"),
    ("vllm.download.sha256", "abc", "/vllm/download/sha256"),
    ("vllm.loraAdapters", [{"name": "x"}], "/vllm/loraAdapters/0"),
    ("vllm.resources", {"limits": {"memory": "lots"}}, "/vllm/resources/limits/memory"),
    ("sandbox.securityMode", "root", "/sandbox/securityMode"),
    ("sandbox.capabilities", ["NET_ADMIN"], "/sandbox/capabilities"),
    ("gateway.config.samples", 0, "/gateway/config/samples"),
    ("gateway.config.policy", "best", "/gateway/config/policy"),
    ("gateway.config.top_p", 0, "/gateway/config/top_p"),
    ("gateway.config.bogus_setting", 1, "'bogus_setting' not allowed"),
    # Chart-managed settings cannot be overridden behind the chart's back.
    ("gateway.config.model_url", "http://x", "'model_url' not allowed"),
    ("gateway.config.executor", "local", "'executor' not allowed"),
    ("gateway.ingress.hosts", [{"host": "a", "paths": [{"path": "x", "pathType": "Prefix"}]}],
     "/gateway/ingress/hosts/0/paths/0/path"),
    ("networkPolicy.ingressFrom", [{"ipBlock": {"cidr": "everyone"}}],
     "/networkPolicy/ingressFrom/0/ipBlock/cidr"),
    ("jobs.train.gpu.count", -1, "/jobs/train/gpu/count"),
    ("jobs.train.nameSuffix", "Run_1", "/jobs/train/nameSuffix"),
    ("jobs.train.image", "latest", "/jobs/train/image"),
    ("secrets.apiKeys", ["short"], "/secrets/apiKeys/0"),
    ("metrics.serviceMonitor.interval", "often", "/metrics/serviceMonitor/interval"),
]


@pytest.mark.parametrize(("path", "value", "expected"), SCHEMA_REJECTS,
                         ids=[c[0] for c in SCHEMA_REJECTS])
def test_schema_rejects(path: str, value: Any, expected: str) -> None:
    with pytest.raises(HelmError) as err:
        render(values=nested(path, value))
    msg = str(err.value)
    assert "schema" in msg and expected in msg, f"values {path}={value!r}: helm said {msg}"


def test_external_model_needs_url_and_name() -> None:
    with pytest.raises(HelmError) as err:
        render(values={"model": {"source": "external"}})
    assert "/model/" in str(err.value), str(err.value)


ES_URL = {"retrieval": {"backend": "elasticsearch", "elasticsearch": {"url": "https://es:9200"}}}
TEMPLATE_REJECTS: list[tuple[str, dict[str, Any], str]] = [
    ("es-without-url", {"retrieval": {"backend": "elasticsearch"}},
     "needs retrieval.elasticsearch.url"),
    ("es-url-blocked-by-policy", ES_URL, "retrieval.elasticsearch.networkPolicyPeers"),
    ("external-model-blocked-by-policy",
     {"model": {"source": "external", "name": "m", "external": {"url": "https://m/v1"}}},
     "model.external.networkPolicyPeers"),
    ("pvc-model-without-volume", {"persistence": {"models": {"enabled": False}}},
     "set persistence.models.enabled=true"),
    ("download-without-url", {"vllm": {"modelSource": "download"}}, "needs vllm.download.url"),
    ("bundled-es-not-downloaded", {"retrieval": {"backend": "elasticsearch"},
                                   "elasticsearch": {"enabled": True}}, "make chart-with-es"),
    ("index-job-without-es", {"jobs": {"index": {"enabled": True}}},
     "needs retrieval.backend=elasticsearch"),
]


@pytest.mark.parametrize(("case", "values", "expected"), TEMPLATE_REJECTS,
                         ids=[c[0] for c in TEMPLATE_REJECTS])
def test_template_rejects(case: str, values: dict[str, Any], expected: str) -> None:
    with pytest.raises(HelmError) as err:
        render(values=values)
    assert expected in str(err.value), f"{case}: values {values}: helm said {err.value}"
