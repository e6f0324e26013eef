"""One podman step inside the cgroup v2 VM: the gateway image under the chart's security context.

Contract: runs in the guest (a step of tests/cgroup2/podman.py's job, guest root cgroup) with
the host's podman/crun/conmon over the 9p root. Loads --archive into overlay storage on
guest tmpfs (once per VM boot; the second mode reuses it), starts a scripted
OpenAI-compatible model server on the guest's loopback, runs the gateway container in
--mode privileged|capabilities (helm/distillery/templates/_helpers.tpl's
containerSecurityContext as podman flags; --caps is the chart's sandbox.capabilities) and
checks, over HTTP from the guest: /readyz is ready with the sandbox limited by cgroup v2;
a /v1/solve whose code is a memory bomb reports error_kind "memory", one whose code is a
fork bomb reports "pids". Writes --report (JSON: mode, ok, checks, timings_s, readyz,
executions, container facts, the container log's tail on failure); exit 0 only when every
check passed. Stops what it started (container, model server) before it returns.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from sandbox import DEFAULT_ALLOWED_IMPORTS
from tests.helpers.scripted_server import ScriptedServer

IMAGE = "localhost/distillery:gateway"
MODEL = "scripted-model"
PORT = 8080
PODMAN = [
    "podman",
    "--root",
    "/tmp/podman/root",
    "--runroot",
    "/run/podman",
    "--tmpdir",
    "/run/libpod",
    "--storage-driver",
    "overlay",
    "--cgroup-manager",
    "cgroupfs",
    "--events-backend",
    "file",
    "--runtime",
    "crun",
    "--network-config-dir",
    "/tmp/podman/net",
]
BOMBS = {
    # error kind: (question, code); the same attacks as tests/sandbox/test_limits.py
    "memory": (
        "Run a memory bomb.",
        "blocks = []\nwhile True:\n    blocks.append(bytearray(8 * 1024 * 1024))",
    ),
    "pids": ("Run a fork bomb.", "import os\nwhile True:\n    os.fork()"),
}
GATEWAY_ENV = {
    "HOME": "/tmp",  # the chart's env
    "DISTILLERY_MODEL": MODEL,
    "DISTILLERY_EXECUTOR": "sandbox",
    "DISTILLERY_SANDBOX_CGROUP_MODE": "auto",
    "DISTILLERY_SANDBOX_MEMORY_MB": "128",
    "DISTILLERY_SANDBOX_PIDS": "16",
    "DISTILLERY_SANDBOX_POOL_SIZE": "1",
    # software emulation is 10-50x slower than the host: generous deadlines, same limits
    "DISTILLERY_SANDBOX_STEP_TIMEOUT_S": "120",
    "DISTILLERY_MODEL_TIMEOUT_S": "600",
    "DISTILLERY_REQUEST_TIMEOUT_S": "1500",
    "DISTILLERY_SAMPLES": "1",
    "DISTILLERY_MAX_STEPS": "1",
}


def security_flags(mode: str, caps: list[str]) -> list[str]:
    """The chart's gateway containerSecurityContext and volumes as `podman run` flags."""
    common = [
        "--user",
        "0",  # runAsUser: 0
        "--read-only",
        "--read-only-tmpfs=false",  # readOnlyRootFilesystem: true
        "--tmpfs",
        "/tmp:rw,exec,mode=1777",  # emptyDir volumes
        "--tmpfs",
        "/var/cache/distillery:rw,exec,mode=0755",
        "--cgroupns",
        "private",  # what containerd gives a pod on a v2 node
    ]
    if mode == "privileged":
        return [*common, "--privileged"]
    return [
        *common,
        "--cap-drop",
        "ALL",
        *(f"--cap-add={c}" for c in caps),
        "--security-opt",
        "seccomp=unconfined",
        "--security-opt",
        "apparmor=unconfined",
    ]


def reply(code: str) -> str:
    return f"Thought: I will run it.\nCode:\n```py\n{code}\n```<end_code>"


def handler(body: dict[str, Any]) -> list[str]:
    """The bomb the question names, as every one of the n choices."""
    text = json.dumps(body.get("messages", []))
    code = next((c for q, c in BOMBS.values() if q in text), "final_answer(42)")
    return [reply(code)] * int(body.get("n") or 1)


def http(
    method: str, url: str, body: dict[str, Any] | None = None, timeout: float = 60.0
) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def podman(*args: str, check: bool = True, timeout: float = 1200) -> str:
    proc = subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args[:2])}: rc {proc.returncode}: {proc.stderr}")
    return proc.stdout


class Step:
    def __init__(self, mode: str) -> None:
        self.report: dict[str, Any] = {"mode": mode, "ok": False, "checks": [], "timings_s": {}}
        self.t0 = time.monotonic()

    def check(self, ok: bool, what: str) -> bool:
        self.report["checks"].append(f"{'ok' if ok else 'FAIL'}: {what}")
        print(f"== podman {self.report['mode']}: {'ok' if ok else 'FAIL'}: {what}", flush=True)
        return ok

    def mark(self, name: str, since: float) -> None:
        self.report["timings_s"][name] = round(time.monotonic() - since, 1)


