"""Fixtures for the training tests: a scripted arithmetic teacher behind the real-HTTP
scripted server, question files, and the sandbox in unjailed mode (what
DISTILLERY_EXECUTOR=local builds; the training code is executor-agnostic and the jail has
its own tests)."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from sandbox.executor import SandboxExecutor
from tests.helpers.unjailed import unjailed_config

# question -> (python expression, gold answer). The teacher computes the expression in
# step 1 and calls final_answer(result) in step 2; the last gold is deliberately wrong.
ARITH = {
    "What is 17 * 23?": ("17 * 23", "391"),
    "What is 2 ** 10?": ("2 ** 10", "1024"),
    "What is 99 + 1?": ("99 + 1", "100"),
    "What is 7 * 8?": ("7 * 8", "57"),
}


def write_questions(path: Path, questions: dict[str, tuple[str, str]] = ARITH) -> Path:
    rows = [
        {"id": f"q{i}", "question": q, "answer": gold, "task": "math"}
        for i, (q, (_, gold)) in enumerate(questions.items())
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def question_of(body: dict[str, Any]) -> str:
    """The question in an agent request (task message) or a CoT request (single user turn)."""
    first_user = next(m["content"] for m in body["messages"] if m["role"] == "user")
    for q in ARITH:
        if q in first_user:
            return q
    raise AssertionError(f"unknown question in {first_user[:200]!r}")


def is_cot_request(body: dict[str, Any]) -> bool:
    return body["messages"][0]["role"] == "user" and len(body["messages"]) == 1


def cot_reply(q: str) -> str:
    expr, _ = ARITH[q]
    value = eval(expr)  # noqa: S307 - our own constant expressions
    return (
        f"We need to evaluate {expr}.\n\nEvaluating it gives {value}.\n\n"
        f"The answer is \\boxed{{{value}}}."
    )


def agent_reply(body: dict[str, Any]) -> str:
    """Step 1: compute and print; step 2: final_answer. Continues a prefilled thought."""
    q = question_of(body)
    expr, _ = ARITH[q]
    msgs = body["messages"]
    prefilled = body.get("continue_final_message") and msgs[-1]["role"] == "assistant"
    done_steps = sum(1 for m in msgs if m["role"] == "assistant") - (1 if prefilled else 0)
    if done_steps == 0:
        code = f"result = {expr}\nprint(result)"
        thought = "I compute it with Python."
    else:
        code = "final_answer(result)"
        m = re.search(r"Execution logs:\n(.*?)\n", msgs[-1]["content"])
        thought = f"The result is {m.group(1) if m else '?'}."
    if prefilled:
        return f"Then: {thought}\nCode:\n```py\n{code}\n```<end_code>"
    return f"Thought: {thought}\nCode:\n```py\n{code}\n```<end_code>"


def arith_teacher(body: dict[str, Any]) -> str:
    return cot_reply(question_of(body)) if is_cot_request(body) else agent_reply(body)


@pytest.fixture
def teacher(scripted_server: Any) -> Any:
    """The session's scripted server answering as the arithmetic teacher."""
    scripted_server.handler = arith_teacher
    return scripted_server


@pytest.fixture
def questions_file(tmp_path: Path) -> Path:
    return write_questions(tmp_path / "questions.jsonl")


@pytest.fixture
async def local_executor() -> AsyncIterator[SandboxExecutor]:
    ex = SandboxExecutor(unjailed_config(step_timeout_s=20.0))
    try:
        yield ex
    finally:
        await ex.aclose()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


Handler = Callable[[dict[str, Any]], Any]


SHORT_PROMPT = "Solve the task with Python code.\n"


def short_conversations(path: Path, prompt_file: Path, n: int = 2) -> Path:
    """Agent conversations like build-data writes, with a one-line system prompt (short
    sequences keep CPU training tests fast; the default prompt is covered elsewhere)."""
    from agent.prompts import initial_messages

    prompt_file.write_text(SHORT_PROMPT)
    rows = []
    for q, (expr, _) in list(ARITH.items())[:n]:
        value = eval(expr)  # noqa: S307 - our own constant expressions
        msgs = initial_messages(q, prompt=str(prompt_file), tool_names=[])
        step1 = f"Thought: Compute.\nCode:\n```py\nresult = {expr}\nprint(result)\n```<end_code>"
        obs = (
            f"Call id: call_1\nObservation:\nExecution logs:\n{value}\n"
            "Last output from code snippet:\nNone"
        )
        step2 = "Thought: Done.\nCode:\n```py\nfinal_answer(result)\n```<end_code>"
        msgs += [
            {"role": "assistant", "content": step1},
            {"role": "user", "content": obs},
            {"role": "assistant", "content": step2},
        ]
        rows.append({"id": q, "kind": "agent", "messages": msgs})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def lora_settings(model: Path, data: Path, out: Path, **kw: Any) -> Any:
    """Small LoRA settings for fast CPU tests (4 steps, gradient accumulation 2)."""
    from training.sft import SFTSettings

    base: dict[str, Any] = dict(
        model=model, data=[data], output_dir=out, lora_r=8, lora_alpha=16,
        learning_rate=1e-3, max_steps=4, batch_size=1, effective_batch=2, save_steps=2,
        progress=False,
    )  # fmt: skip
    base.update(kw)
    return SFTSettings(**base)


@pytest.fixture(scope="session")
def sft_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("sftdata")
    return short_conversations(d / "train.jsonl", d / "prompt.md")


@pytest.fixture(scope="session")
def lora_run(
    tiny_model_dir: Path, sft_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A finished 4-step LoRA run on the tiny model (shared by the sft and export tests)."""
    from training.sft import train_sft

    out = tmp_path_factory.mktemp("lora") / "run"
    train_sft(lora_settings(tiny_model_dir, sft_data, out))
    return out
