"""What the rendered objects do: network isolation, probes, GPUs, sandbox privileges, Jobs,
and the DISTILLERY_* environment the service reads. Every assertion names the values and
the object it looked at."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import pytest

from distillery.settings import Settings
from tests.deploy.chart import (
    CHART,
    RELEASE,
    REPO,
    HelmError,
    Rendered,
    container,
    pod_spec,
    render,
    run_helm,
)

EXAMPLES = CHART / "examples"
GATEWAY_SELECTOR = {"app.kubernetes.io/name": "distillery", "app.kubernetes.io/instance": RELEASE,
                    "app.kubernetes.io/component": "gateway"}
VLLM_SELECTOR = {**GATEWAY_SELECTOR, "app.kubernetes.io/component": "vllm"}


def env_of(r: Rendered) -> dict[str, str]:
    cm = r.get("ConfigMap", "config")
    return {k: str(v) for k, v in cm.doc["data"].items()}


def settings_from(r: Rendered, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings exactly as the gateway process would build them from the rendered env."""
    for key in list(os.environ):
        if key.startswith("DISTILLERY_"):
            monkeypatch.delenv(key)
    for k, v in env_of(r).items():
        monkeypatch.setenv(k, v)
    return Settings()  # type: ignore[call-arg]


def egress_rules(r: Rendered) -> list[dict[str, Any]]:
    np = r.get("NetworkPolicy", "gateway")
    return list(np.doc["spec"]["egress"])


# --- NetworkPolicy -------------------------------------------------------------------------


def test_gateway_egress_is_dns_and_vllm_only_by_default() -> None:
    r = render()
    np = r.get("NetworkPolicy", "gateway")
    where = r.where(np)
    assert np.doc["spec"]["podSelector"]["matchLabels"] == GATEWAY_SELECTOR, where
    assert set(np.doc["spec"]["policyTypes"]) == {"Ingress", "Egress"}, where
    rules = egress_rules(r)
    # A rule without `to` or `ports` would open every destination or port.
    for rule in rules:
        assert rule.get("to") and rule.get("ports"), f"{where}: open egress rule {rule}"
    dns, model = rules  # and nothing else: the embedded index needs no network
    assert {p["port"] for p in dns["ports"]} == {53}, where
    assert dns["to"][0]["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}, where
    assert model["to"] == [{"podSelector": {"matchLabels": VLLM_SELECTOR}}], where
    assert model["ports"] == [{"port": 8000, "protocol": "TCP"}], where


def test_gateway_egress_reaches_external_es_on_its_port_only() -> None:
    r = render([EXAMPLES / "external-es.yaml"])
    rules = egress_rules(r)
    es = [rule for rule in rules if rule["to"] == [{"ipBlock": {"cidr": "203.0.113.0/24"}}]]
    assert len(es) == 1, f"{r.where(r.get('NetworkPolicy', 'gateway'))}: {rules}"
    assert es[0]["ports"] == [{"port": 9243, "protocol": "TCP"}], r.source
    assert len(rules) == 3, f"{r.source}: expected DNS, vLLM, ES rules only: {rules}"


def test_external_model_egress_uses_its_peers_and_default_https_port() -> None:
    r = render(values={"model": {"source": "external", "name": "m", "external": {
        "url": "https://models.example.com/v1",
        "networkPolicyPeers": [{"ipBlock": {"cidr": "192.0.2.0/24"}}]}}})
    rules = egress_rules(r)
    assert {"to": [{"ipBlock": {"cidr": "192.0.2.0/24"}}],
            "ports": [{"port": 443, "protocol": "TCP"}]} in rules, r.source
    assert not r.has("Deployment", "vllm") and not r.has("NetworkPolicy", "vllm"), r.source


def test_vllm_accepts_only_the_gateway_and_listed_peers() -> None:
    r = render([EXAMPLES / "gpu-production.yaml"])
    np = r.get("NetworkPolicy", "vllm")
    assert np.doc["spec"]["policyTypes"] == ["Ingress"], r.where(np)
    (rule,) = np.doc["spec"]["ingress"]
    assert rule["from"][0] == {"podSelector": {"matchLabels": GATEWAY_SELECTOR}}, r.where(np)
    assert rule["from"][1]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "monitoring"}, r.where(np)
    assert rule["ports"] == [{"port": 8000, "protocol": "TCP"}], r.where(np)


