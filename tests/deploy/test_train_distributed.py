"""The train Job under torchrun: one pod with N ranks (`--standalone`), or an Indexed Job of
several pods with a headless Service whose pod 0 is the rendezvous. Rendered with the real
helm, validated against the Kubernetes schemas (strict, oldest and newest supported) and the
API-server rules, and the torchrun command line checked against what torchrun expects.

Why an Indexed Job and not Kubeflow's PyTorchJob: it is batch/v1 (no operator or CRD to
install, validated by the real schemas here), the completion index is the node rank, and a
headless Service gives pod 0 a stable DNS name; PyTorchJob adds elastic restarts the trainer
does not need (a rerun resumes from the last checkpoint)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.deploy.chart import Obj, Rendered, container, pod_spec, render
from tests.deploy.k8s_rules import object_problems, release_problems
from tests.deploy.test_manifests import KUBE_VERSIONS, validate


def train(**distributed: Any) -> dict[str, Any]:
    return {"jobs": {"train": {"enabled": True, "gpu": {"count": 4},
                               "distributed": {"enabled": True, **distributed}}},
            "persistence": {"models": {"enabled": True}}}  # fmt: skip


def job(r: Rendered) -> Obj:
    return r.get("Job", "train")


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


CASES = {
    "one-node": train(),
    "two-nodes": train(nodes=2, procPerNode=8, port=29400),
    "cpu-two-nodes": {"jobs": {"train": {"enabled": True, "gpu": {"count": 0},
                                         "distributed": {"enabled": True, "nodes": 2}}}},
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_distributed_train_objects_are_valid(case: str, version: str) -> None:
    r = render(values=CASES[case])
    problems = [f"{r.where(o)}: {e}" for o in r.objects if (e := validate(o.doc, version))]
    problems += [f"{r.where(o)}: {p}" for o in r.objects for p in object_problems(o)]
    problems += release_problems(r)
    assert not problems, "\n".join(problems)


def test_one_node_runs_standalone_torchrun_with_a_rank_per_gpu() -> None:
    r = render(values=CASES["one-node"])
    c = container(job(r))
    assert c["command"] == ["torchrun"]
    args = c["args"]
    assert args[:6] == ["--standalone", "--nnodes", "1", "--nproc-per-node", "4", "-m"]
    assert args[6:9] == ["distillery.cli", "train", "sft"]
    spec = job(r).doc["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == 1
    assert not r.all("Service") or not any(s.name.endswith("-train") for s in r.all("Service"))
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 4
    shm = next(v for v in pod_spec(job(r))["volumes"] if v["name"] == "shm")
    assert shm["emptyDir"]["medium"] == "Memory"


def test_nodes_get_an_indexed_job_and_a_headless_rendezvous_service() -> None:
    r = render(values=CASES["two-nodes"])
    j = job(r)
    spec = j.doc["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == 2
    svc = r.get("Service", "train")
    assert svc.doc["spec"]["clusterIP"] == "None"
    assert svc.doc["spec"]["publishNotReadyAddresses"] is True
    # the Service selects exactly the train pods, and the pods sit in its DNS subdomain
    pod_labels = j.doc["spec"]["template"]["metadata"]["labels"]
    assert svc.doc["spec"]["selector"].items() <= pod_labels.items()
    assert pod_spec(j)["subdomain"] == svc.name
    c = container(j)
    args = c["args"]
    assert flag(args, "--nnodes") == "2" and flag(args, "--nproc-per-node") == "8"
    assert flag(args, "--master-addr") == f"{j.name}-0.{svc.name}"
    assert flag(args, "--master-port") == "29400" == str(svc.doc["spec"]["ports"][0]["port"])
    # the node rank is the completion index, expanded by the kubelet from the env
    assert flag(args, "--node-rank") == "$(NODE_RANK)"
    env = {e["name"]: e for e in c["env"]}
    assert env["NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    )
    assert "--standalone" not in args
    assert args[args.index("-m") + 1:][:3] == ["distillery.cli", "train", "sft"]
    assert {p["containerPort"] for p in c["ports"]} == {29400}


def test_cpu_nodes_run_one_rank_each() -> None:
    c = container(job(render(values=CASES["cpu-two-nodes"])))
    assert flag(c["args"], "--nproc-per-node") == "1"
    assert "nvidia.com/gpu" not in (c.get("resources", {}).get("limits") or {})


def test_default_train_job_is_the_plain_command() -> None:
    r = render(values={"jobs": {"train": {"enabled": True}}})
    j = job(r)
    assert container(j)["command"] == ["distillery"]
    assert container(j)["args"][:2] == ["train", "sft"]
    assert "completionMode" not in j.doc["spec"]
    assert "subdomain" not in pod_spec(j)
    assert not any(s.name == j.name for s in r.all("Service"))


def test_schema_refuses_bad_distributed_values() -> None:
    from tests.deploy.chart import HelmError

    with pytest.raises(HelmError, match="nodes"):
        render(values=train(nodes=0))
    with pytest.raises(HelmError, match="distributed"):
        render(values=train(gpus=2))
