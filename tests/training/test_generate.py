"""Teacher generation through the real agent loop: records, first-thought prefix, CoT mode,
per-run errors, bounded concurrency, resume after interruption, and the CLI."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from agent.agent import AgentConfig
from agent.model_client import Completion, Message, SamplingParams
from agent.openai_client import OpenAIChatClient
from distillery.cli import main as cli_main
from sandbox.executor import SandboxExecutor
from tests.helpers.scripted_server import Error, Reply
from tests.training.conftest import ARITH, agent_reply, arith_teacher, question_of, read_jsonl
from training.generate import GenerateConfig, GenerateError, generate
from training.questions import load_questions


def teacher_client(srv: Any) -> OpenAIChatClient:
    return OpenAIChatClient(srv.url, srv.model, retries=0, timeout_s=60)


def cfg(**kw: Any) -> GenerateConfig:
    kw.setdefault("agent", AgentConfig(prompt="teacher", samples=2, max_steps=4, seed=0))
    return GenerateConfig(progress=False, **kw)


async def run(
    srv: Any, qfile: Path, out: Path, executor: SandboxExecutor, **kw: Any
) -> dict[str, Any]:
    client = teacher_client(srv)
    try:
        summary = await generate(
            load_questions(qfile), out, model=client, executor=executor, config=cfg(**kw)
        )
    finally:
        await client.aclose()
    return summary.to_dict()


async def test_agent_records(
    teacher: Any, questions_file: Path, tmp_path: Path, local_executor: SandboxExecutor
) -> None:
    out = tmp_path / "gen.jsonl"
    summary = await run(teacher, questions_file, out, local_executor, concurrency=2)
    recs = {r["id"]: r for r in read_jsonl(out)}
    assert sorted(recs) == ["q0", "q1", "q2", "q3"]
    assert summary["generated"] == 4 and summary["succeeded"] == 4 and summary["errors"] == 0
    assert summary["graded"] == 4 and summary["correct"] == 3 and summary["accuracy"] == 0.75
    for rid, gold_ok in [("q0", True), ("q1", True), ("q2", True), ("q3", False)]:
        r = recs[rid]
        assert r["status"] == "ok" and r["mode"] == "agent" and r["ftp"] is False
        assert r["correct"] is gold_ok and r["grade"]["correct"] is gold_ok
        traj = r["trajectory"]
        assert traj["finish_reason"] == "answer" and len(traj["steps"]) == 2
        assert traj["messages"][0]["role"] == "system"
        assert r["prediction"] == eval(ARITH[r["question"]][0])  # noqa: S307 - computed by the code
        assert r["teacher"] == teacher.model and r["tools"] == []
        assert r["usage"]["completion_tokens"] > 0 and r["elapsed_s"] > 0
    assert summary["prompt_tokens"] == sum(r["usage"]["prompt_tokens"] for r in recs.values())
    # the teacher ran with the teacher prompt and n=2 candidates per step
    body = teacher.chat_requests[0]
    assert body["n"] == 2 and "<end_code>" in body["stop"]
    assert body["messages"][0]["content"] != ""


async def test_first_thought_prefix_is_prefilled_and_continued(
    teacher: Any, tmp_path: Path, local_executor: SandboxExecutor
) -> None:
    from tests.training.conftest import write_questions

    qfile = write_questions(tmp_path / "one.jsonl", {"What is 17 * 23?": ARITH["What is 17 * 23?"]})
    out = tmp_path / "ftp.jsonl"
    summary = await run(teacher, qfile, out, local_executor, ftp=True)
    assert summary["succeeded"] == 1
    cot_req, step1, step2 = teacher.chat_requests
    # 1. the chain-of-thought pass: one user turn, no protocol stop, greedy
    assert len(cot_req["messages"]) == 1 and cot_req["messages"][0]["role"] == "user"
    assert not cot_req.get("stop") and cot_req["temperature"] == 0.0
    # 2. the agent's first request continues a prefilled assistant message
    prefix = "Thought: We need to evaluate 17 * 23.\n\n"
    assert step1["messages"][-1] == {"role": "assistant", "content": prefix}
    assert step1["continue_final_message"] is True and step1["add_generation_prompt"] is False
    assert step1["messages"][0]["role"] == "system"
    # 3. later steps are plain
    assert step2["messages"][-1]["role"] == "user" and not step2.get("continue_final_message")
    (rec,) = read_jsonl(out)
    assert rec["ftp"] is True and rec["cot"]["prefix"] == "We need to evaluate 17 * 23."
    traj = rec["trajectory"]
    first = traj["steps"][0]["candidates"][traj["steps"][0]["chosen"]]
    assert first["text"].startswith(prefix + "Then: I compute it")
    assert first["thought"].startswith("We need to evaluate 17 * 23.")
    assert traj["messages"][2] == {"role": "assistant", "content": first["text"]}
    assert rec["correct"] is True
    assert rec["usage"]["prompt_tokens"] > traj["usage"]["prompt_tokens"]  # CoT pass counted


async def test_cot_mode_records_the_answer_only(
    teacher: Any, questions_file: Path, tmp_path: Path, local_executor: SandboxExecutor
) -> None:
    out = tmp_path / "cot.jsonl"
    summary = await run(teacher, questions_file, out, local_executor, mode="cot")
    assert summary["generated"] == 4 and summary["correct"] == 3
    recs = {r["id"]: r for r in read_jsonl(out)}
    assert recs["q0"]["mode"] == "cot" and recs["q0"]["trajectory"] is None
    assert recs["q0"]["prediction"] == "391" and recs["q0"]["correct"] is True
    assert recs["q0"]["cot"]["finish_reason"] == "stop"
    assert all(is_single_turn(b) for b in teacher.chat_requests)


def is_single_turn(body: dict[str, Any]) -> bool:
    return len(body["messages"]) == 1


async def test_failed_runs_are_recorded_and_not_fatal(
    teacher: Any, questions_file: Path, tmp_path: Path, local_executor: SandboxExecutor
) -> None:
    def handler(body: dict[str, Any]) -> Any:
        if question_of(body) == "What is 2 ** 10?":
            return Error(400, "scripted rejection")
        return arith_teacher(body)

    teacher.handler = handler
    out = tmp_path / "gen.jsonl"
    summary = await run(teacher, questions_file, out, local_executor)
    assert summary["succeeded"] == 3 and summary["errors"] == 1
    assert summary["error_types"] == {"ModelRequestError": 1}
    bad = next(r for r in read_jsonl(out) if r["id"] == "q1")
    assert bad["status"] == "error" and "scripted rejection" in bad["error"]
    assert bad["correct"] is None and bad["trajectory"]["finish_reason"] == "error"


class CountingClient:
    """Wraps a real client to count concurrent calls (instrumentation, not a mock)."""

    def __init__(self, inner: OpenAIChatClient) -> None:
        self.inner = inner
        self.model_name = inner.model_name
        self.in_flight = 0
        self.max_in_flight = 0

    async def complete(
        self,
        messages: Sequence[Message],
        params: SamplingParams,
        *,
        continue_final_message: bool = False,
    ) -> Completion:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self.inner.complete(
                messages, params, continue_final_message=continue_final_message
            )
        finally:
            self.in_flight -= 1

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_concurrency_is_bounded(
    teacher: Any, questions_file: Path, tmp_path: Path, local_executor: SandboxExecutor
) -> None:
    teacher.handler = lambda body: Reply(agent_reply(body), delay_s=0.3)
    client = CountingClient(teacher_client(teacher))
    try:
        s = await generate(
            load_questions(questions_file),
            tmp_path / "gen.jsonl",
            model=client,
            executor=local_executor,
            config=cfg(concurrency=2),
        )
    finally:
        await client.aclose()
    assert s.generated == 4
    assert client.max_in_flight == 2


async def test_resume_after_interruption(
    teacher: Any, questions_file: Path, tmp_path: Path, local_executor: SandboxExecutor
) -> None:
    out = tmp_path / "gen.jsonl"

    def slow_third(body: dict[str, Any]) -> Any:
        if question_of(body) == "What is 99 + 1?":
            return Reply(agent_reply(body), delay_s=60)  # the job is killed while this runs
        return arith_teacher(body)

    teacher.handler = slow_third
    client = teacher_client(teacher)
    task = asyncio.create_task(
        generate(
            load_questions(questions_file), out, model=client, executor=local_executor,
            config=cfg(concurrency=1),
        )
    )  # fmt: skip
    for _ in range(600):
        await asyncio.sleep(0.05)
        if out.is_file() and len(read_jsonl(out)) == 2:
            break
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await client.aclose()
    assert [r["id"] for r in read_jsonl(out)] == ["q0", "q1"]
    with out.open("a") as f:
        f.write('{"id": "q2", "status": "o')  # a record cut by a hard kill

    teacher.reset()
    teacher.handler = arith_teacher
    summary = await run(teacher, questions_file, out, local_executor)
    assert summary["skipped_done"] == 2 and summary["generated"] == 2
    assert {question_of(b) for b in teacher.chat_requests} == {"What is 99 + 1?", "What is 7 * 8?"}
    lines = out.read_text().splitlines()
    with pytest.raises(json.JSONDecodeError):
        json.loads(lines[2])  # the cut line stays, alone on its line; readers skip it
    ids = [r["id"] for r in map(json.loads, lines[:2] + lines[3:])]
    assert sorted(ids) == ["q0", "q1", "q2", "q3"]

    # nothing left: a third run does nothing
    again = await run(teacher, questions_file, out, local_executor)
    assert again["generated"] == 0 and again["skipped_done"] == 4


async def test_resume_retries_failed_runs_unless_told_not_to(
    teacher: Any, questions_file: Path, tmp_path: Path, local_executor: SandboxExecutor
) -> None:
    out = tmp_path / "gen.jsonl"
    teacher.handler = lambda b: (
        Error(400) if question_of(b) == "What is 7 * 8?" else arith_teacher(b)
    )
    first = await run(teacher, questions_file, out, local_executor)
    assert first["errors"] == 1
    no_retry = await run(teacher, questions_file, out, local_executor, retry_errors=False)
    assert no_retry["generated"] == 0
    teacher.handler = arith_teacher
    retry = await run(teacher, questions_file, out, local_executor)
    assert retry["generated"] == 1 and retry["succeeded"] == 1
    last = [r for r in read_jsonl(out) if r["id"] == "q3"]
    assert [r["status"] for r in last] == ["error", "ok"]  # append-only: history kept
    with pytest.raises(GenerateError, match="another --out"):
        await run(teacher, questions_file, out, local_executor, mode="cot")


def test_cli_generate(
    teacher: Any, questions_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    out = tmp_path / "gen.jsonl"
    argv = [
        "generate", "--questions", str(questions_file), "--out", str(out),
        "--model-url", teacher.url, "--model", teacher.model, "--executor", "local",
        "--no-search", "--no-progress", "-j", "2", "--first-thought-prefix",
    ]  # fmt: skip
    assert cli_main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["ok"] is True and summary["generated"] == 4 and summary["correct"] == 3
    assert all(r["ftp"] for r in read_jsonl(out))

    # bad input: clear message, exit 2, JSON summary still printed
    assert (
        cli_main(["generate", "--questions", str(tmp_path / "nope.jsonl"), "--out", str(out)]) == 2
    )
    captured = capsys.readouterr()
    assert "does not exist" in captured.err and json.loads(captured.out)["ok"] is False

    # unreachable teacher: every run fails -> exit 3 with the reason
    monkeypatch.setenv("DISTILLERY_MODEL_RETRIES", "0")
    argv = [
        "generate", "--questions", str(questions_file), "--out", str(tmp_path / "x.jsonl"),
        "--model-url", "http://127.0.0.1:9/v1", "--model", "m", "--executor", "local",
        "--no-search", "--no-progress",
    ]  # fmt: skip
    assert cli_main(argv) == 3
    captured = capsys.readouterr()
    assert "every run failed" in captured.err
    assert json.loads(captured.out.strip().splitlines()[-1])["summary"]["errors"] == 4
