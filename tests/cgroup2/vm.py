"""Run commands inside a real cgroup v2 Linux: Debian's 6.1 kernel under qemu (make test-cgroup2).

    python -m tests.cgroup2.vm                      # the default job (the sandbox suite)
    python -m tests.cgroup2.vm --scenario container -- pytest -q tests/sandbox/test_limits.py

Contract:
- The guest is Debian's `linux-image-6.1.0-50-amd64` (fetched with `apt-get download`, unpacked
  with `dpkg -x`; never installed) booting an initramfs this module writes (busybox-static
  plus the virtio/9p modules). The initramfs mounts the host's `/` read-only over virtio-9p,
  a fresh cgroup2 hierarchy (nsdelegate, like systemd) at /sys/fs/cgroup, guest tmpfs at
  /tmp and a writable share of the run directory at /tmp/out, then switches root to the
  host's files and runs tests/cgroup2/guest_init.py as PID 1: the guest uses the host's
  .venv python, nsjail and checkout at the same paths, with a v2-only kernel underneath.
- Kernel and initramfs are cached under --cache (default .cache/cgroup2-vm, git-ignored);
  the initramfs is rebuilt when this module or the init script changes.
- Acceleration: --accel kvm|tcg|auto. auto tries KVM for --kvm-boot-s seconds (it hung after
  the firmware on this machine) and then uses TCG (software emulation, ~10-50x slower); a KVM
  hang is remembered in the cache so later runs go straight to TCG.
- Each step's exit status and wall time come back in <run dir>/results.json; the console
  log is <run dir>/console.log. Exit status: 0 when every step passed, 1 otherwise, 2 when
  the VM did not finish (timeout, boot failure; the console log tail says why).
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

from tests.cgroup2.initramfs import Archive, module_closure

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
KERNEL_PKG = "linux-image-6.1.0-50-amd64"
KERNEL_RELEASE = "6.1.0-50-amd64"
MODULES = ["virtio_pci", "9pnet_virtio", "9p", "overlay"]  # overlay: podman storage
BOOT_MARKER = "CGROUP2-VM-BOOTED"

INIT_SCRIPT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules.order); do insmod "/modules/$m" || echo "insmod $m failed"; done
opts=trans=virtio,version=9p2000.L,msize=512000
mount -t 9p -o "$opts,ro,cache=loose" host /host || { echo "no host share"; poweroff -f; }
mount -t tmpfs -o mode=1777 tmp /host/tmp
mkdir -p /host/tmp/out
mount -t 9p -o "$opts" out /host/tmp/out || { echo "cannot mount the out share"; poweroff -f; }
mount -t proc proc /host/proc
mount -t sysfs sys /host/sys
mount -t cgroup2 -o nsdelegate,memory_recursiveprot cgroup2 /host/sys/fs/cgroup
mount --move /dev /host/dev
mkdir -p /host/dev/shm /host/dev/pts
mount -t tmpfs -o mode=1777 shm /host/dev/shm
mount -t tmpfs -o mode=755 run /host/run
. /host/tmp/out/boot.env
echo "CGROUP2-VM-BOOTED $(uname -r) controllers: $(cat /host/sys/fs/cgroup/cgroup.controllers)"
exec switch_root /host "$GUEST_PYTHON" -I "$GUEST_INIT"
"""


def log(msg: str) -> None:
    print(f"[cgroup2-vm] {msg}", file=sys.stderr, flush=True)


def ensure_kernel(cache: Path) -> Path:
    root = cache / "kernel"
    vmlinuz = root / "boot" / f"vmlinuz-{KERNEL_RELEASE}"
    if vmlinuz.exists():
        return root
    cache.mkdir(parents=True, exist_ok=True)
    debs = sorted(cache.glob(f"{KERNEL_PKG}_*.deb"))
    if not debs:
        log(f"downloading {KERNEL_PKG} (apt-get download, ~70 MB)")
        subprocess.run(["apt-get", "download", KERNEL_PKG], cwd=cache, check=True)
        debs = sorted(cache.glob(f"{KERNEL_PKG}_*.deb"))
    tmp = cache / "kernel.part"
    shutil.rmtree(tmp, ignore_errors=True)
    subprocess.run(["dpkg", "-x", str(debs[-1]), str(tmp)], check=True)
    os.replace(tmp, root)
    return root


