"""The grounding and leak checks (training/grounding.py) and hinted runs through generate and
build-data: a scripted teacher behind the real-HTTP scripted server, the sandbox unjailed.

web_search is a scripted function here (its passages are chosen per query): the checks read
only the records, and retrieval has its own tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.agent import AgentConfig
from agent.openai_client import OpenAIChatClient
from agent.prompts import task_message
from sandbox.executor import SandboxExecutor
from tests.helpers.unjailed import unjailed_config
from tests.training.conftest import read_jsonl
from training.build_data import build_data
from training.generate import GenerateConfig, generate
from training.questions import Question


def reply(thought: str, code: str) -> str:
    return f"Thought: {thought}\nCode:\n```py\n{code}\n```<end_code>"


def search_then_answer(query: str, answer: str, thought: str = "Look it up.") -> list[str]:
    return [reply(thought, f'print(web_search("{query}"))'),
            reply("The result says it.", f'final_answer("{answer}")')]  # fmt: skip


PASSAGES = {
    "Ada": "Ada was born in London.",
    "Cy": "Cy was a poet.",
    "Di": "Di lives in NYC.",
    "Ed": "Ed is a poet.",
    "Gus": "Gus was born in Oslo.",
    "Hal": "Hal was born in Lima.",
    "Animorphs": "Animorphs is a series by Ida.",
    "Jo": "Jo was born in Kyiv.",
    "Kim": "Kim was born in 1900.",
}

# question -> (gold, replies, hinted); every run answers correctly
SCRIPTS: dict[str, tuple[Any, list[str], bool]] = {
    "Grounded: where was Ada born?": ("London", search_then_answer("Ada", "London"), False),
    "Unsearched: where was Bo born?": ("Paris", [reply("I know.", 'final_answer("Paris")')], False),
    "Ungrounded: where was Cy born?": ("Rome", search_then_answer("Cy", "Rome"), False),
    "Alias: where does Di live?": (["New York City", "NYC"],
                                   search_then_answer("Di", "New York City"), False),
    "Yes or no: is Ed a poet?": ("yes", search_then_answer("Ed", "yes"), False),
    "Same step: where was Gus born?": ("Oslo", [
        reply("Search and answer.", 'r = web_search("Gus")\nfinal_answer("Oslo")')], False),
    "Hinted clean: where was Hal born?": ("Lima", search_then_answer("Hal", "Lima"), True),
    "Hinted leak: what series did Ida write?": (
        "Animorphs", search_then_answer("Animorphs", "Animorphs"), True),
    "Hinted mention: where was Jo born?": (
        "Kyiv", search_then_answer("Jo", "Kyiv", thought="The hint says Kyiv; confirm it."), True),
    "Hinted comparison: who is older, Kim or Lee?": (
        "Kim", search_then_answer("Kim", "Kim"), True),
}  # fmt: skip
HINT = "(For you alone: the expected answer is given.)"


async def scripted_search(query: str) -> str:
    text = PASSAGES.get(query, "Nothing relevant.")
    return f'\nRetrieved documents:\n\n===== Document 1 =====\n"{query}"\n{text}\n'


@pytest.fixture
async def records(scripted_server: Any, tmp_path: Path) -> list[Path]:
    seen_tasks: list[str] = []

    def teacher(body: dict[str, Any]) -> str:
        task = body["messages"][1]["content"]
        seen_tasks.append(task)
        q = next(q for q in SCRIPTS if q in task)
        steps = SCRIPTS[q][1]
        n = sum(1 for m in body["messages"] if m["role"] == "assistant")
        return steps[min(n, len(steps) - 1)]

    scripted_server.handler = teacher
    client = OpenAIChatClient(scripted_server.url, scripted_server.model, retries=0)
    executor = SandboxExecutor(unjailed_config(step_timeout_s=20))
    files = [tmp_path / "attempt-0.jsonl", tmp_path / "hinted-0.jsonl"]
    try:
        for path, hinted in zip(files, (False, True), strict=True):
            qs = [Question(id=f"q{i}", question=q, answer=gold, task="factual",
                           meta={"hint": HINT} if hinted else {})
                  for i, (q, (gold, _, h)) in enumerate(SCRIPTS.items())
                  if h == hinted]  # fmt: skip
            await generate(
                qs, path, model=client, executor=executor,
                tools_factory=lambda: {"web_search": scripted_search},
                config=GenerateConfig(agent=AgentConfig(prompt="teacher", samples=1,
                                                        max_steps=3), progress=False),
            )  # fmt: skip
    finally:
        await client.aclose()
        await executor.aclose()
    hinted_tasks = [t for t in seen_tasks if "Hinted" in t]
    assert hinted_tasks and all(HINT in t for t in hinted_tasks), "the teacher saw the hint"
    assert not any(HINT in t for t in seen_tasks if "Hinted" not in t)
    return files


def test_hinted_runs_are_recorded_with_the_question_alone(records: list[Path]) -> None:
    recs = read_jsonl(records[1])
    assert recs and all(r["correct"] for r in recs)
    for r in recs:
        assert r["hint"] == HINT and HINT not in r["question"]
        assert HINT in r["trajectory"]["question"]  # what the teacher saw stays on record


def test_without_checks_every_correct_run_is_kept_and_hints_leave_no_trace(
    records: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "all.jsonl"
    summary = build_data(records, out)
    assert summary["kept"] == len(SCRIPTS) and summary["hinted"] == 4
    assert summary["checks"] == {}
    for ex in read_jsonl(out):
        assert ex["hinted"] == ex["question"].startswith("Hinted")
        assert ex["messages"][1] == {"role": "user", "content": task_message(ex["question"])}
        assert not any(HINT in str(m["content"]) for m in ex["messages"])


def test_the_checks_drop_ungrounded_and_leaking_runs_and_count_them(
    records: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "checked.jsonl"
    summary = build_data(records, out, grounded=True, leak_check=True)
    kept = {ex["question"] for ex in read_jsonl(out)}
    assert kept == {
        "Grounded: where was Ada born?", "Alias: where does Di live?",
        "Yes or no: is Ed a poet?", "Hinted clean: where was Hal born?",
        "Hinted comparison: who is older, Kim or Lee?",
    }  # fmt: skip
    assert summary["checks"] == {
        "grounded": {"no_search": 2, "ungrounded": 1},
        "leak_check": {"answer_before_evidence": 1, "hint_mentioned": 1},
    }
    assert summary["dropped"] == {"no_search": 2, "ungrounded": 1,
                                  "answer_before_evidence": 1, "hint_mentioned": 1}  # fmt: skip
    assert summary["hinted"] == 2 and summary["kept"] == 5


def test_each_check_is_its_own_option(records: list[Path], tmp_path: Path) -> None:
    only_grounding = build_data(records, tmp_path / "g.jsonl", grounded=True)
    assert only_grounding["kept"] == len(SCRIPTS) - 3
    assert set(only_grounding["checks"]) == {"grounded"}
    only_leaks = build_data(records, tmp_path / "l.jsonl", leak_check=True)
    assert only_leaks["kept"] == len(SCRIPTS) - 2
    assert set(only_leaks["checks"]) == {"leak_check"}


def test_math_records_pass_the_grounding_check(tmp_path: Path) -> None:
    from training.grounding import grounding_drop

    rec = {"task": "math", "gold": "42"}
    traj: Any = type("T", (), {"steps": [], "finish_reason": "answer", "answer": 42})()
    assert grounding_drop(rec, traj) is None
    assert json.dumps(rec)  # untouched


def test_build_data_cli_takes_the_checks(
    records: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from distillery.cli import main as cli_main

    out = tmp_path / "cli.jsonl"
    argv = ["train", "build-data", "-i", str(records[0]), "-i", str(records[1]),
            "--out", str(out), "--grounded", "--leak-check"]  # fmt: skip
    assert cli_main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["kept"] == 5 and summary["hinted"] == 2
    assert summary["checks"]["grounded"] == {"no_search": 2, "ungrounded": 1}


def test_unique_ids_keep_the_first_input_s_example(records: list[Path], tmp_path: Path) -> None:
    # a question kept from two inputs (solved unhinted, and again by a hinted retry that an
    # older grader had made necessary) is trained on once, from the earlier input
    both = build_data([records[1], records[1]], tmp_path / "twice.jsonl", unique_ids=True)
    assert both["kept"] == 4 and both["hinted"] == 4
    assert both["dropped"] == {"duplicate_id": 4}
    assert len({ex["id"] for ex in read_jsonl(tmp_path / "twice.jsonl")}) == 4
