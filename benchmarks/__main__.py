"""`python -m benchmarks [--quick] [AREA ...]`: run every area's benchmark (or the named ones).

Each area's script prints its own table with ratios to a baseline measured in the same
process; this runner only runs them one after another, so they do not compete for the CPU.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

AREAS = [
    "agent", "sandbox", "retrieval", "service", "capacity", "engine", "sag", "training", "eval",
    "tools",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("areas", nargs="*", metavar="AREA", help=f"some of: {', '.join(AREAS)}")
    parser.add_argument("--quick", action="store_true", help="each script's short mode")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.areas) - set(AREAS))
    if unknown:
        parser.error(f"unknown area(s): {', '.join(unknown)}; choose from {', '.join(AREAS)}")
    failed = []
    for area in args.areas or AREAS:
        cmd = [sys.executable, "-m", f"benchmarks.bench_{area}", *(["--quick"] * args.quick)]
        print(f"\n##### {area}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call(cmd)
        print(f"##### {area}: exit {rc} after {time.perf_counter() - t0:.0f} s", flush=True)
        if rc != 0:
            failed.append(area)
    if failed:
        print(f"benchmarks failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
