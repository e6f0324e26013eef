"""`distillery eval run --gateway-url` against a real gateway (`distillery.app.create_app`
under uvicorn, as `distillery serve` runs it) in front of the scripted model server."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from distillery.settings import Settings
from tests.evaluation.conftest import last_json, square_handler, write_square_questions
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