def test_gateway_ingress_limited_to_listed_peers_on_the_http_port() -> None:
    r = render([EXAMPLES / "gpu-production.yaml"])
    np = r.get("NetworkPolicy", "gateway")
    (rule,) = np.doc["spec"]["ingress"]
    assert rule["ports"] == [{"port": 8080, "protocol": "TCP"},
                             {"port": 8081, "protocol": "TCP"}], r.where(np)  # http, probe
    names = [p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
             for p in rule["from"]]
    assert names == ["ingress-nginx", "monitoring"], r.where(np)


def test_network_policy_can_be_turned_off() -> None:
    r = render(values={"networkPolicy": {"enabled": False}})
    assert not r.all("NetworkPolicy"), r.source


# --- probes --------------------------------------------------------------------------------


def test_gateway_probes_target_healthz_and_readyz_on_the_probe_listener() -> None:
    r = render(values={"gateway": {"port": 9000, "probePort": 9001}})
    dep = r.get("Deployment", "gateway")
    c = container(dep, "gateway")
    where = r.where(dep)
    assert c["ports"] == [{"name": "http", "containerPort": 9000, "protocol": "TCP"},
                          {"name": "probe", "containerPort": 9001, "protocol": "TCP"}], where
    assert c["args"] == ["serve", "--host", "0.0.0.0", "--port", "9000",
                         "--probe-port", "9001"], where
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "probe"}, where
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "probe"}, where
    assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "probe"}, where
    assert env_of(r)["DISTILLERY_PORT"] == "9000", r.source
    assert env_of(r)["DISTILLERY_PROBE_PORT"] == "9001", r.source
    svc = r.get("Service", "gateway")  # the probe listener is not published
    assert [p["targetPort"] for p in svc.doc["spec"]["ports"]] == ["http"], r.where(svc)
    np = r.get("NetworkPolicy", "gateway")  # the kubelet reaches it where it reaches http
    ports = [p["port"] for p in np.doc["spec"]["ingress"][0]["ports"]]
    assert ports == [9000, 9001], r.where(np)


def test_probe_port_must_differ_from_the_port() -> None:
    with pytest.raises(HelmError, match="probePort"):
        render(values={"gateway": {"port": 9000, "probePort": 9000}})


def test_vllm_startup_probe_allows_minutes_for_model_load() -> None:
    r = render()
    dep = r.get("Deployment", "vllm")
    c = container(dep, "vllm")
    sp = c["startupProbe"]
    assert sp["httpGet"] == {"path": "/health", "port": "http"}, r.where(dep)
    assert sp["periodSeconds"] * sp["failureThreshold"] >= 600, r.where(dep)
    assert c["readinessProbe"]["httpGet"]["path"] == "/health", r.where(dep)
    r2 = render(values={"vllm": {"startupProbe": {"periodSeconds": 20, "failureThreshold": 120}}})
    sp2 = container(r2.get("Deployment", "vllm"), "vllm")["startupProbe"]
    assert (sp2["periodSeconds"], sp2["failureThreshold"]) == (20, 120), r2.source


# --- GPUs, model, LoRA ---------------------------------------------------------------------