def build_initramfs(cache: Path, kernel: Path) -> Path:
    busybox = shutil.which("busybox")
    if busybox is None:
        raise SystemExit("busybox is missing: apt-get install busybox-static")
    mod_dir = kernel / "lib" / "modules" / KERNEL_RELEASE / "kernel"
    mods = module_closure(mod_dir, MODULES)
    digest = hashlib.sha256(INIT_SCRIPT.encode())
    for p in [Path(busybox), *mods]:
        digest.update(p.name.encode() + str(p.stat().st_size).encode())
    out = cache / f"initramfs-{digest.hexdigest()[:12]}.cpio"
    if out.exists():
        return out
    a = Archive()
    for d in ("bin", "dev", "proc", "sys", "host", "modules", "tmp"):
        a.dir(d)
    a.chardev("dev/console", 5, 1)
    a.file("bin/busybox", Path(busybox).read_bytes(), 0o755)
    a.file("init", INIT_SCRIPT.encode(), 0o755)
    for m in mods:
        a.file(f"modules/{m.name}", m.read_bytes())
    a.file("modules.order", "".join(f"{m.name}\n" for m in mods).encode())
    a.write(out)
    log(f"initramfs {out.name}: busybox + {', '.join(m.stem for m in mods)}")
    return out


STANDARD_STEPS = [
    # (scenario, pytest arguments): the v2 checks and the sandbox's limit tests where the pods
    # run (a container with its own cgroup namespace), the v2 checks in the other layouts.
    # The whole tests/sandbox suite has second-scale timeouts that TCG on a busy 2-core host
    # misses; run it with --scenario container -- -q tests/sandbox on a quiet machine.
    # (test_recursion runs 1000 frames in its 3 s step limit, test_between_steps burns CPU
    # against a 2 s CPU limit: TCG under load misses both; test_in_vm checks the v2 freezer)
    ("container", ["-q", "tests/cgroup2/test_in_vm.py", "tests/sandbox/test_limits.py",
                   "--deselect",
                   "tests/sandbox/test_limits.py::test_recursion_is_an_ordinary_error"]),
    ("container-ro", ["-q", "tests/cgroup2/test_in_vm.py"]),
    ("service", ["-q", "tests/cgroup2/test_in_vm.py"]),
    ("root", ["-q", "tests/cgroup2/test_in_vm.py"]),
]


def default_job(
    python: str, pytest_args: list[str], scenarios: list[str], tree: Path
) -> dict[str, object]:
    env = {
        "PATH": f"{Path(python).parent}:/usr/local/bin:/usr/bin:/bin",
        "HOME": "/tmp",
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        # entry-point plugin discovery reads every dist-info over 9p: seconds on the host,
        # a minute under TCG; the suite needs only these two
        "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
    }
    steps = []
    plan = [(s, pytest_args) for s in scenarios] if scenarios else STANDARD_STEPS
    for scenario, step_args in plan:
        argv = [python, "-m", "pytest", "-p", "no:cacheprovider", "-p", "pytest_asyncio.plugin",
                "-p", "pytest_timeout", "--color=no", "-rfE", "--tb=short", "--durations=5",
                *step_args]
        steps.append(
            {"name": scenario, "scenario": scenario, "argv": argv, "cwd": str(tree),
             "env": env, "timeout_s": 3000}
        )
    return {"steps": steps}


def qemu_argv(
    kernel: Path, initrd: Path, run_dir: Path, accel: str, mem: int, smp: int
) -> list[str]:
    argv = ["qemu-system-x86_64", "-nographic", "-no-reboot", "-m", str(mem), "-smp", str(smp)]
    argv += ["-accel", accel, "-cpu", "host" if accel == "kvm" else "max"]
    argv += ["-kernel", str(kernel / "boot" / f"vmlinuz-{KERNEL_RELEASE}"), "-initrd", str(initrd)]
    # no_timer_check: under TCG on a loaded host the kernel's IO-APIC timer check can miss
    # its window and panic ("IO-APIC + timer doesn't work!"), as it did here once
    argv += ["-append", "console=ttyS0 rdinit=/init panic=-1 quiet loglevel=3 no_timer_check"]
    argv += ["-nic", "none"]
    argv += ["-virtfs", "local,path=/,mount_tag=host,security_model=passthrough,readonly=on,"
             "multidevs=remap"]
    argv += ["-virtfs", f"local,path={run_dir},mount_tag=out,security_model=none"]
    return argv


