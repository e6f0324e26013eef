"""`distillery solve` as a user runs it: a subprocess, real HTTP to the scripted model server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers.ports import free_port
from tests.helpers.scripted_server import Reply, ScriptedServer

REPO = Path(__file__).resolve().parents[2]

STEP1 = (
    "Thought: Add the numbers.\nCode:\n```py\n"
    "total = sum(range(1, 11))\nprint(total)\n```<end_code>"
)
BAD = "Thought: I will just say it.\nThe answer is 55."
RAISES = "Thought: Divide.\nCode:\n```py\nx = 1 / 0\n```<end_code>"
FINAL = "Thought: Done.\nCode:\n```py\nfinal_answer(total)\n```<end_code>"


def _solve(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DISTILLERY_EXECUTOR": "local", **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "distillery.cli", "solve", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_solve_json_prints_trajectory_with_candidates(scripted_server: ScriptedServer) -> None:
    scripted_server.script([BAD, RAISES, STEP1], [FINAL, FINAL, FINAL])
    proc = _solve(
        "What is 1 + 2 + ... + 10?",
        "--model-url",
        scripted_server.url,
        "--model",
        scripted_server.model,
        "--samples",
        "3",
        "--no-search",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    traj = json.loads(proc.stdout)
    assert traj["answer"] == 55
    assert traj["finish_reason"] == "answer"
    first = traj["steps"][0]
    assert [c["valid"] for c in first["candidates"]] == [False, False, True]
    assert first["chosen"] == 2
    assert first["candidates"][0]["parse_error"]
    assert "ZeroDivisionError" in first["candidates"][1]["execution"]["error"]
    assert "55" in first["observation"]
    assert traj["usage"]["completion_tokens"] > 0
    # one request per step, with n = --samples and the protocol's stop strings
    bodies = scripted_server.chat_requests
    assert [b["n"] for b in bodies] == [3, 3]
    assert "<end_code>" in bodies[0]["stop"]


def test_solve_prints_steps_for_humans(scripted_server: ScriptedServer) -> None:
    scripted_server.script([STEP1], [FINAL])
    proc = _solve(
        "Sum 1..10",
        "--model-url",
        scripted_server.url,
        "--model",
        scripted_server.model,
        "--samples",
        "1",
        "--no-search",
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "step 1" in out and "Thought: Add the numbers." in out
    assert "total = sum(range(1, 11))" in out
    assert "Last output from code snippet:" in out or "Execution logs:" in out
    assert out.strip().endswith("Final answer: 55")


def test_unreachable_model_exits_nonzero_with_one_line_reason() -> None:
    port = free_port()  # nobody listens there
    proc = _solve(
        "anything",
        "--model-url",
        f"http://127.0.0.1:{port}/v1",
        "--model",
        "m",
        "--no-search",
        "--json",
        env_extra={"DISTILLERY_MODEL_RETRIES": "0"},
    )
    assert proc.returncode == 3
    traj = json.loads(proc.stdout)  # the record of the failed run is still printed
    assert traj["finish_reason"] == "error"
    assert traj["error_type"] == "ModelUnavailable"
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("distillery: error:")]
    assert len(lines) == 1, proc.stderr
    assert f"127.0.0.1:{port}" in lines[0]


def test_bad_options_are_rejected_clearly() -> None:
    proc = _solve("q", "--samples", "0", "--model-url", "http://x/v1", "--model", "m")
    assert proc.returncode == 2
    assert "samples" in proc.stderr
    proc = _solve("q", "--model-url", "http://x/v1")  # no --model
    assert proc.returncode == 2
    assert "--model" in proc.stderr


def test_candidates_cut_by_early_exit_are_shown_as_cancelled(
    scripted_server: ScriptedServer,
) -> None:
    """A streamed step ends at the first valid candidate; the others were never finished,
    so the transcript must not call them ok."""
    def handler(body: dict[str, object]) -> Reply:
        n = int(str(body.get("n") or 1))
        text = FINAL if "Observation" in json.dumps(body["messages"]) else STEP1
        return Reply(text, token_delay_s=[0.001] + [0.2] * (n - 1))  # #0 finishes first

    scripted_server.handler = handler
    proc = _solve("Sum 1..10", "--model-url", scripted_server.url, "--model",
                  scripted_server.model, "--samples", "3", "--no-search", "--json")
    assert proc.returncode == 0, proc.stderr
    first = json.loads(proc.stdout)["steps"][0]
    cancelled = [c["index"] for c in first["candidates"] if c.get("finish_reason") == "cancelled"]
    human = _solve("Sum 1..10", "--model-url", scripted_server.url, "--model",
                   scripted_server.model, "--samples", "3", "--no-search")
    assert human.returncode == 0, human.stderr
    lines = [ln.strip() for ln in human.stdout.splitlines() if ln.strip().startswith("candidate #")]
    assert cancelled  # the slow candidates were cut when #0 was kept
    for index in cancelled:
        assert f"candidate #{index}: cancelled (another candidate was kept first)" in lines
    assert sum(ln.endswith(": ok") for ln in lines[:3]) == 3 - len(cancelled)
