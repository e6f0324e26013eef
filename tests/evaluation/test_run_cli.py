"""`distillery eval run` end to end: real HTTP to a scripted model, the real sandbox in its
unjailed mode, records + config + reports, resume, refusals and bad input."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from evaluation.datasets import file_sha256
from tests.evaluation.conftest import (
    last_json,
    reply,
    square_handler,
    task_of,
    write_square_questions,
)
from tests.helpers.ports import free_port
from tests.helpers.scripted_server import ScriptedServer

Run = Callable[..., Any]


def model_flags(srv: ScriptedServer) -> list[str]:
    return ["--model-url", srv.url, "--model", srv.model, "--executor", "local", "--samples", "2",
            "--max-steps", "3", "--no-progress"]


def test_run_writes_records_config_reports_and_resumes(
    scripted_server: ScriptedServer, run_cli: Run, tmp_path: Path
) -> None:
    qs = write_square_questions(tmp_path / "squares.jsonl", 4, wrong={3})
    out = tmp_path / "run"
    scripted_server.handler = square_handler
    cmd = ["eval", "run", "--questions", str(qs), "--out", str(out), *model_flags(scripted_server)]
    proc = run_cli(*cmd)
    assert proc.returncode == 0, proc.stderr
    summary = last_json(proc)
    assert summary["ok"] is True and summary["generated"] == 4
    assert summary["sets"] == {"squares": 0.75} and summary["average_accuracy"] == 0.75
    assert "squares (math): 4 questions" in proc.stderr
    records = [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in records) == ["squares/q0", "squares/q1", "squares/q2",
                                                "squares/q3"]
    assert all(r["trajectory"]["finish_reason"] == "answer" for r in records)
    config = json.loads((out / "config.json").read_text())
    (s,) = config["sets"]
    assert (s["name"], s["domain"], s["n"]) == ("squares", "math", 4)
    assert s["sha256"] == file_sha256(qs)
    assert config["model"] == {"kind": "url", "url": scripted_server.url, "name": "scripted-model"}
    assert config["agent"]["samples"] == 2 and config["agent"]["max_steps"] == 3
    assert config["mode"] == "agent" and config["judge"] is None
    report = json.loads((out / "report.json").read_text())
    assert report["sets"]["squares"]["accuracy"] == 0.75
    assert report["sets"]["squares"]["steps_mean"] == 1.0
    assert (out / "report.md").is_file() and (out / "report.html").is_file()
    requests = len(scripted_server.chat_requests)

    # the same command again: nothing left to run, no model request, same report
    proc = run_cli(*cmd)
    assert proc.returncode == 0, proc.stderr
    again = last_json(proc)
    assert (again["skipped_done"], again["generated"]) == (4, 0)
    assert len(scripted_server.chat_requests) == requests
    assert len((out / "records.jsonl").read_text().splitlines()) == 4

    # another configuration is refused, the folder is untouched
    before = (out / "records.jsonl").read_bytes()
    cmd[cmd.index("--samples") + 1] = "3"
    proc = run_cli(*cmd)
    assert proc.returncode == 2
    assert "another configuration (agent.samples: 2 -> 3)" in proc.stderr
    assert "use another --out" in proc.stderr
    assert (out / "records.jsonl").read_bytes() == before


def test_cot_mode_runs_no_code(scripted_server: ScriptedServer, run_cli: Run,
                               tmp_path: Path) -> None:
    qs = write_square_questions(tmp_path / "squares.jsonl", 2)

    def cot(body: dict[str, Any]) -> list[str]:
        n = int(task_of(body).split("square of ")[1].split("?")[0]) if "square of" in str(
            body["messages"]) else 0
        return [f"Let me think.\nThe answer is \\boxed{{{n * n}}}."]

    scripted_server.handler = cot
    out = tmp_path / "cot"
    proc = run_cli("eval", "run", "--questions", str(qs), "--out", str(out), "--mode", "cot",
                   "--model-url", scripted_server.url, "--model", "scripted-model",
                   "--no-progress")
    assert proc.returncode == 0, proc.stderr
    rec = json.loads((out / "records.jsonl").read_text().splitlines()[0])
    assert rec["mode"] == "cot" and rec["trajectory"] is None and rec["cot"]["text"]
    assert json.loads((out / "config.json").read_text())["cot"] == {"temperature": 0.0,
                                                                   "max_tokens": 2048}


def test_bad_input_gets_one_clear_line(scripted_server: ScriptedServer, run_cli: Run,
                                       tmp_path: Path, wiki_data: dict[str, Path]) -> None:
    out = str(tmp_path / "out")
    proc = run_cli("eval", "run", "--questions", "hotpot", "--out", out)
    assert proc.returncode == 2
    assert "unknown question set 'hotpot'" in proc.stderr and "math500" in proc.stderr
    assert proc.stderr.count("\n") == 1 and last_json(proc)["ok"] is False

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "ok?"}\n\n{"answer": 1}\n')
    proc = run_cli("eval", "run", "--questions", str(bad), "--out", out)
    assert proc.returncode == 2 and "bad.jsonl:3: expected an object with a 'question'" in (
        proc.stderr)

    # a factual set with no index: what to build, with the exact command
    proc = run_cli("eval", "run", "--questions", str(wiki_data["trivia"]), "--out", out,
                   "--model-url", scripted_server.url, "--model", "scripted-model",
                   "--data-dir", str(wiki_data["root"]))
    assert proc.returncode == 2
    assert "distillery index build --corpus" in proc.stderr
    assert str(wiki_data["root"] / "wiki" / "passages.jsonl.gz") in proc.stderr

    # an unreachable model: exit 3, one line, nothing written
    qs = write_square_questions(tmp_path / "squares.jsonl", 2)
    proc = run_cli("eval", "run", "--questions", str(qs), "--out", out, "--model-url",
                   f"http://127.0.0.1:{free_port()}/v1", "--model", "m", "--executor", "local")
    assert proc.returncode == 3, proc.stderr
    assert "cannot reach the model at" in proc.stderr and proc.stderr.count("distillery:") == 1
    assert not (tmp_path / "out" / "records.jsonl").exists()


def test_factual_run_with_search_gold_passages_and_a_cached_judge(
    scripted_server: ScriptedServer, run_cli: Run, tmp_path: Path, wiki_data: dict[str, Path]
) -> None:
    def handler(body: dict[str, Any]) -> list[str]:
        task = task_of(body)
        n = int(body.get("n") or 1)
        if len(body["messages"]) <= 2:  # first step: search
            query = "Eiffel Tower Paris" if "Tower" in task else "Gustave Eiffel born"
            return [reply(f"print(web_search({query!r}))")] * n
        answer = "Paris, France" if "Tower" in task else "Lyon"
        return [reply(f"final_answer({answer!r})")] * n

    scripted_server.handler = handler
    with ScriptedServer(model="judge") as judge:
        judge.handler = lambda body: ["yes" if "Paris, France" in body["messages"][0]["content"]
                                      else "no"]
        out = tmp_path / "factual"
        cmd = ["eval", "run", "--questions", str(wiki_data["trivia"]), "--out", str(out),
               *model_flags(scripted_server), "--index-dir", str(wiki_data["index"]),
               "--data-dir", str(wiki_data["root"]), "--judge-url", judge.url,
               "--judge-model", "judge"]
        proc = run_cli(*cmd)
        assert proc.returncode == 0, proc.stderr
        assert "1 with gold passages in the mini-Wikipedia (1 of 2 in the file)" in proc.stderr
        summary = last_json(proc)
        assert summary["judge_calls"] == 2 and summary["judge_errors"] == 0
        rep = json.loads((out / "report.json").read_text())
        t = rep["sets"]["trivia"]
        # t1 "Paris, France" vs "Paris": EM 0, F1 2/3, judge yes; t2 "Lyon" vs "Dijon": wrong
        assert (t["n"], t["correct"], t["accuracy"], t["judge_accuracy"]) == (2, 1, 0.5, 0.5)
        assert t["em"] == 0.0 and t["f1"] == round((2 / 3 + 0) / 2, 4)
        assert (t["covered"], t["retrieval_recall"]) == (1, 1.0)  # t1 saw its gold passage
        assert rep["metric"] == "judge"
        judged = [json.loads(x) for x in (out / "judgments.jsonl").read_text().splitlines()]
        assert {j["id"]: j["verdict"] for j in judged} == {"trivia/t1": True, "trivia/t2": False}
        cfg = json.loads((out / "config.json").read_text())
        assert cfg["retrieval"]["index_dir"] == str(wiki_data["index"].resolve())
        assert cfg["judge"] == {"url": judge.url, "model": "judge"}

        # rerun: no new run, and the verdicts come from the cache: no judge call
        proc = run_cli(*cmd)
        assert proc.returncode == 0, proc.stderr
        assert last_json(proc)["judge_calls"] == 0 and len(judge.chat_requests) == 2