def load_image(step: Step, archive: Path) -> None:
    for d in ("/tmp/podman/root", "/tmp/podman/net", "/run/podman", "/run/libpod"):
        os.makedirs(d, exist_ok=True)
    step.report["podman"] = podman("version", "--format", "{{.Client.Version}}").strip()
    step.report["crun"] = subprocess.run(
        ["crun", "--version"], capture_output=True, text=True
    ).stdout.splitlines()[0]
    if subprocess.run([*PODMAN, "image", "exists", IMAGE]).returncode == 0:
        step.report["timings_s"]["load"] = 0.0  # loaded by the step before
        return
    t = time.monotonic()
    podman("load", "-q", "-i", str(archive))
    step.mark("load", t)


def wait_ready(step: Step, name: str, base: str, deadline_s: float) -> dict[str, Any] | None:
    """Poll /healthz, then /readyz until ready; None when the container stopped or timed out."""
    t = time.monotonic()
    stage = "healthz"
    while time.monotonic() - t < deadline_s:
        if podman("inspect", "-f", "{{.State.Running}}", name, check=False).strip() != "true":
            step.check(False, f"the container stopped before {stage}")
            return None
        try:
            status, body = http("GET", f"{base}/{stage}", timeout=60)
        except (OSError, ValueError):
            time.sleep(2)
            continue
        if stage == "healthz" and status == 200:
            step.mark("to_healthz", t)
            stage = "readyz"
        elif stage == "readyz":
            step.report["readyz"] = body
            if status == 200:
                step.mark("to_readyz", t)
                return body
            time.sleep(5)
    step.check(False, f"no {stage} in {deadline_s:.0f} s")
    return None


def container_facts(step: Step, name: str) -> None:
    pid = podman("inspect", "-f", "{{.State.Pid}}", name).strip()
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    step.report["container"] = {
        "cap_eff": next(s.split()[1] for s in status if s.startswith("CapEff:")),
        "cgroup": Path(f"/proc/{pid}/cgroup").read_text().strip(),
        "cgroupns": os.readlink(f"/proc/{pid}/ns/cgroup") != os.readlink("/proc/self/ns/cgroup"),
    }


def solve_bombs(step: Step, base: str) -> None:
    for kind in BOMBS:
        t = time.monotonic()
        question = BOMBS[kind][0]
        status, body = http("POST", f"{base}/v1/solve", {"question": question}, timeout=1500)
        step.mark(f"solve_{kind}", t)
        execs = [
            c.get("execution") or {} for s in body.get("steps", []) for c in s.get("candidates", [])
        ]
        step.report.setdefault("executions", {})[kind] = [
            {k: e.get(k) for k in ("ok", "error_kind", "error", "duration_s")} for e in execs
        ]
        kinds = [e.get("error_kind") for e in execs if e]
        step.check(
            status == 200 and bool(kinds) and kinds[0] == kind,
            f"{question} -> HTTP {status}, error kinds {kinds} (want {kind!r})",
        )


def run(step: Step, args: argparse.Namespace) -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    load_image(step, args.archive)
    srv = ScriptedServer(MODEL)
    srv.handler = handler
    srv.start(timeout_s=600)
    name = f"gw-{args.mode}"
    base = f"http://127.0.0.1:{PORT}"
    # the fork bomb imports os: allowed here as tests/sandbox's attack_config does (the import
    # list is a policy, not a boundary; the pids limit is what the test is about)
    imports = json.dumps([*DEFAULT_ALLOWED_IMPORTS, "os"])
    env = {
        **GATEWAY_ENV,
        "DISTILLERY_MODEL_URL": srv.url,
        "DISTILLERY_SANDBOX_ALLOWED_IMPORTS": imports,
    }
    try:
        t = time.monotonic()
        podman(
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "host",
            *security_flags(args.mode, args.caps.split(",")),
            *(f"--env={k}={v}" for k, v in env.items()),
            IMAGE,
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(PORT),
        )
        step.mark("podman_run", t)
        container_facts(step, name)
        step.check(
            step.report["container"]["cgroupns"],
            f"the container has its own cgroup namespace ({step.report['container']['cgroup']})",
        )
        ready = wait_ready(step, name, base, args.ready_timeout)
        if ready is None:
            return
        sandbox = ready["checks"]["sandbox"]
        limits = str((sandbox.get("detail") or {}).get("limits"))
        step.check(
            sandbox["ok"] and limits.startswith("cgroup v2:"),
            f"/readyz ready, sandbox limits: {limits}",
        )
        solve_bombs(step, base)
    finally:
        logs = subprocess.run(
            [*PODMAN, "logs", "--tail", "60", name], capture_output=True, text=True
        )
        step.report["log_tail"] = (logs.stdout + logs.stderr)[-6000:]
        podman("rm", "-f", "-t", "5", name, check=False)
        srv.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--archive", type=Path, required=True)
    ap.add_argument("--mode", choices=["privileged", "capabilities"], required=True)
    ap.add_argument("--caps", required=True, help="comma-separated, the chart's capabilities")
    ap.add_argument("--report", type=Path, required=True)
    ap.add_argument("--ready-timeout", type=float, default=900.0)
    args = ap.parse_args()
    step = Step(args.mode)
    try:
        run(step, args)
    except Exception as e:  # reported in the JSON, then the step fails
        step.check(False, f"{type(e).__name__}: {e}")
    step.mark("total", step.t0)
    checks = step.report["checks"]
    step.report["ok"] = (
        bool(checks)
        and all(c.startswith("ok") for c in checks)
        and len(step.report.get("executions", {})) == len(BOMBS)
    )
    args.report.write_text(json.dumps(step.report, indent=1))
    if not step.report["ok"]:
        print(step.report.get("log_tail", ""), file=sys.stderr, flush=True)
    return 0 if step.report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
