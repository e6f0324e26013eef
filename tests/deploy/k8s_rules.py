"""Checks an API server would make that schema validation cannot (no API server runs here).

Each returns messages; empty means fine. They look at one rendered object at a time, or at
the whole release for references between objects.
"""

from __future__ import annotations

import re
from typing import Any

from tests.deploy.chart import RELEASE, Obj, Rendered

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
WORKLOADS = {"Deployment", "Job", "StatefulSet", "DaemonSet"}


def _containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return list(spec.get("initContainers", [])) + list(spec.get("containers", []))


def object_problems(obj: Obj) -> list[str]:
    out = []
    name = obj.name
    limit = 63 if obj.kind in {"Service", "Job"} else 253
    if len(name) > limit or not DNS1123_LABEL.match(name):
        out.append(f"name {name!r} is not a DNS-1123 name of at most {limit} characters")
    if obj.kind not in WORKLOADS:
        return out
    tmpl = obj.doc["spec"]["template"]
    spec = tmpl["spec"]
    selector = obj.doc["spec"].get("selector", {}).get("matchLabels", {})
    labels = tmpl.get("metadata", {}).get("labels", {})
    for k, v in selector.items():
        if labels.get(k) != v:
            out.append(f"selector {k}={v} does not match the pod template labels")
    volumes = {v["name"] for v in spec.get("volumes", [])}
    if len(volumes) != len(spec.get("volumes", [])):
        out.append("duplicate volume names")
    for c in _containers(spec):
        cname = c["name"]
        ports = {p.get("name") for p in c.get("ports", [])}
        for m in c.get("volumeMounts", []):
            if m["name"] not in volumes:
                out.append(f"container {cname} mounts undefined volume {m['name']}")
        env_names = [e["name"] for e in c.get("env", [])]
        if len(env_names) != len(set(env_names)):
            out.append(f"container {cname} repeats env names {env_names}")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            port = c.get(probe, {}).get("httpGet", {}).get("port")
            if isinstance(port, str) and port not in ports:
                out.append(f"container {cname} {probe} uses unknown port name {port}")
        sc = c.get("securityContext", {})
        adds = set(sc.get("capabilities", {}).get("add", []))
        if sc.get("allowPrivilegeEscalation") is False and (
            sc.get("privileged") or adds & {"SYS_ADMIN", "CAP_SYS_ADMIN"}
        ):
            out.append(f"container {cname}: allowPrivilegeEscalation=false is invalid with "
                       "privileged or CAP_SYS_ADMIN")
        res = c.get("resources", {})
        for key, qty in res.get("limits", {}).items():
            if "/" in key and not key.startswith("kubernetes.io"):  # extended resources
                if res.get("requests", {}).get(key, qty) != qty:
                    out.append(f"container {cname}: {key} request differs from its limit")
    if obj.kind == "Job" and spec.get("restartPolicy") not in {"Never", "OnFailure"}:
        out.append("a Job's restartPolicy must be Never or OnFailure")
    return out


def release_problems(r: Rendered) -> list[str]:
    """References between objects: Services select pods, ports and claims exist."""
    out = []
    pods = [o for o in r.objects if o.kind in WORKLOADS]
    claims = {o.name for o in r.all("PersistentVolumeClaim")}
    for svc in r.all("Service"):
        sel = svc.doc["spec"].get("selector", {})
        matching = [p for p in pods
                    if all(p.doc["spec"]["template"]["metadata"]["labels"].get(k) == v
                           for k, v in sel.items())]
        if not matching:
            out.append(f"{r.where(svc)}: selects no pods")
        for port in svc.doc["spec"]["ports"]:
            target = port.get("targetPort")
            for p in matching:
                names = {pt.get("name") for c in p.doc["spec"]["template"]["spec"]["containers"]
                         for pt in c.get("ports", [])}
                if isinstance(target, str) and target not in names:
                    out.append(f"{r.where(svc)}: targetPort {target} is not a port of {p.label}")
    for p in pods:
        for v in p.doc["spec"]["template"]["spec"].get("volumes", []):
            claim = v.get("persistentVolumeClaim", {}).get("claimName")
            # Claims named after the release are the chart's own: they must be rendered.
            if claim and claim.startswith(f"{RELEASE}-distillery-") and claim not in claims:
                out.append(f"{r.where(p)}: claim {claim} is not rendered")
    for hpa in r.all("HorizontalPodAutoscaler"):
        ref = hpa.doc["spec"]["scaleTargetRef"]
        if not any(o.kind == ref["kind"] and o.name == ref["name"] for o in r.objects):
            out.append(f"{r.where(hpa)}: scales missing {ref['kind']}/{ref['name']}")
    return out