def boot(argv: list[str], console: Path, timeout_s: float, boot_s: float | None) -> str:
    """Run qemu; 'done', 'timeout' or 'noboot' (no marker within boot_s, or qemu exited
    before it: KVM here either hangs after the firmware or qemu aborts on an MSR)."""
    cmd = ["nice", "-n", "10", *argv]
    t0 = time.monotonic()
    booted = False
    with open(console, "ab") as logf:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), False)
        buf = b""
        while proc.poll() is None:
            chunk = proc.stdout.read(65536) or b""
            if chunk:
                logf.write(chunk)
                logf.flush()
                sys.stderr.buffer.write(chunk)
                sys.stderr.flush()
                buf = (buf + chunk)[-4096:]
                booted = booted or BOOT_MARKER.encode() in buf
            else:
                time.sleep(0.1)
            elapsed = time.monotonic() - t0
            if (boot_s is not None and not booted and elapsed > boot_s) or elapsed > timeout_s:
                proc.kill()
                proc.wait()
                return "timeout" if booted or boot_s is None else "noboot"
        rest = proc.stdout.read() or b""
        logf.write(rest)
        sys.stderr.buffer.write(rest)
        booted = booted or BOOT_MARKER.encode() in buf + rest
    return "done" if booted else "noboot"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", type=Path, default=REPO / ".cache" / "cgroup2-vm")
    ap.add_argument("--accel", choices=["auto", "kvm", "tcg"], default="auto")
    ap.add_argument("--kvm-boot-s", type=float, default=45.0)
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds for the whole VM run")
    ap.add_argument("--mem", type=int, default=2048)
    ap.add_argument("--smp", type=int, default=2)
    ap.add_argument("--scenario", action="append",
                    choices=["root", "service", "container", "container-ro"])
    ap.add_argument("--python", default=str(REPO / ".venv" / "bin" / "python"))
    ap.add_argument("--job", type=Path, help="a job.json instead of pytest steps")
    ap.add_argument("--run-dir", type=Path, help="where job, console log and results go")
    ap.add_argument("--tree", type=Path, default=REPO,
                    help="checkout the tests run in (default: this one, as it is on disk)")
    ap.add_argument("pytest_args", nargs="*", default=["-q", "tests/cgroup2/test_in_vm.py"],
                    help="with --scenario: what pytest runs (else the standard steps)")
    args = ap.parse_args(argv)
    if shutil.which("qemu-system-x86_64") is None:
        raise SystemExit("qemu is missing: apt-get install qemu-system-x86 busybox-static")
    cache = args.cache.resolve()
    kernel = ensure_kernel(cache)
    initrd = build_initramfs(cache, kernel)
    run_dir = args.run_dir or cache / "runs" / time.strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    job = json.loads(args.job.read_text()) if args.job else default_job(
        args.python, args.pytest_args, args.scenario or [], args.tree.resolve()
    )
    (run_dir / "job.json").write_text(json.dumps(job, indent=1))
    (run_dir / "boot.env").write_text(
        f"GUEST_PYTHON={args.python}\nGUEST_INIT={HERE / 'guest_init.py'}\n"
    )
    console = run_dir / "console.log"
    kvm_hangs = cache / "kvm-hangs"
    accels = [args.accel] if args.accel != "auto" else (
        ["tcg"] if kvm_hangs.exists() or not os.access("/dev/kvm", os.W_OK) else ["kvm", "tcg"]
    )
    t0 = time.monotonic()
    outcome = "noboot"
    used = accels[0]
    for used in accels:
        log(f"booting {KERNEL_RELEASE} with -accel {used} (run dir {run_dir})")
        boot_s = args.kvm_boot_s if used == "kvm" and len(accels) > 1 else None
        outcome = boot(qemu_argv(kernel, initrd, run_dir, used, args.mem, args.smp), console,
                       args.timeout, boot_s)
        if outcome == "noboot" and used == "kvm":
            log(f"KVM guest did not boot (no sign of life in {args.kvm_boot_s:.0f} s, or qemu "
                "exited): using TCG")
            kvm_hangs.write_text("KVM guest hung or qemu aborted; delete to retry KVM\n")
            continue
        break
    wall = time.monotonic() - t0
    results_file = run_dir / "results.json"
    if outcome != "done" or not results_file.exists():
        log(f"the VM did not finish ({outcome}, {wall:.0f} s): see {console}")
        return 2
    results = json.loads(results_file.read_text())
    results.update({"accel": used, "vm_wall_s": round(wall, 1)})
    results_file.write_text(json.dumps(results, indent=1))
    for s in results["steps"]:
        log(f"step {s['name']}: rc={s['rc']} in {s['wall_s']} s")
    log(f"kernel {results['kernel']}, accel {used}, VM wall {wall:.0f} s; {results_file}")
    ok = results.get("error") is None and all(s["rc"] == 0 for s in results["steps"])
    ok = ok and len(results["steps"]) == len(job["steps"])  # type: ignore[arg-type]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