def test_vllm_gpu_requests_limits_and_tensor_parallel_follow_gpu_count() -> None:
    r = render(values={"vllm": {"gpu": {"count": 2}}})
    dep = r.get("Deployment", "vllm")
    c = container(dep, "vllm")
    where = r.where(dep)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 2, where
    assert c["resources"]["requests"]["nvidia.com/gpu"] == 2, where
    assert c["resources"]["requests"]["memory"] == "24Gi", f"{where}: user requests kept"
    args = c["args"]
    assert args[args.index("--tensor-parallel-size") + 1] == "2", where
    assert args[0] == "/models/student", where
    shm = next(v for v in pod_spec(dep)["volumes"] if v["name"] == "shm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "2Gi"}, where
    assert {"name": "shm", "mountPath": "/dev/shm"} in c["volumeMounts"], where


def test_cpu_vllm_requests_no_gpu() -> None:
    r = render(values={"vllm": {"gpu": {"count": 0}}})
    c = container(r.get("Deployment", "vllm"), "vllm")
    flat = json.dumps(c["resources"])
    assert "nvidia.com/gpu" not in flat, r.source
    assert "--gpu-memory-utilization" not in c["args"], r.source


def test_lora_adapters_become_lora_modules_on_the_models_volume() -> None:
    r = render([EXAMPLES / "gpu-production.yaml"])
    dep = r.get("Deployment", "vllm")
    args = container(dep, "vllm")["args"]
    i = args.index("--lora-modules")
    assert args[i + 1: i + 3] == ["student-math=/models/adapters/math",
                                  "student-qa=/models/adapters/qa"], r.where(dep)
    assert "--enable-lora" in args and args[args.index("--max-lora-rank") + 1] == "64"
    assert env_of(r)["DISTILLERY_MODEL"] == "student-math", "gateway asks for the adapter"
    vols = {v["name"]: v for v in pod_spec(dep)["volumes"]}
    assert vols["models"]["persistentVolumeClaim"] == {"claimName": "distillery-models",
                                                       "readOnly": True}, r.where(dep)


def test_model_download_init_container_checks_sha256() -> None:
    r = render([EXAMPLES / "external-es.yaml"])
    dep = r.get("Deployment", "vllm")
    spec = pod_spec(dep)
    (init,) = spec["initContainers"]
    env = {e["name"]: e["value"] for e in init["env"]}
    assert env["MODEL_URL"].startswith("https://models.example.com/"), r.where(dep)
    assert len(env["MODEL_SHA256"]) == 64 and "sha256sum -c" in init["args"][0], r.where(dep)
    assert container(dep, "vllm")["args"][0] == "/model-cache/model", r.where(dep)
    assert init["securityContext"]["runAsNonRoot"] is True, r.where(dep)


def test_vllm_api_key_comes_from_the_secret() -> None:
    r = render(values={"secrets": {"modelApiKey": "shared-key"}})
    c = container(r.get("Deployment", "vllm"), "vllm")
    ref = next(e for e in c["env"] if e["name"] == "VLLM_API_KEY")["valueFrom"]["secretKeyRef"]
    secret = r.get("Secret", "secrets")
    assert ref["name"] == secret.name and ref["key"] == "DISTILLERY_MODEL_API_KEY", r.source
    assert secret.doc["stringData"]["DISTILLERY_MODEL_API_KEY"] == "shared-key", r.source


# --- sandbox privileges --------------------------------------------------------------------


def test_privileged_mode_is_the_default_and_only_for_the_gateway() -> None:
    r = render()
    gw = container(r.get("Deployment", "gateway"), "gateway")["securityContext"]
    assert gw["privileged"] is True and gw["runAsUser"] == 0, r.source
    assert gw["readOnlyRootFilesystem"] is True, r.source
    assert env_of(r)["DISTILLERY_EXECUTOR"] == "sandbox", r.source
    vllm = container(r.get("Deployment", "vllm"), "vllm")["securityContext"]
    assert not vllm.get("privileged") and vllm["allowPrivilegeEscalation"] is False, r.source


def test_capabilities_mode_adds_sys_admin_and_profiles_without_privileged() -> None:
    r = render(values={"sandbox": {"securityMode": "capabilities"}})
    dep = r.get("Deployment", "gateway")
    sc = container(dep, "gateway")["securityContext"]
    where = r.where(dep)
    assert "privileged" not in sc, where
    assert sc["capabilities"]["drop"] == ["ALL"], where
    assert "SYS_ADMIN" in sc["capabilities"]["add"], where
    assert sc["seccompProfile"] == {"type": "Unconfined"}, where
    assert sc["appArmorProfile"] == {"type": "Unconfined"}, where
    assert all(v["name"] != "cgroupfs" for v in pod_spec(dep)["volumes"]), where


def test_capabilities_mode_can_mount_the_node_cgroupfs() -> None:
    r = render(values={"sandbox": {"securityMode": "capabilities", "hostCgroupfs": True},
                       "jobs": {"generate": {"enabled": True}, "export": {"enabled": True}}})
    for kind, component in (("Deployment", "gateway"), ("Job", "generate")):
        obj = r.get(kind, component)
        vols = {v["name"]: v for v in pod_spec(obj)["volumes"]}
        assert vols["cgroupfs"]["hostPath"]["path"] == "/sys/fs/cgroup", r.where(obj)
        mount = next(m for m in container(obj)["volumeMounts"] if m["name"] == "cgroupfs")
        assert mount == {"name": "cgroupfs", "mountPath": "/sys/fs/cgroup"}, r.where(obj)
    export = r.get("Job", "export")
    assert all(v["name"] != "cgroupfs" for v in pod_spec(export)["volumes"]), r.where(export)
    # privileged mode never mounts it: the container's own cgroupfs is writable there
    r2 = render(values={"sandbox": {"hostCgroupfs": True}})
    gw = r2.get("Deployment", "gateway")
    assert all(v["name"] != "cgroupfs" for v in pod_spec(gw)["volumes"]), r2.where(gw)


def test_sandbox_off_runs_restricted_unjailed_and_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    r = render(values={"sandbox": {"enabled": False}})
    dep = r.get("Deployment", "gateway")
    sc = container(dep, "gateway")["securityContext"]
    where = r.where(dep)
    assert sc["runAsNonRoot"] is True and sc["allowPrivilegeEscalation"] is False, where
    assert sc["capabilities"] == {"drop": ["ALL"]}, where
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
    assert pod_spec(dep)["securityContext"]["runAsNonRoot"] is True, where
    assert settings_from(r, monkeypatch).executor == "local", r.source
    notes = run_helm("install", "--dry-run=client", RELEASE, str(CHART),
                     "--set", "sandbox.enabled=false")
    assert "WARNING: THE SANDBOX IS OFF" in notes and "UNJAILED" in notes, "NOTES.txt"


def test_runtime_class_applies_to_jailing_pods_only() -> None:
    r = render(values={"sandbox": {"runtimeClassName": "kata"},
                       "jobs": {"generate": {"enabled": True}, "export": {"enabled": True}}})
    assert pod_spec(r.get("Deployment", "gateway"))["runtimeClassName"] == "kata", r.source
    assert pod_spec(r.get("Job", "generate"))["runtimeClassName"] == "kata", r.source
    assert "runtimeClassName" not in pod_spec(r.get("Job", "export")), r.source
    assert "runtimeClassName" not in pod_spec(r.get("Deployment", "vllm")), r.source


# --- Jobs ----------------------------------------------------------------------------------


def test_index_job_builds_the_configured_es_index_from_a_downloaded_corpus() -> None:
    r = render([EXAMPLES / "external-es.yaml"])
    job = r.get("Job", "index")
    c = container(job, "index")
    where = r.where(job)
    assert c["command"] == ["distillery"], where
    assert c["args"] == ["index", "build", "--corpus", "/work/corpus/wiki-passages.jsonl.gz",
                         "--backend", "es", "--es-url",
                         "https://wiki.es.eu-west-1.aws.found.io:9243", "--index", "wiki",
                         "--no-progress"], where
    (init,) = pod_spec(job)["initContainers"]
    assert init["command"][-1] == "https://data.example.com/corpora/wiki-passages.jsonl.gz", where
    assert pod_spec(job)["restartPolicy"] == "Never", where
    assert c["securityContext"]["runAsNonRoot"] is True, where
    # The ES key reaches the Job through the Secret.
    assert {"secretRef": {"name": f"{RELEASE}-distillery-secrets"}} in c["envFrom"], where


def test_index_job_reads_a_corpus_from_the_data_volume() -> None:
    r = render(values={"retrieval": {"backend": "elasticsearch", "elasticsearch": {
        "url": "http://es:9200", "networkPolicyPeers": [{"podSelector": {}}]}},
        "persistence": {"data": {"enabled": True}}, "jobs": {"index": {"enabled": True}}})
    job = r.get("Job", "index")
    args = container(job, "index")["args"]
    assert args[args.index("--corpus") + 1] == "/data/corpus/wiki.jsonl.gz", r.where(job)
    assert "initContainers" not in pod_spec(job), r.where(job)


def test_training_jobs_use_the_train_image_gpus_and_name_suffix() -> None:
    r = render([EXAMPLES / "gpu-production.yaml"])
    job = r.get("Job", "train-run-2024-06-01")
    c = container(job, "train")
    where = r.where(job)
    assert c["image"] == "registry.example.com/ml/distillery:0.1.0-train", where
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 4, where
    assert c["resources"]["requests"]["nvidia.com/gpu"] == 4, where
    assert pod_spec(job)["tolerations"][0]["key"] == "nvidia.com/gpu", where
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert {"/models", "/data"} <= mounts, where
    export = container(r.get("Job", "export-run-2024-06-01"), "export")
    assert "nvidia.com/gpu" not in json.dumps(export["resources"]), r.source


def test_generate_job_gets_the_sandbox_privileges() -> None:
    r = render(values={"jobs": {"generate": {"enabled": True}}})
    job = r.get("Job", "generate")
    assert container(job, "generate")["securityContext"]["privileged"] is True, r.where(job)


def test_disabled_jobs_render_nothing() -> None:
    assert not render().all("Job")


# --- configuration -------------------------------------------------------------------------


def test_gateway_settings_parse_from_the_rendered_env(monkeypatch: pytest.MonkeyPatch) -> None:
    r = render([EXAMPLES / "gpu-production.yaml"], values={"gateway": {"config": {
        "temperature": 0.25, "sandbox_output_max_bytes": 1000000,
        "sandbox_allowed_imports": ["math", "re"], "seed": 7}}})
    s = settings_from(r, monkeypatch)
    assert s.model_url == f"http://{RELEASE}-distillery-vllm:8000/v1", r.source
    assert s.model == "student-math" and s.samples == 8 and s.max_concurrency == 32, r.source
    assert s.temperature == 0.25 and s.seed == 7, r.source
    assert s.sandbox_output_max_bytes == 1000000, f"{r.source}: {env_of(r)}"
    assert s.sandbox_allowed_imports == ["math", "re"], r.source
    assert s.es_url == "http://wiki-es-http.elastic.svc:9200" and s.es_index == "wiki-2024"
    assert (s.host, s.port, str(s.cache_dir)) == ("0.0.0.0", 8080, "/var/cache/distillery")


def test_cpu_demo_uses_the_embedded_engine_and_index(monkeypatch: pytest.MonkeyPatch) -> None:
    r = render([EXAMPLES / "cpu-demo.yaml"])
    s = settings_from(r, monkeypatch)
    assert s.model_url is None and s.es_url is None, f"{r.source}: {env_of(r)}"
    assert not r.has("Deployment", "vllm") and not r.all("PersistentVolumeClaim"), r.source
    assert container(r.get("Deployment", "gateway"))["image"] == "distillery:0.1.0-demo"


def test_api_keys_secret_parses_as_the_settings_list(monkeypatch: pytest.MonkeyPatch) -> None:
    r = render(values={"secrets": {"apiKeys": ["first-key-1", "second-key-2"]}})
    data = r.get("Secret", "secrets").doc["stringData"]
    monkeypatch.setenv("DISTILLERY_API_KEYS", data["DISTILLERY_API_KEYS"])
    keys = [k.get_secret_value() for k in Settings().api_keys]  # type: ignore[call-arg]
    assert keys == ["first-key-1", "second-key-2"], r.source
    gw = container(r.get("Deployment", "gateway"))
    assert {"secretRef": {"name": f"{RELEASE}-distillery-secrets"}} in gw["envFrom"], r.source


def test_existing_secret_is_referenced_not_created() -> None:
    r = render([EXAMPLES / "gpu-production.yaml"])
    assert not r.all("Secret"), r.source
    gw = container(r.get("Deployment", "gateway"))
    assert {"secretRef": {"name": "distillery-keys"}} in gw["envFrom"], r.source


def test_config_change_rolls_the_gateway_pods() -> None:
    a = render().get("Deployment", "gateway").doc["spec"]["template"]["metadata"]["annotations"]
    b = render(values={"gateway": {"config": {"samples": 2}}}).get(
        "Deployment", "gateway").doc["spec"]["template"]["metadata"]["annotations"]
    assert a["checksum/config"] != b["checksum/config"]
    assert a["checksum/secret"] == b["checksum/secret"]


# --- scaling, disruption, monitoring -------------------------------------------------------


def test_hpa_scales_on_cpu_and_runs_in_flight_and_owns_replicas() -> None:
    r = render([EXAMPLES / "gpu-production.yaml"])
    hpa = r.get("HorizontalPodAutoscaler", "gateway")
    metrics = hpa.doc["spec"]["metrics"]
    assert metrics[0]["resource"]["target"]["averageUtilization"] == 60, r.where(hpa)
    assert metrics[1]["pods"]["metric"]["name"] == "distillery_runs_in_flight", r.where(hpa)
    assert "replicas" not in r.get("Deployment", "gateway").doc["spec"], "HPA owns replicas"


def test_pdb_min_available_wins_over_the_default_max_unavailable() -> None:
    r = render([EXAMPLES / "gpu-production.yaml"])
    spec = r.get("PodDisruptionBudget", "gateway").doc["spec"]
    assert spec["minAvailable"] == 2 and "maxUnavailable" not in spec, r.source
    assert render().get("PodDisruptionBudget", "gateway").doc["spec"]["maxUnavailable"] == 1


def test_service_monitors_scrape_metrics_of_both_services() -> None:
    r = render([EXAMPLES / "gpu-production.yaml"])
    for component, selector in (("gateway", GATEWAY_SELECTOR), ("vllm", VLLM_SELECTOR)):
        sm = r.get("ServiceMonitor", component)
        assert sm.doc["spec"]["selector"]["matchLabels"] == selector, r.where(sm)
        assert sm.doc["spec"]["endpoints"][0]["path"] == "/metrics", r.where(sm)
        assert sm.doc["metadata"]["labels"]["release"] == "kube-prometheus-stack", r.where(sm)
    assert not render().all("ServiceMonitor")


# --- the optional Elastic dependency -------------------------------------------------------


def stub_es_chart(tmp_path: Path) -> Path:
    """The chart copy `make chart-with-es` makes, with a stand-in for the downloaded Elastic
    chart (an empty chart of the same name: helm only checks that it is there)."""
    spec = importlib.util.spec_from_file_location("chart_with_es", REPO / "helm/chart_with_es.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    chart: Path = module.make_copy(tmp_path)
    stub = chart / "charts" / "elasticsearch"
    stub.mkdir(parents=True)
    (stub / "Chart.yaml").write_text(
        f"apiVersion: v2\nname: elasticsearch\nversion: {module.ES_CHART_VERSION}\n")
    return chart


def test_bundled_es_wires_gateway_and_policy_to_the_elastic_service(tmp_path: Path) -> None:
    chart = stub_es_chart(tmp_path)
    assert "condition: elasticsearch.enabled" in (chart / "Chart.yaml").read_text()
    r = render([EXAMPLES / "bundled-es.yaml"], chart=chart)
    assert env_of(r)["DISTILLERY_ES_URL"] == "http://elasticsearch-master:9200", r.source
    es_rule = egress_rules(r)[-1]
    assert es_rule == {"to": [{"podSelector": {"matchLabels": {"app": "elasticsearch-master"}}}],
                       "ports": [{"port": 9200, "protocol": "TCP"}]}, r.source


def test_helm_sees_no_dependency_in_the_plain_chart() -> None:
    text = (CHART / "Chart.yaml").read_text()
    assert "\ndependencies:" not in text, "helm/distillery/Chart.yaml must render offline"



# --- the commands the chart runs exist -----------------------------------------------------

ALL_JOBS = {"jobs": {name: {"enabled": True} for name in
                     ("index", "generate", "build-data", "train", "export")},
            "retrieval": {"backend": "elasticsearch", "elasticsearch": {
                "url": "http://es:9200", "networkPolicyPeers": [{"podSelector": {}}]}},
            "persistence": {"data": {"enabled": True}}}


@pytest.mark.parametrize("case", ["default-jobs", "gpu-production.yaml", "external-es.yaml"])
def test_rendered_commands_parse_with_the_distillery_cli(case: str) -> None:
    """Every `distillery` argv the chart renders (gateway, Jobs) is accepted by the real CLI
    parser: a renamed flag in service/, retrieval/ or training/ fails here, not in a cluster."""
    from distillery.cli import build_parser

    r = render(values=ALL_JOBS) if case == "default-jobs" else render([EXAMPLES / case])
    parser = build_parser()
    checked = 0
    for obj in r.all("Deployment") + r.all("Job"):
        c = container(obj)
        if c.get("command", ["distillery"]) != ["distillery"] or "vllm" in c["image"]:
            continue
        try:
            parser.parse_args([str(a) for a in c["args"]])
        except SystemExit as exc:
            pytest.fail(f"{r.where(obj)}: `distillery {' '.join(c['args'])}` is rejected "
                        f"by the CLI (exit {exc.code})")
        checked += 1
    assert checked >= 2, f"{r.source}: found no distillery commands to check"
