"""build-data --repair: correct runs that ended through the final-answer call (stuck or at the
step limit) are kept without their repeated steps and the final-answer prompt; everything
else that the plain filter drops stays dropped. Trajectories come from real agent runs against
a scripted teacher (an OpenAI-compatible HTTP server) and the unjailed sandbox."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.agent import AgentConfig
from agent.openai_client import OpenAIChatClient
from agent.protocol import FINAL_ANSWER_REQUEST
from distillery.cli import main as cli_main
from sandbox.executor import SandboxExecutor
from tests.helpers.unjailed import unjailed_config
from tests.training.conftest import read_jsonl
from training.build_data import build_data
from training.generate import GenerateConfig, generate
from training.questions import load_questions


def reply(thought: str, code: str) -> str:
    return f"Thought: {thought}\nCode:\n```py\n{code}\n```<end_code>"


COMPUTE = reply("Compute it.", "x = 58315 - 64029 * -82822\nprint(x)")
FINAL = reply("That is the result.", "final_answer(x)")

# question -> (gold, replies per step, reply to the final-answer call)
SCRIPTS: dict[str, tuple[str, list[str], str]] = {
    # prints the answer, then repeats the step: stuck, then answers correctly
    "Stuck right: 58315 - 64029 * -82822?": ("5303068153", [COMPUTE], FINAL),
    # stuck, and the final reply is wrong
    "Stuck wrong: 1 + 1?": ("2", [reply("Compute.", "y = 1 + 2\nprint(y)")],
                            reply("Done.", "final_answer(y)")),
    # stuck, and the final reply states the answer in prose (no final_answer call)
    "Stuck prose: 2 + 5?": ("7", [reply("Compute.", "z = 2 + 5\nprint(z)")],
                            "The answer is 7."),
    # a different action every step until the limit, then a correct final_answer
    "Limit right: 3 * 4?": ("12", [reply("Look.", f"w = 3 * 4 + {k} - {k}\nprint({k})")
                                   for k in range(10)], reply("Done.", "final_answer(w)")),
}  # fmt: skip


def teacher(body: dict[str, Any]) -> str:
    task = body["messages"][1]["content"]
    q = next(q for q in SCRIPTS if q in task)
    _, steps, final = SCRIPTS[q]
    if body["messages"][-1]["content"] == FINAL_ANSWER_REQUEST:
        return final
    n = sum(1 for m in body["messages"] if m["role"] == "assistant")
    return steps[min(n, len(steps) - 1)]


@pytest.fixture
async def records(scripted_server: Any, tmp_path: Path) -> Path:
    qfile = tmp_path / "q.jsonl"
    qfile.write_text("".join(
        json.dumps({"id": f"r{i}", "question": q, "answer": gold, "task": "math"}) + "\n"
        for i, (q, (gold, _, _)) in enumerate(SCRIPTS.items())
    ))  # fmt: skip
    scripted_server.handler = teacher
    out = tmp_path / "gen.jsonl"
    client = OpenAIChatClient(scripted_server.url, scripted_server.model, retries=0)
    executor = SandboxExecutor(unjailed_config(step_timeout_s=20))
    try:
        await generate(
            load_questions(qfile), out, model=client, executor=executor,
            config=GenerateConfig(
                agent=AgentConfig(prompt="teacher", samples=1, max_steps=3), progress=False
            ),
        )  # fmt: skip
    finally:
        await client.aclose()
        await executor.aclose()
    return out


def test_repair_keeps_only_correct_final_answer_endings(records: Path, tmp_path: Path) -> None:
    recs = {r["question"]: r for r in read_jsonl(records)}
    finish = {q: r["trajectory"]["finish_reason"] for q, r in recs.items()}
    assert finish == {
        "Stuck right: 58315 - 64029 * -82822?": "stuck",
        "Stuck wrong: 1 + 1?": "stuck",
        "Stuck prose: 2 + 5?": "stuck",
        "Limit right: 3 * 4?": "max_steps",
    }
    assert recs["Stuck prose: 2 + 5?"]["correct"]  # right, but not through final_answer

    plain = build_data([records], tmp_path / "plain.jsonl")
    assert plain["kept"] == 0
    assert plain["dropped"] == {"finish_stuck": 3, "finish_max_steps": 1}

    out = tmp_path / "repaired.jsonl"
    summary = build_data([records], out, repair=True)
    assert summary["kept"] == 2 and summary["repaired"] == {"stuck": 1, "max_steps": 1}
    assert summary["dropped"] == {"finish_stuck": 2}  # the wrong one and the prose one
    examples = {e["question"]: e for e in read_jsonl(out)}
    assert set(examples) == {"Stuck right: 58315 - 64029 * -82822?", "Limit right: 3 * 4?"}

    stuck = examples["Stuck right: 58315 - 64029 * -82822?"]
    traj = recs["Stuck right: 58315 - 64029 * -82822?"]["trajectory"]
    # the recorded run: compute, the repeat (flagged), the final-answer call
    assert [(s["kind"], s["stuck"]) for s in traj["steps"]] == [
        ("action", False), ("action", True), ("final_answer_call", False)
    ]  # fmt: skip
    msgs = stuck["messages"]
    roles = [m["role"] for m in msgs]
    assert roles == ["system", "user", "assistant", "user", "assistant"]
    assert msgs[2] == traj["messages"][2] and msgs[3] == traj["messages"][3]  # verbatim
    assert msgs[4] == traj["messages"][-1] and "final_answer(x)" in msgs[4]["content"]
    assert "5303068153" in msgs[3]["content"]  # the observation the answer came from
    assert all(FINAL_ANSWER_REQUEST not in m["content"] for m in msgs)
    assert stuck["steps"] == 2

    limit = examples["Limit right: 3 * 4?"]["messages"]
    # all three (different) steps stay, then the final reply; no final-answer prompt
    assert [m["role"] for m in limit[2:]] == ["assistant", "user"] * 3 + ["assistant"]
    assert all(FINAL_ANSWER_REQUEST not in m["content"] for m in limit)


def test_cli_repair_flag(records: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli.jsonl"
    rc = cli_main(["train", "build-data", "-i", str(records), "--out", str(out), "--repair"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["kept"] == 2 and summary["repaired"] == {"stuck": 1, "max_steps": 1}
    assert cli_main(["train", "build-data", "-i", str(records), "--out", str(out)]) != 0
