"""The shop task, the worked example of a task over your own MCP server, end to end: its
database and questions are generated, its server (training/tasks/shop.py, over stdio) is
spawned by `distillery eval run --mcp-config` and ends with it, the model's code queries
it, and each question is graded with its task's grader. Without the server's tools the
run is refused before it starts, naming them."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.scripted_server import ScriptedServer
from tests.tools.conftest import children
from training.questions import load_questions
from training.tasks.shop import make_example

REPO = Path(__file__).resolve().parents[2]


def _shop_servers() -> list[int]:
    out = []
    for pid in children():
        try:
            if b"training.tasks.shop" in Path(f"/proc/{pid}/cmdline").read_bytes():
                out.append(pid)
        except OSError:
            continue
    return out


def _eval(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTILLERY_")}
    return subprocess.run([sys.executable, "-m", "distillery.cli", "eval", "run", *argv],
                          cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip


def _clerk(body: dict[str, Any]) -> str:
    """Answers price questions with a query through the shop's tool, anything else with 0."""
    task = str(body["messages"][1]["content"])
    m = re.search(r"price of the ([a-z ]+)\?", task)
    code = (
        f"rows = query(sql=\"SELECT price FROM products WHERE name = '{m.group(1)}'\")\n"
        "final_answer(rows[0][0])" if m else "final_answer(0)"
    )
    return f"Thought: I ask the database.\nCode:\n```py\n{code}\n```<end_code>"


def test_questions_are_answered_by_the_database(tmp_path: Path) -> None:
    paths = make_example(tmp_path / "shop", seed=3)
    qs = load_questions(paths["questions"])
    assert len(qs) >= 10 and {q.task for q in qs} == {"shop"}
    assert {q.spec.grader for q in qs} == {"numeric", "exact"}
    assert all(q.spec.tools == ("tables", "query") for q in qs)
    db = sqlite3.connect(paths["db"])
    kettle = db.execute("SELECT price FROM products WHERE name = 'kettle'").fetchone()[0]
    assert next(q.answer for q in qs if "kettle" in q.question) == kettle
    # the same seed makes the same shop; another seed another one
    again = make_example(tmp_path / "again", seed=3)
    assert Path(again["questions"]).read_text() == Path(paths["questions"]).read_text()
    other = make_example(tmp_path / "other", seed=4)
    assert Path(other["questions"]).read_text() != Path(paths["questions"]).read_text()


def test_eval_runs_the_shop_task_over_its_server(
    scripted_server: ScriptedServer, tmp_path: Path
) -> None:
    paths = make_example(tmp_path / "shop")
    scripted_server.handler = _clerk
    out = tmp_path / "eval"
    proc = _eval("--questions", paths["questions"], "--mcp-config", paths["mcp_config"],
                 "--limit", "4", "--out", str(out), "--model-url", scripted_server.url,
                 "--model", scripted_server.model, "--executor", "local", "--samples", "1",
                 "--max-steps", "2", "--no-html", "--no-progress")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    # three price questions answered through query(), the order count wrong (0)
    assert summary["sets"] == {"questions": 0.75}, summary
    lines = (out / "records.jsonl").read_text().splitlines()
    records = {r["id"]: r for r in map(json.loads, lines)}
    assert len(records) == 4 and all(r["tools"] == ["query", "tables"] for r in records.values())
    assert {r["grader"] for r in records.values()} == {"numeric"}
    kettle = records["questions/shop-0"]
    call = kettle["trajectory"]["steps"][0]["candidates"][0]["execution"]["tool_calls"][0]
    assert call["name"] == "query" and kettle["correct"] is True
    system = scripted_server.chat_requests[0]["messages"][0]["content"]
    assert "- query(sql: str) -> list[list]" in system and "web_search(" not in system
    assert not _shop_servers()  # the job's server ended with it


def test_a_task_without_its_tools_is_refused_before_any_run(
    scripted_server: ScriptedServer, tmp_path: Path
) -> None:
    paths = make_example(tmp_path / "shop")
    proc = _eval("--questions", paths["questions"], "--out", str(tmp_path / "eval"),
                 "--model-url", scripted_server.url, "--model", scripted_server.model,
                 "--executor", "local", "--no-progress")  # fmt: skip
    assert proc.returncode == 2
    assert "task 'shop'" in proc.stderr and "tables, query" in proc.stderr
    assert "--mcp-config" in proc.stderr
    assert scripted_server.chat_requests == []


@pytest.mark.parametrize("sql", ["DELETE FROM products", "SELECT nope FROM products"])
def test_the_server_refuses_writes_and_reports_sql_errors(tmp_path: Path, sql: str) -> None:
    import asyncio

    from agent.mcp_config import load_mcp_config
    from agent.mcp_provider import McpProvider

    paths = make_example(tmp_path / "shop")

    async def call() -> str:
        provider = McpProvider(load_mcp_config(Path(paths["mcp_config"]))[0])
        await provider.start()
        try:
            with pytest.raises(Exception) as raised:
                await provider.tools_for_run()["query"](sql=sql)
            return str(raised.value)
        finally:
            await provider.close()

    message = asyncio.run(call())
    assert ("only SELECT" in message) if sql.startswith("DELETE") else ("no such column" in message)
    db = sqlite3.connect(paths["db"])
    assert db.execute("SELECT COUNT(*) FROM products").fetchone()[0] == 15
