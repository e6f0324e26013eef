"""The static checks of `make deploy-check`: hadolint, `helm lint --strict`, the generated
parts of the chart, and what the Dockerfile promises (pins, users, healthcheck)."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.metadata import requires
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.deploy.chart import CHART, EXAMPLES, OFFLINE_EXAMPLES, REPO, HelmError, run_helm

DOCKERFILE = REPO / "Dockerfile"
CONSTRAINTS = REPO / "constraints.txt"


def test_hadolint_finds_nothing() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    proc = subprocess.run([str(hadolint), "--failure-threshold", "info", str(DOCKERFILE)],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and not proc.stdout.strip(), f"Dockerfile:\n{proc.stdout}"


@pytest.mark.parametrize("values", [None, *OFFLINE_EXAMPLES],
                         ids=["default", *[p.stem for p in OFFLINE_EXAMPLES]])
def test_helm_lint_strict(values: Path | None) -> None:
    args = ["lint", "--strict", str(CHART)] + (["-f", str(values)] if values else [])
    try:
        out = run_helm(*args)
    except HelmError as e:
        pytest.fail(f"helm lint --strict {values or 'default values'}:\n{e}")
    assert "0 chart(s) failed" in out, out


def test_examples_exist() -> None:
    names = {p.name for p in EXAMPLES}
    assert {"cpu-demo.yaml", "gpu-production.yaml", "external-es.yaml", "bundled-es.yaml"} <= names


def test_generated_schema_and_values_table_are_current() -> None:
    proc = subprocess.run([sys.executable, str(REPO / "helm" / "sync.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_constraints_pin_every_dependency_of_the_image() -> None:
    """Every requirement of distillery[all] has an exact pin in constraints.txt (what the
    Dockerfile installs with -c), and torch is the one the project allows."""
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    assert pins.get("torch") == "2.13.0", "constraints.txt: torch must be pinned to 2.13.0"
    missing = []
    for spec in requires("distillery") or []:
        req = Requirement(spec)
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        if name != "distillery" and name not in pins:
            missing.append(req.name)
    assert not missing, f"constraints.txt lacks {missing}: run `make constraints`"


def test_dockerfile_stages_run_as_non_root_with_healthcheck() -> None:
    text = DOCKERFILE.read_text()
    stages = re.split(r"^FROM ", text, flags=re.M)[1:]
    finals = {s.split()[2]: s for s in stages if " AS " in s.split("\n")[0]
              and s.split()[2] in {"gateway", "train", "demo"}}
    assert set(finals) == {"gateway", "train", "demo"}, "Dockerfile: missing a target"
    for name, body in finals.items():
        assert re.search(r"^USER 10001$", body, flags=re.M), f"Dockerfile {name}: not USER 10001"
        assert "locate_nsjail" in body, f"Dockerfile {name}: nsjail is not checked"
    assert "HEALTHCHECK" in text and "/healthz" in text, "Dockerfile: no HEALTHCHECK on /healthz"
    assert text.rstrip().split("\n")[-1].startswith("USER"), "gateway must be the last target"
    for m in re.finditer(r"^FROM (\S+)", text, flags=re.M):
        assert ":latest" not in m.group(1), f"Dockerfile: unpinned base {m.group(1)}"
    assert re.search(r"PYTHON_IMAGE=python:\d+\.\d+\.\d+-slim", text), "pin the Python patch"
