"""The gateway image as a podman container inside the cgroup v2 VM (make test-cgroup2-podman).

    python -m tests.cgroup2.podman                  # both security modes
    python -m tests.cgroup2.podman --mode capabilities

Contract:
- Host side (this module): the gateway image is built as `make image` builds it
  (helm/build_image.sh, buildah, vfs storage), squashed to one layer and saved as a
  docker-archive under the VM cache (.cache/cgroup2-vm/gateway-<digest>.tar). The digest
  covers the Dockerfile, .dockerignore, the constraints, pyproject, the build script and every
  file of the packages the image copies; the tarball is rebuilt only when it changes (older ones
  are removed). Then one VM run (tests/cgroup2/vm.py, --job) with one step per mode.
- Guest side (tests/cgroup2/podman_guest.py, one step per mode, in the guest's root cgroup
  like a node's container runtime): Debian's podman (the host's, seen over the 9p root) loads
  the tarball into overlay storage on guest tmpfs and runs the gateway with the chart's
  container securityContext translated to podman flags: `privileged`, or `capabilities`
  (drop ALL, add helm/distillery/values.yaml's sandbox.capabilities, seccomp and AppArmor
  unconfined); root, read-only root filesystem with tmpfs /tmp and cache, private cgroup
  namespace, host network. A scripted OpenAI-compatible model server in the guest writes a
  memory bomb and a fork bomb; the step asserts /readyz (ready, sandbox limits on cgroup v2)
  and the error kinds of both jailed runs in the /v1/solve replies ("memory", "pids").
- Each step writes <run dir>/podman-<mode>.json (timings, /readyz body, executions) and
  exits 0 only when every check passed; exit status as tests/cgroup2/vm.py's.
Needs (Debian): apt-get install podman buildah crun qemu-system-x86 busybox-static.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tests.cgroup2 import vm

REPO = vm.REPO
IMAGE_INPUTS = [
    "Dockerfile",
    ".dockerignore",
    "constraints.txt",
    "pyproject.toml",
    "README.md",
    "helm/build_image.sh",
]
IMAGE_SOURCES = [
    "agent",
    "sandbox",
    "retrieval",
    "service",
    "training",
    "evaluation",
    "study",
    "distillery",
]
MODES = ["privileged", "capabilities"]


def log(msg: str) -> None:
    print(f"[cgroup2-podman] {msg}", file=sys.stderr, flush=True)


def image_digest() -> str:
    """sha256 over what the gateway image is built from: the files the .dockerignore lets
    into the build context (the inputs above, every file of the packages as on disk)."""
    files = [REPO / rel for rel in IMAGE_INPUTS]
    for pkg in IMAGE_SOURCES:
        files += [
            p
            for p in (REPO / pkg).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
        ]
    digest = hashlib.sha256()
    for path in sorted(set(files)):
        if path.is_file():
            digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def ensure_image_tarball(cache: Path) -> tuple[Path, float]:
    """The cached gateway docker-archive (one squashed layer) and the seconds spent making it."""
    digest = image_digest()
    tarball = cache / f"gateway-{digest}.tar"
    if tarball.exists():
        return tarball, 0.0
    t0 = time.monotonic()
    tag = f"localhost/distillery:cgroup2-{digest}"
    have = (
        subprocess.run(
            ["buildah", "inspect", "--type", "image", tag], env=_env(), capture_output=True
        ).returncode
        == 0
    )
    if not have:
        log(f"building the gateway image {tag} (helm/build_image.sh, buildah)")
        subprocess.run(
            ["nice", "-n", "10", "bash", "helm/build_image.sh", tag],
            cwd=REPO,
            check=True,
            env={**_env(), "TARGET": "gateway"},
        )
    part = tarball.with_suffix(".part")
    part.unlink(missing_ok=True)
    ctr = _buildah("from", tag).strip()
    try:
        _buildah(
            "commit",
            "--squash",
            "--format",
            "docker",
            ctr,
            f"docker-archive:{part}:localhost/distillery:gateway",
        )
    finally:
        _buildah("rm", ctr)
    _buildah("rmi", tag)  # vfs storage: each image is a full copy of its layers
    for old in cache.glob("gateway-*.tar"):
        old.unlink()
    part.rename(tarball)
    wall = time.monotonic() - t0
    log(f"{tarball.name}: {tarball.stat().st_size / 2**20:.0f} MiB in {wall:.0f} s")
    return tarball, wall


def _env() -> dict[str, str]:
    return {**os.environ, "STORAGE_DRIVER": "vfs", "BUILDAH_ISOLATION": "chroot"}


def _buildah(*args: str) -> str:
    return subprocess.run(
        ["nice", "-n", "10", "buildah", *args],
        check=True,
        env=_env(),
        capture_output=True,
        text=True,
    ).stdout


def chart_capabilities() -> list[str]:
    values = yaml.safe_load((REPO / "helm" / "distillery" / "values.yaml").read_text())
    return [str(c) for c in values["sandbox"]["capabilities"]]


def podman_job(python: str, tarball: Path, modes: list[str], timeout_s: float) -> dict[str, object]:
    env = {
        "PATH": f"{Path(python).parent}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin"
        ":/bin",
        "HOME": "/tmp",
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "TMPDIR": "/tmp",
    }
    caps = ",".join(chart_capabilities())
    steps = []
    for mode in modes:
        argv = [
            python,
            "-m",
            "tests.cgroup2.podman_guest",
            "--archive",
            str(tarball),
            "--mode",
            mode,
            "--caps",
            caps,
            "--report",
            f"/tmp/out/podman-{mode}.json",
        ]
        steps.append(
            {
                "name": f"podman-{mode}",
                "scenario": "root",
                "argv": argv,
                "cwd": str(REPO),
                "env": env,
                "timeout_s": timeout_s,
            }
        )
    return {"steps": steps}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", type=Path, default=REPO / ".cache" / "cgroup2-vm")
    ap.add_argument("--mode", action="append", choices=MODES)
    ap.add_argument(
        "--any-cached-image",
        action="store_true",
        help="use the newest cached tarball even if the sources changed since (reruns)",
    )
    ap.add_argument("--mem", type=int, default=3072, help="guest MiB (image storage is tmpfs)")
    ap.add_argument("--step-timeout", type=float, default=1800.0)
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds for the whole VM run")
    ap.add_argument("--python", default=str(REPO / ".venv" / "bin" / "python"))
    args = ap.parse_args(argv)
    for tool in ("podman", "crun", "conmon", "buildah"):
        if shutil.which(tool) is None and not Path("/usr/libexec/podman", tool).exists():
            raise SystemExit(f"{tool} is missing: apt-get install podman buildah crun")
    cache = args.cache.resolve()
    cache.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    cached = sorted(cache.glob("gateway-*.tar"), key=lambda p: p.stat().st_mtime)
    if args.any_cached_image and cached:
        tarball, build_s = cached[-1], 0.0
    else:
        tarball, build_s = ensure_image_tarball(cache)
    run_dir = cache / "runs" / time.strftime("podman-%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    job_file = run_dir / "job.json"
    job_file.write_text(
        json.dumps(
            podman_job(args.python, tarball, args.mode or MODES, args.step_timeout), indent=1
        )
    )
    rc = vm.main(
        [
            "--job",
            str(job_file),
            "--run-dir",
            str(run_dir),
            "--mem",
            str(args.mem),
            "--timeout",
            str(args.timeout),
            "--python",
            args.python,
        ]
    )
    for report in sorted(run_dir.glob("podman-*.json")):
        r = json.loads(report.read_text())
        log(
            f"{r['mode']}: {'passed' if r['ok'] else 'FAILED'}; "
            + ", ".join(f"{k} {v} s" for k, v in r["timings_s"].items())
            + "".join(f"\n    {c}" for c in r["checks"])
        )
    log(
        f"image tarball {tarball.name} (built in {build_s:.0f} s, 0 = cached); "
        f"wall {time.monotonic() - t0:.0f} s; {run_dir}"
    )
    return rc


if __name__ == "__main__":
    sys.exit(main())
