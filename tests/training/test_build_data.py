"""build-data: the paper's filter (correct, parsed at every step, answered; recovered
execution errors kept), rendering with the student prompt, tokenized length limits, CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.agent import AgentConfig
from agent.openai_client import OpenAIChatClient
from agent.prompts import system_prompt, task_message
from distillery.cli import main as cli_main
from sandbox.executor import SandboxExecutor
from tests.helpers.unjailed import unjailed_config
from tests.training.conftest import read_jsonl
from training.build_data import build_data, load_tokenizer, read_records
from training.generate import GenerateConfig, generate
from training.questions import load_questions


def reply(thought: str, code: str) -> str:
    return f"Thought: {thought}\nCode:\n```py\n{code}\n```<end_code>"


# question -> (gold, the teacher's reply per step)
SCRIPTS: dict[str, tuple[str, list[str]]] = {
    "Clean: what is 6 * 7?": ("42", [
        reply("Compute.", "x = 6 * 7\nprint(x)"),
        reply("Done.", "final_answer(x)"),
    ]),
    "Recovers: what is 5 + 5?": ("10", [
        reply("Compute.", "print(undefined_name)"),
        reply("Fix it.", "y = 5 + 5\nprint(y)"),
        reply("Done.", "final_answer(y)"),
    ]),
    "Parse error: what is 3 * 3?": ("9", [
        "I will just think without code.",
        reply("Compute.", "z = 3 * 3"),
        reply("Done.", "final_answer(z)"),
    ]),
    "Wrong: what is 2 + 2?": ("4", [reply("Guess.", "final_answer(5)")]),
    # a different action each step (an identical one would end the run early as stuck)
    "Never answers: what is 1 + 1?": ("2", [reply("Look.", f"print({k} + 1)") for k in range(10)]),
}  # fmt: skip


def scripted_teacher(body: dict[str, Any]) -> str:
    task = body["messages"][1]["content"]
    q = next(q for q in SCRIPTS if q in task)
    steps = SCRIPTS[q][1]
    n = sum(1 for m in body["messages"] if m["role"] == "assistant")
    return steps[min(n, len(steps) - 1)]


@pytest.fixture
async def records(scripted_server: Any, tmp_path: Path) -> Path:
    qfile = tmp_path / "q.jsonl"
    qfile.write_text(
        "".join(
            json.dumps({"id": f"s{i}", "question": q, "answer": gold, "task": "math"}) + "\n"
            for i, (q, (gold, _)) in enumerate(SCRIPTS.items())
        )
    )
    scripted_server.handler = scripted_teacher
    out = tmp_path / "gen.jsonl"
    client = OpenAIChatClient(scripted_server.url, scripted_server.model, retries=0)
    executor = SandboxExecutor(unjailed_config(step_timeout_s=20))
    try:
        await generate(
            load_questions(qfile),
            out,
            model=client,
            executor=executor,
            tools_factory=lambda: {"web_search": _no_search},
            config=GenerateConfig(
                agent=AgentConfig(prompt="teacher", samples=1, max_steps=3), progress=False
            ),
        )
    finally:
        await client.aclose()
        await executor.aclose()
    return out


async def _no_search(query: str) -> str:
    return "\nRetrieved documents:\n"


def test_filter_and_render(records: Path, tmp_path: Path) -> None:
    recs = {r["question"]: r for r in read_jsonl(records)}
    assert recs["Never answers: what is 1 + 1?"]["trajectory"]["finish_reason"] == "max_steps"

    out = tmp_path / "train.jsonl"
    summary = build_data([records], out)
    assert summary["records"] == 5 and summary["kept"] == 2
    assert summary["dropped"] == {"finish_max_steps": 1, "incorrect": 1, "parse_error": 1}
    examples = {e["question"]: e for e in read_jsonl(out)}
    assert set(examples) == {"Clean: what is 6 * 7?", "Recovers: what is 5 + 5?"}

    for q, ex in examples.items():
        traj = recs[q]["trajectory"]
        msgs = ex["messages"]
        # the student prompt (with the tools the teacher had), the protocol's task message
        assert msgs[0] == {"role": "system", "content": system_prompt("student", ["web_search"])}
        assert traj["messages"][0]["content"] != msgs[0]["content"]  # was the teacher's
        assert msgs[1] == {"role": "user", "content": task_message(q)}
        # then the teacher's turns verbatim, ending on the final-answer turn
        assert msgs[2:] == traj["messages"][2:]
        assert msgs[-1]["role"] == "assistant" and "final_answer" in msgs[-1]["content"]
        assert ex["kind"] == "agent" and ex["answer"] == SCRIPTS[q][0]
    recovered = examples["Recovers: what is 5 + 5?"]
    assert recovered["steps"] == 3
    assert "NameError" in recovered["messages"][3]["content"]  # the error observation is kept


def test_tokenized_limits_and_last_record_wins(
    records: Path, tmp_path: Path, tiny_model_dir: Path
) -> None:
    tok = load_tokenizer(tiny_model_dir)  # the SmolLM2 tokenizer and template
    full = build_data([records], tmp_path / "a.jsonl", tokenizer=tok)
    lengths = sorted(e["n_tokens"] for e in read_jsonl(tmp_path / "a.jsonl"))
    assert full["kept"] == 2 and full["tokens"]["max"] == lengths[-1]
    assert all(e["n_learned"] < e["n_tokens"] for e in read_jsonl(tmp_path / "a.jsonl"))
    cut = build_data([records], tmp_path / "b.jsonl", tokenizer=tok, max_length=lengths[-1] - 1)
    assert cut["kept"] == 1 and cut["dropped"]["too_long"] == 1

    # generate appends; the last record of an id is the one that counts
    clean = next(r for r in read_jsonl(records) if r["question"].startswith("Clean"))
    with records.open("a") as f:
        f.write(json.dumps({**clean, "status": "error", "error": "later failure"}) + "\n")
    assert len(read_records(records)) == 5
    again = build_data([records], tmp_path / "c.jsonl")
    assert again["kept"] == 1 and again["dropped"]["error"] == 1

    # regrading uses the gold answer, not the stored verdict
    wrong = next(r for r in read_jsonl(records) if r["question"].startswith("Wrong"))
    with records.open("a") as f:
        f.write(json.dumps({**wrong, "correct": True}) + "\n")
    assert build_data([records], tmp_path / "d.jsonl")["kept"] == 2
    assert build_data([records], tmp_path / "e.jsonl", regrade=True)["kept"] == 1


async def test_cot_records_become_single_turn_chats(
    teacher: Any, questions_file: Path, tmp_path: Path
) -> None:
    client = OpenAIChatClient(teacher.url, teacher.model, retries=0)
    gen = tmp_path / "cot.jsonl"
    try:
        await generate(
            load_questions(questions_file), gen, model=client,
            executor=SandboxExecutor(unjailed_config()),
            config=GenerateConfig(mode="cot", progress=False),
        )  # fmt: skip
    finally:
        await client.aclose()
    summary = build_data([gen], tmp_path / "train.jsonl")
    assert summary["kept"] == 3 and summary["dropped"] == {"incorrect": 1}
    ex = read_jsonl(tmp_path / "train.jsonl")[0]
    assert ex["kind"] == "cot" and [m["role"] for m in ex["messages"]] == ["user", "assistant"]
    assert "\\boxed{" in ex["messages"][1]["content"]


def test_cli_build_data(records: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "train.jsonl"
    rc = cli_main(["train", "build-data", "-i", str(records), "--out", str(out), "--tools", ""])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["ok"] is True and summary["kept"] == 2
    assert read_jsonl(out)[0]["messages"][0]["content"] == system_prompt("student", [])

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert cli_main(["train", "build-data", "-i", str(empty), "--out", str(tmp_path / "x")]) == 1
    assert "no record passed" in capsys.readouterr().err
    assert cli_main(["train", "build-data", "-i", str(tmp_path / "no"), "--out", str(out)]) == 1
    assert "does not exist" in capsys.readouterr().err
