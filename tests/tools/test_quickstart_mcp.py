"""README's Quickstart 4 works as written: its commands, read from README.md, run in a fresh
folder. The model is the scripted server, given the way a user gives one without flags
(DISTILLERY_MODEL_URL / DISTILLERY_MODEL), with the unjailed executor and a small index so
the test needs neither nsjail nor the demo index; everything else is the README's line."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests.helpers.ports import free_port
from tests.helpers.scripted_server import ScriptedServer
from tests.service.conftest import index_dir  # noqa: F401
from tests.tools.test_shop_task import _clerk, _shop_servers

REPO = Path(__file__).resolve().parents[2]


def quickstart_commands() -> list[list[str]]:
    """The sh block of README's Quickstart 4, one argv per command (comments dropped)."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Quickstart 4", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert block, "Quickstart 4 has no sh block"
    commands = []
    for line in block.group(1).splitlines():
        argv = shlex.split(line, comments=True)
        if argv:
            commands.append(argv)
    return commands


def _argv(argv: list[str]) -> list[str]:
    """`.venv/bin/python` and `.venv/bin/distillery` as this interpreter runs them."""
    if argv[0] == ".venv/bin/python":
        return [sys.executable, *argv[1:]]
    assert argv[0] == ".venv/bin/distillery", argv
    return [sys.executable, "-m", "distillery.cli", *argv[1:]]


def _serve(argv: list[str], cwd: Path, env: dict[str, str]) -> None:
    port = free_port()
    proc = subprocess.Popen(_argv(argv), cwd=cwd, env={**env, "DISTILLERY_PORT": str(port)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the gateway did not become ready"
            time.sleep(0.5)
        names = [t["name"] for t in httpx.get(f"{url}/v1/tools", timeout=10).json()["data"]]
        assert names == ["web_search", "tables", "query"], names
        r = httpx.post(f"{url}/v1/solve", timeout=120, json={
            "question": "What is the price of the kettle?", "tools": ["tables", "query"]})
        assert r.status_code == 200, r.text
        assert r.json()["answer"] == _kettle_price(cwd)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert not _shop_servers()


def _kettle_price(cwd: Path) -> Any:
    for line in (cwd / "shop" / "questions.jsonl").read_text().splitlines():
        q = json.loads(line)
        if "kettle" in q["question"]:
            return q["answer"]
    raise AssertionError("no kettle question")


def test_quickstart_4_runs_as_written(
    scripted_server: ScriptedServer, index_dir: Path, tmp_path: Path  # noqa: F811
) -> None:
    commands = quickstart_commands()
    assert [c[1:3] for c in commands] == [
        ["-m", "training.tasks.shop"], ["serve", "--mcp-config"], ["eval", "run"]]
    scripted_server.handler = _clerk
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTILLERY_")}
    env.update(PYTHONPATH=str(REPO), DISTILLERY_MODEL_URL=scripted_server.url,
               DISTILLERY_MODEL=scripted_server.model, DISTILLERY_EXECUTOR="local",
               DISTILLERY_INDEX_DIR=str(index_dir), DISTILLERY_SAMPLES="1",
               DISTILLERY_MAX_STEPS="2")  # fmt: skip
    for argv in commands:
        if argv[1] == "serve":
            _serve(argv, tmp_path, env)
            continue
        extra = ["--no-progress", "--no-html"] if argv[1] == "eval" else []
        proc = subprocess.run(_argv(argv) + extra, cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=300)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        summary = json.loads(proc.stdout.strip().splitlines()[-1])
        assert summary["ok"] is True
    report = json.loads((tmp_path / "evals" / "shop" / "report.json").read_text())
    # the scripted clerk answers the three price questions through query(), nothing else
    assert report["sets"]["questions"]["correct"] == 3, report["sets"]
