"""The tools travel with the student: `distillery generate --mcp-config` (a real MCP server
over stdio, spawned and closed with the job) records the specs the teacher saw ->
build-data renders the student's prompt from them and carries them into each example ->
export writes them into the checkpoint (distillery_tools.json), where serving reads them
(tests/tools/test_trained_tools.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent import TRAINED_TOOLS_FILE, read_trained_tools
from tests.helpers.mcp_servers import python_module_command
from tests.helpers.scripted_server import ScriptedServer
from tests.tools.conftest import server_processes
from tests.training.conftest import read_jsonl
from training.build_data import build_data
from training.export import export_model

REPO = Path(__file__).resolve().parents[2]
STEPS = [
    "Thought: The add tool does it.\nCode:\n```py\ns = add(a=40, b=2)\nprint(s)\n```<end_code>",
    "Thought: Done.\nCode:\n```py\nfinal_answer(s)\n```<end_code>",
]


def _teacher(body: dict[str, Any]) -> str:
    done = sum(1 for m in body["messages"] if m["role"] == "assistant")
    return STEPS[min(done, len(STEPS) - 1)]


def _mcp_file(tmp_path: Path) -> Path:
    command, args, cwd = python_module_command()
    path = tmp_path / "mcp.json"
    path.write_text(json.dumps({"mcpServers": {
        "proj": {"command": command, "args": args, "cwd": cwd}}}))  # fmt: skip
    return path


def cli(*argv: str) -> dict[str, Any]:
    """A distillery command as a user runs it (a subprocess: MCP stdio servers inherit its
    real stderr); its JSON summary."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTILLERY_")}
    proc = subprocess.run([sys.executable, "-m", "distillery.cli", *argv], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return summary


@pytest.fixture
def mcp_records(scripted_server: ScriptedServer, tmp_path: Path) -> Path:
    scripted_server.handler = _teacher
    qfile = tmp_path / "q.jsonl"
    qfile.write_text(json.dumps({"id": "a", "question": "What is 40 + 2?", "answer": "42",
                                 "task": {"name": "adding", "grader": "numeric",
                                          "tools": ["add"]}}) + "\n")  # fmt: skip
    out = tmp_path / "teacher.jsonl"
    summary = cli("generate", "--questions", str(qfile), "--out", str(out),
                   "--model-url", scripted_server.url, "--model", scripted_server.model,
                   "--executor", "local", "--no-search", "--no-progress",
                   "--mcp-config", str(_mcp_file(tmp_path)))  # fmt: skip
    assert summary["succeeded"] == 1 and summary["correct"] == 1
    assert not server_processes()  # the job's MCP server ended with it
    return out


def test_generate_records_the_specs_and_build_data_carries_them(
    mcp_records: Path, scripted_server: ScriptedServer, tmp_path: Path
) -> None:
    rec = read_jsonl(mcp_records)[0]
    assert rec["tools"] == ["add"] and rec["grader"] == "numeric"
    (spec,) = rec["tool_specs"]
    assert spec["signature"] == "add(a: int, b: int) -> int"
    assert spec["description"] == "Adds two integers." and spec["provider"] == "mcp:proj"
    teacher_prompt = scripted_server.chat_requests[0]["messages"][0]["content"]
    assert "- add(a: int, b: int) -> int" in teacher_prompt and "city(" not in teacher_prompt

    data = tmp_path / "train.jsonl"
    summary = build_data([mcp_records], data)
    assert summary["kept"] == 1 and summary["tools"] == ["add"]
    (example,) = read_jsonl(data)
    assert example["tools"] == [spec]
    student_prompt = example["messages"][0]["content"]
    assert "- add(a: int, b: int) -> int\n    Adds two integers." in student_prompt
    assert "no description" not in student_prompt


def _run_with_data(lora_run: Path, data: Path, dest: Path) -> Path:
    run = dest / "run"
    shutil.copytree(lora_run, run)
    path = run / "train_summary.json"
    summary = json.loads(path.read_text())
    summary["settings"]["data"] = [str(data)]
    path.write_text(json.dumps(summary))
    return run


@pytest.mark.slow
def test_export_writes_the_tools_into_the_checkpoint(
    mcp_records: Path, lora_run: Path, tmp_path: Path
) -> None:
    data = tmp_path / "train.jsonl"
    build_data([mcp_records], data)
    ckpt = tmp_path / "student"
    summary = export_model(ckpt, run_dir=_run_with_data(lora_run, data, tmp_path))
    assert TRAINED_TOOLS_FILE in summary["files"] and summary["tools"] == ["add"]
    trained = read_trained_tools(ckpt)
    assert trained is not None and [s.signature for s in trained] == ["add(a: int, b: int) -> int"]
    info = json.loads((ckpt / "distillery.json").read_text())
    assert info["tools"] == ["add"]
    assert "Trained with the tools `add`" in (ckpt / "README.md").read_text()

