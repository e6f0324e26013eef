"""Headless Chromium (Debian's `chromium` package) for the HTML report tests and benchmark.

Flags per the machine notes: no sandbox (root), no GPU, no background networking, a fresh
profile per run. `dump_dom` returns the DOM after the load event (scripts have run);
`screenshot` writes a PNG of the viewport.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
]


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _run(args: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    exe = chromium()
    if exe is None:
        raise RuntimeError("chromium is not installed: `apt-get install -y chromium`")
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        return subprocess.run(
            [exe, *FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )


def dump_dom(url: str, *, timeout_s: float = 120.0, virtual_time_ms: int | None = None) -> str:
    """`virtual_time_ms`: let the page's timers and animation frames run for this much
    virtual time before the dump (a loaded machine may otherwise dump before the first
    frame; the page's own timings are then virtual, so benchmarks leave it unset)."""
    budget = [f"--virtual-time-budget={virtual_time_ms}"] if virtual_time_ms else []
    proc = _run([*budget, "--dump-dom", url], timeout_s)
    if proc.returncode != 0 or "<html" not in proc.stdout:
        raise RuntimeError(f"chromium --dump-dom failed ({proc.returncode}): {proc.stderr[-800:]}")
    return proc.stdout


def screenshot(url: str, png: Path, *, size: str = "1400,1000", timeout_s: float = 120.0) -> Path:
    proc = _run([f"--screenshot={png}", f"--window-size={size}", "--hide-scrollbars", url],
                timeout_s)
    if not png.is_file():
        raise RuntimeError(
            f"chromium --screenshot failed ({proc.returncode}): {proc.stderr[-800:]}"
        )
    return png
