"""A run killed with SIGKILL mid-run loses nothing written; rerunning finishes it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.evaluation.conftest import REPO, reply, square_handler, task_of, write_square_questions
from tests.helpers.scripted_server import Reply, ScriptedServer


def test_sigkill_mid_run_then_the_same_command_finishes_it(
    scripted_server: ScriptedServer, tmp_path: Path
) -> None:
    qs = write_square_questions(tmp_path / "squares.jsonl", 6)

    def slow_after_three(body: dict[str, Any]) -> Any:
        n = int(re.search(r"square of (\d+)", task_of(body)).group(1))  # type: ignore[union-attr]
        if n >= 3:  # the fourth question hangs: the kill lands while it is in flight
            return Reply([reply("final_answer(0)")] * int(body.get("n") or 1), delay_s=120)
        return square_handler(body)

    scripted_server.handler = slow_after_three
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "distillery", "eval", "run", "--questions", str(qs), "--out",
           str(out), "--model-url", scripted_server.url, "--model", "scripted-model",
           "--executor", "local", "--samples", "1", "--concurrency", "1", "--no-progress"]
    env = {**os.environ, "DISTILLERY_MODEL_RETRIES": "0", "DISTILLERY_SANDBOX_POOL_SIZE": "0",
           "DISTILLERY_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    records = out / "records.jsonl"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            lines = records.read_text().splitlines() if records.is_file() else []
            if len(lines) >= 3 and len(scripted_server.chat_requests) >= 4:
                break
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.1)
        else:
            raise AssertionError("the run did not write 3 records in time")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    written = records.read_bytes()
    first = [json.loads(x) for x in written.decode().splitlines()]
    assert [r["id"] for r in first] == ["squares/q0", "squares/q1", "squares/q2"]
    assert all(r["correct"] is True for r in first)
    assert (out / "config.json").is_file()

    scripted_server.handler = square_handler
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.splitlines()[-1])
    assert (summary["skipped_done"], summary["generated"]) == (3, 3)
    after = records.read_bytes()
    assert after.startswith(written)  # what was written before the kill is untouched
    ids = [json.loads(x)["id"] for x in after.decode().splitlines()]
    assert sorted(ids) == [f"squares/q{i}" for i in range(6)]
    report = json.loads((out / "report.json").read_text())
    assert report["sets"]["squares"]["accuracy"] == 1.0 and report["missing"] == 0
