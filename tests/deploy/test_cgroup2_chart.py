"""The chart on cgroup v2 nodes: what the pod gets in each sandbox mode, and what NOTES say.

The sandbox code itself is tested on a real cgroup v2 kernel by `make test-cgroup2`; here
the chart must give it what it needs there: privileged mode (the container's own cgroup
namespace, writable), or capabilities mode with SYS_ADMIN and mount-permitting profiles but
without the node's cgroupfs as a hostPath (on v2 that is the node's whole hierarchy).
"""

from __future__ import annotations

import pytest

from tests.deploy.chart import CHART, RELEASE, HelmError, container, pod_spec, render, run_helm


def notes(*sets: str) -> str:
    args = ["install", "--dry-run=client", RELEASE, str(CHART)]
    for s in sets:
        args += ["--set", s]
    return run_helm(*args)


def test_default_detects_the_hierarchy_and_says_where_to_look() -> None:
    text = notes()
    assert 'cgroup mode "auto" (v2 if the node mounts cgroup2, else v1' in text
    assert "GET /readyz shows which (sandbox.limits)" in text
    assert "RLIMIT-ONLY" not in text


def test_v2_capabilities_mode_has_what_the_cgroup2_mount_needs() -> None:
    r = render(values={"sandbox": {"securityMode": "capabilities"},
                       "gateway": {"config": {"sandbox_cgroup_mode": "v2"}}})
    dep = r.get("Deployment", "gateway")
    sc = container(dep, "gateway")["securityContext"]
    where = r.where(dep)
    assert "SYS_ADMIN" in sc["capabilities"]["add"], where  # mount(2) of its cgroup2 view
    assert sc["appArmorProfile"] == {"type": "Unconfined"}, where  # default profiles deny mount
    assert sc["seccompProfile"] == {"type": "Unconfined"}, where
    assert sc["runAsUser"] == 0, where
    assert all(v["name"] != "cgroupfs" for v in pod_spec(dep)["volumes"]), where
    cm = r.get("ConfigMap", "config")
    assert cm.doc["data"]["DISTILLERY_SANDBOX_CGROUP_MODE"] == "v2", r.where(cm)
    text = notes("sandbox.securityMode=capabilities", "gateway.config.sandbox_cgroup_mode=v2")
    assert 'cgroup mode "v2"' in text and "for cgroup v1 nodes only" not in text


def test_host_cgroupfs_is_flagged_as_v1_only() -> None:
    text = notes("sandbox.securityMode=capabilities", "sandbox.hostCgroupfs=true")
    assert "for cgroup v1 nodes only" in text and "sandbox.hostCgroupfs=false" in text


def test_rlimit_only_is_explicit_and_warned_about() -> None:
    r = render(values={"gateway": {"config": {"sandbox_cgroup_mode": "rlimit-only"}}})
    cm = r.get("ConfigMap", "config")
    assert cm.doc["data"]["DISTILLERY_SANDBOX_CGROUP_MODE"] == "rlimit-only", r.where(cm)
    text = notes("gateway.config.sandbox_cgroup_mode=rlimit-only")
    assert "WARNING: SANDBOX LIMITS ARE RLIMIT-ONLY" in text
    assert "No per-jail memory or process limits" in text


def test_unknown_cgroup_mode_is_rejected_by_the_schema() -> None:
    with pytest.raises(HelmError, match="sandbox_cgroup_mode"):
        render(values={"gateway": {"config": {"sandbox_cgroup_mode": "v3"}}})
