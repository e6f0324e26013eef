"""`distillery eval run --gateway-url` against a real gateway (`distillery.app.create_app`
under uvicorn, as `distillery serve` runs it) in front of the scripted model server."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from distillery.settings import Settings
from tests.evaluation.conftest import last_json, square_handler, task_of, write_square_questions
from tests.helpers.gateway_server import GatewayServer
from tests.helpers.ports import free_port
from tests.helpers.scripted_server import ScriptedServer


def test_eval_through_the_gateway_solve_endpoint(
    scripted_server: ScriptedServer, run_cli: Callable[..., Any], tmp_path: Path,
    wiki_data: dict[str, Path],
) -> None:
    settings = Settings(
        model_url=scripted_server.url, model="scripted-model", model_retries=0,
        executor="local", sandbox_pool_size=0, samples=2, max_steps=3,
        index_dir=wiki_data["index"], api_keys=["k-eval"],
    )
    scripted_server.handler = square_handler
    qs = write_square_questions(tmp_path / "squares.jsonl", 3, wrong={0})
    out = tmp_path / "gw"
    with GatewayServer(settings) as gw:
        proc = run_cli("eval", "run", "--questions", str(qs), "--out", str(out),
                       "--gateway-url", gw.url, "--api-key", "k-eval", "--samples", "3",
                       "--no-progress")
        assert proc.returncode == 0, proc.stderr
        assert last_json(proc)["sets"] == {"squares": round(2 / 3, 4)}
        # the gateway ran the agent: its model requests carry the eval's samples
        assert {b["n"] for b in scripted_server.chat_requests} == {3}
        wrong_key = run_cli("eval", "run", "--questions", str(qs), "--out",
                            str(tmp_path / "gw2"), "--gateway-url", gw.url, "--api-key", "nope")
    assert wrong_key.returncode == 3 and "refused the request (HTTP 401)" in wrong_key.stderr
    records = [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]
    assert len(records) == 3
    for r in records:
        assert r["gateway"]["url"] == gw.url and r["gateway"]["id"]
        assert r["gateway"]["timings"]["run_s"] >= 0
        steps = r["trajectory"]["steps"]
        assert steps and len(steps[0]["candidates"]) == 3
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == {"kind": "gateway", "url": gw.url, "model": "scripted-model"}
    report = json.loads((out / "report.json").read_text())
    assert report["sets"]["squares"]["steps_mean"] == 1.0
    assert report["sets"]["squares"]["valid_step_rate"] == 1.0

    proc = run_cli("eval", "run", "--questions", str(qs), "--out", str(tmp_path / "gw3"),
                   "--gateway-url", f"http://127.0.0.1:{free_port()}")
    assert proc.returncode == 3
    assert "cannot reach the gateway at" in proc.stderr
    assert proc.stderr.count("distillery: error:") == 1


def _tools_in_prompt(body: dict[str, Any]) -> set[str]:
    system = str(body["messages"][0]["content"])
    return {name for name, shown in (("web_search", "web_search(query"),
                                     ("query", "query(sql"), ("tables", "tables()"))
            if shown in system}  # fmt: skip


def test_eval_through_the_gateway_sends_each_task_its_tools(
    scripted_server: ScriptedServer, run_cli: Callable[..., Any], tmp_path: Path,
    wiki_data: dict[str, Path],
) -> None:  # fmt: skip
    """The gateway serves web_search and the shop's MCP tools; each /v1/solve names the
    question's task's tools, so a shop question is shown the shop's alone, a math question
    none and a factual one all; a gateway without the shop's server is refused up front."""
    from tests.tools.test_shop_task import _clerk
    from training.tasks.shop import make_example

    shop = make_example(tmp_path / "shop")
    prices = [x for x in Path(shop["questions"]).read_text().splitlines() if "price of" in x]
    (tmp_path / "shop.jsonl").write_text("\n".join(prices[:2]) + "\n")
    (tmp_path / "squares.jsonl").write_text("".join(
        json.dumps({"id": f"q{i}", "question": f"What is the square of {i}?",
                    "answer": str(i * i), "task": task}) + "\n"
        for i, task in ((2, "math"), (3, "factual"))))  # fmt: skip
    questions = ["--questions", str(tmp_path / "shop.jsonl"), str(tmp_path / "squares.jsonl")]
    scripted_server.handler = lambda body: (
        [_clerk(body)] if "price of" in str(body["messages"][1]["content"])
        else square_handler(body))  # fmt: skip
    settings = Settings(
        model_url=scripted_server.url, model="scripted-model", model_retries=0,
        executor="local", sandbox_pool_size=0, samples=1, max_steps=3,
        index_dir=wiki_data["index"], mcp_config=Path(shop["mcp_config"]),
    )  # fmt: skip
    out = tmp_path / "gw"
    with GatewayServer(settings) as gw:
        proc = run_cli("eval", "run", *questions, "--out", str(out), "--gateway-url", gw.url,
                       "--no-progress")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert last_json(proc)["sets"] == {"shop": 1.0, "squares": 1.0}
    shown = {task_of(b): _tools_in_prompt(b) for b in scripted_server.chat_requests}
    assert {q: t for q, t in shown.items() if "price of" in q} and all(
        t == {"query", "tables"} for q, t in shown.items() if "price of" in q)
    squares = {q.split("?")[0]: t for q, t in shown.items() if "square of" in q}
    assert squares == {"What is the square of 2": set(),  # math
                       "What is the square of 3": {"web_search", "query", "tables"}}  # fmt: skip
    lines = (out / "records.jsonl").read_text().splitlines()
    records = {r["id"]: r for r in map(json.loads, lines)}
    assert records["squares/q2"]["tools"] == [] and records["squares/q3"]["tools"] == []
    assert all(r["tools"] == ["query", "tables"] for i, r in records.items()
               if i.startswith("shop/"))  # fmt: skip

    # the same questions at a gateway without the shop's server: refused before any run
    asked = len(scripted_server.chat_requests)
    bare = Settings(model_url=scripted_server.url, model="scripted-model", model_retries=0,
                    executor="local", sandbox_pool_size=0)  # fmt: skip
    with GatewayServer(bare) as gw:
        proc = run_cli("eval", "run", *questions, "--out", str(tmp_path / "gw2"),
                       "--gateway-url", gw.url)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "runs with the tools tables, query" in proc.stderr
    assert "does not serve tables, query" in proc.stderr and "--mcp-config" in proc.stderr
    assert len(scripted_server.chat_requests) == asked
