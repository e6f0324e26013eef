"""The agent loop and SAG over real HTTP (scripted server) on the real sandbox, unjailed."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest

from agent.agent import AgentConfig, run_agent
from agent.observation import render_error
from agent.openai_client import OpenAIChatClient
from agent.parsing import parse_action
from agent.prompts import FINAL_ANSWER_REQUEST
from agent.trajectory import Step, Trajectory
from sandbox.executor import SandboxExecutor
from sandbox.procs import is_alive
from tests.helpers.scripted_server import Error, Reply, ScriptedServer
from tests.helpers.unjailed import unjailed_config
from tests.sandbox.util import wait_until


def act(code: str, thought: str = "Next step.") -> str:
    """A well-formed reply as the model writes it (the server cuts at <end_code>)."""
    return f"Thought: {thought}\nCode:\n```py\n{code}\n```<end_code>"


PROSE = "I think the answer is probably 12."


@pytest.fixture
async def model(scripted_server: ScriptedServer) -> AsyncIterator[OpenAIChatClient]:
    client = OpenAIChatClient(scripted_server.url, scripted_server.model, retries=0)
    yield client
    await client.aclose()


@pytest.fixture
async def executor() -> AsyncIterator[SandboxExecutor]:
    ex = SandboxExecutor(unjailed_config(step_timeout_s=2.0))
    yield ex
    await ex.aclose()


class Search:
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def __call__(self, query: str) -> str:
        self.calls.append(query)
        await asyncio.sleep(0.01)
        return f'\nRetrieved documents:\n\n===== Document 1, similarity: 0.9 =====\n"{query}"\nx\n'


async def solve(model: OpenAIChatClient, executor: SandboxExecutor, **kw: Any) -> Trajectory:
    tools = kw.pop("tools", {})
    config = kw.pop("config", AgentConfig(samples=4, max_steps=4, seed=3, policy="first"))
    return await run_agent("What is x?", model=model, executor=executor, tools=tools,
                           config=config, **kw)  # fmt: skip


async def test_first_valid_candidate_is_kept(
    scripted_server: ScriptedServer, model: OpenAIChatClient, executor: SandboxExecutor
) -> None:
    srv = scripted_server
    srv.script(
        [PROSE, act("x = 1 / 0"), act("x = 6 * 7\nprint('x =', x)", "Compute."), act("x = 0")],
        [act("final_answer(x)")] * 4,
    )
    steps: list[Step] = []

    async def on_step(step: Step) -> None:
        steps.append(step)

    traj = await solve(model, executor, on_step=on_step)
    assert traj.finish_reason == "answer" and traj.answer == 42
    assert [s.number for s in steps] == [1, 2] and steps == traj.steps
    s1 = traj.steps[0]
    assert s1.chosen == 2
    c = s1.candidates
    assert c[0].parse_error and "no code block" in c[0].parse_error and c[0].execution is None
    assert c[1].execution is not None and c[1].execution.error_kind == "exception"
    assert c[2].valid and c[3].valid and c[2].thought == "Compute."
    assert s1.observation == (
        "Call id: call_1\nObservation:\nExecution logs:\nx = 42\n"
        "Last output from code snippet:\nNone"
    )
    # the request: one call per step with n=N, the protocol stops, the seed
    body = srv.requests[0]
    assert body["n"] == 4 and body["stop"] == ["<end_code>", "Observation:"] and body["seed"] == 3
    assert len(srv.requests) == 2
    # the transcript: system, task, then the kept turn and its observation
    roles = [m["role"] for m in traj.messages]
    assert roles == ["system", "user", "assistant", "user", "assistant"]
    assert traj.messages[2]["content"] == c[2].text
    assert traj.messages[2]["content"].endswith("```<end_code>")
    assert srv.requests[1]["messages"] == traj.messages[:4]
    assert traj.usage.completion_tokens > 0
    assert traj.usage.total_tokens == sum(s.usage.total_tokens for s in traj.steps)


async def test_rejected_candidates_leave_no_trace(
    scripted_server: ScriptedServer, model: OpenAIChatClient, executor: SandboxExecutor
) -> None:
    scripted_server.script(
        [act("items = []")] * 4,
        [
            act("items.append('raised')\nw = 1\n1 / 0"),
            act("items.append('kept')"),
            act("items.append('rejected')\nq = 3"),
            act("items.clear()"),
        ],
        [act("final_answer([items, 'w' in globals(), 'q' in globals()])")] * 4,
    )
    traj = await solve(model, executor)
    assert traj.steps[1].chosen == 1
    assert traj.answer == [["kept"], False, False]


async def test_no_valid_candidate_shows_the_first_error(
    scripted_server: ScriptedServer, model: OpenAIChatClient, executor: SandboxExecutor
) -> None:
    scripted_server.script(
        [act("n = 1")] * 4,
        [PROSE, act("n = 2\nundefined_name"), act("n = 3\n1 / 0"), "```py\n\n```"],
        [act("n = 4\nraise KeyError('k')"), PROSE, PROSE, PROSE],
        [act("final_answer(n)")] * 4,
    )
    traj = await solve(model, executor)
    s2, s3 = traj.steps[1], traj.steps[2]
    assert s2.chosen is None
    assert s2.observation == render_error(2, s2.candidates[0].parse_error or "")
    assert "Thought: <your reasoning>\nCode:\n```py" in s2.observation
    assert traj.messages[4]["content"] == PROSE  # candidate 0's text stays in the transcript
    assert s3.chosen is None
    assert s3.observation.startswith("Call id: call_3\nError:\nTraceback (most recent call last)")
    assert "KeyError: 'k'" in s3.observation
    assert traj.answer == 1  # neither failed step changed the state


async def test_majority_policy(
    scripted_server: ScriptedServer, model: OpenAIChatClient, executor: SandboxExecutor
) -> None:
    scripted_server.script(
        [
            act("a = 3\nprint(a)"),
            act("a = 4\nprint(a)"),
            act("a = 4\nprint(4)"),
            act("1/0"),
            act("a = 4\nprint(a)"),
        ],  # fmt: skip
        # a tie (2 x "5", 2 x "6"): the group whose first member comes first wins
        [act("b = 6\nb"), act("b = 5\nb"), act("b = 5\nb"), act("b = 6\nb"), PROSE],
        [act("final_answer(a * 10 + b)")] * 5,
    )
    config = AgentConfig(samples=5, max_steps=3, policy="majority")
    traj = await solve(model, executor, config=config)
    assert traj.steps[0].chosen == 1
    assert traj.steps[1].chosen == 0
    assert traj.answer == 46
    # the same replies under 'first' keep candidate 0
    scripted_server.script(
        [act("a = 3\nprint(a)")] + [act("a = 4\nprint(a)")] * 4, [act("final_answer(a)")] * 5
    )
    traj = await solve(model, executor, config=AgentConfig(samples=5, policy="first"))
    assert traj.answer == 3


async def test_max_steps_then_final_answer_call(
    scripted_server: ScriptedServer, model: OpenAIChatClient, executor: SandboxExecutor
) -> None:
    srv = scripted_server
    srv.script(
        [act("total = 10")] * 2,
        [act("total += 5\nprint(total)")] * 2,
        [act("final_answer(total * 2)", "All steps used.")],
    )
    traj = await solve(model, executor, config=AgentConfig(samples=2, max_steps=2))
    assert traj.finish_reason == "max_steps" and traj.answer == 30
    assert [s.kind for s in traj.steps] == ["action", "action", "final_answer_call"]
    last = srv.requests[-1]
    assert last["n"] == 1 and last["messages"][-1]["content"] == FINAL_ANSWER_REQUEST
    assert traj.messages[-2]["content"] == FINAL_ANSWER_REQUEST
    assert traj.messages[-1]["role"] == "assistant"
    # a final reply in prose: the answer it states (agent.final_answer)
    srv.script([act("total = 1")] * 2, ["The answer is 12."])
    traj = await solve(model, executor, config=AgentConfig(samples=2, max_steps=1))
    assert traj.finish_reason == "max_steps" and traj.answer == "12"
    assert traj.answer_source == "stated"
    assert traj.steps[-1].candidates[0].parse_error


async def test_model_errors_end_the_run(
    scripted_server: ScriptedServer, model: OpenAIChatClient, executor: SandboxExecutor
) -> None:
    scripted_server.script([act("x = 1")] * 4, Error(400, "prompt is too long"))
    traj = await solve(model, executor)
    assert traj.finish_reason == "error" and traj.error_type == "ModelRequestError"
    assert "prompt is too long" in (traj.error or "")
    assert len(traj.steps) == 1 and traj.answer is None
    # an unreachable server
    down = OpenAIChatClient("http://127.0.0.1:9", "m", retries=0)
    traj = await solve(down, executor)
    await down.aclose()
    assert traj.finish_reason == "error" and traj.error_type == "ModelUnavailable"
    assert not executor._sessions  # the session was closed


async def test_timeout(
    scripted_server: ScriptedServer, model: OpenAIChatClient, executor: SandboxExecutor
) -> None:
    # The second reply would take a minute; the run's 5 s limit must cut it (a busy machine
    # may even spend the 5 s before step 1 is done: the limit holds either way).
    scripted_server.script([act("x = 1")] * 2, Reply([act("x = 2")] * 2, delay_s=60))
    config = AgentConfig(samples=2, timeout_s=5)
    traj = await solve(model, executor, config=config)
    assert traj.finish_reason == "timeout" and traj.error_type == "TimeoutError"
    assert len(traj.steps) <= 1 and traj.total_s < 45
    assert not executor._sessions


async def test_cancellation_closes_the_session(
    scripted_server: ScriptedServer, model: OpenAIChatClient, executor: SandboxExecutor
) -> None:
    scripted_server.script([act("x = 1")] * 4, Reply([act("x = 2")] * 4, delay_s=5))
    task = asyncio.create_task(solve(model, executor))
    async with asyncio.timeout(30):
        while len(scripted_server.requests) < 2:
            await asyncio.sleep(0.02)
    workers = [s.worker for s in executor._sessions]
    assert workers and all(w is not None for w in workers)
    pgids = [w.popen.pid for w in workers if w is not None]
    pids = [p for w in workers if w is not None for p in w.process_ids()]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not executor._sessions
    assert await wait_until(lambda: not any(is_alive(p) for p in pids))
    for pgid in pgids:
        with pytest.raises(ProcessLookupError):
            os.killpg(pgid, 0)


async def test_tools_are_proxied_once_per_step(
    scripted_server: ScriptedServer, model: OpenAIChatClient, executor: SandboxExecutor
) -> None:
    search = Search()
    code = "r = web_search('Eiffel Tower')\nprint(r)"
    scripted_server.script(
        [act(code), act(code), act("r = web_search('Eiffel Tower')\n1/0")],
        [act("print(web_search('Eiffel Tower'))\nfinal_answer(len(r))")] * 3,
    )
    config = AgentConfig(samples=3)
    traj = await solve(model, executor, tools={"web_search": search}, config=config)
    assert search.calls == ["Eiffel Tower", "Eiffel Tower"]  # once per step, not per candidate
    first = traj.steps[0].candidates
    assert sum(not c.execution.tool_calls[0].cached for c in first if c.execution) == 1
    assert "Retrieved documents:" in traj.steps[0].observation
    assert "web_search(query: str) -> str" in traj.messages[0]["content"]
    assert traj.answer == len(await Search()("Eiffel Tower"))


async def test_thought_prefix_is_continued(
    scripted_server: ScriptedServer, model: OpenAIChatClient, executor: SandboxExecutor
) -> None:
    srv = scripted_server
    srv.script(
        [" so x is 5.\nCode:\n```py\nx = 5\n```<end_code>"] * 2,
        [act("final_answer(x)")] * 2,
    )
    traj = await solve(model, executor, thought_prefix="Five is x", config=AgentConfig(samples=2))
    body = srv.requests[0]
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    assert body["messages"][-1] == {"role": "assistant", "content": "Thought: Five is x"}
    assert "continue_final_message" not in srv.requests[1]
    kept = traj.steps[0].candidates[0]
    assert kept.text == "Thought: Five is x so x is 5.\nCode:\n```py\nx = 5\n```<end_code>"
    assert kept.thought == "Five is x so x is 5."
    assert traj.steps[0].request.continue_final_message
    assert traj.messages[2] == {"role": "assistant", "content": kept.text}
    assert traj.answer == 5


async def test_trajectory_json_round_trip(
    scripted_server: ScriptedServer, model: OpenAIChatClient, executor: SandboxExecutor
) -> None:
    scripted_server.script(
        [PROSE, act("y = 2\n1/0"), act("y = 2\nprint(y)"), act("y = 3")],
        [act("final_answer({'y': y})")] * 4,
    )
    traj = await solve(model, executor, tools={"web_search": Search()}, run_id="run-fixed")
    assert traj.id == "run-fixed" and traj.answer == {"y": 2}
    back = Trajectory.from_json(traj.to_json())
    assert back.to_dict() == traj.to_dict()
    d = traj.to_dict()
    assert d["steps"][0]["candidates"][2]["valid"] is True
    assert d["steps"][0]["candidates"][0]["valid"] is False
    assert d["config"]["samples"] == 4 and d["usage"]["total_tokens"] > 0
    # every stored candidate text parses back to the same action (training data is clean)
    for step in back.steps:
        for c in step.candidates:
            if c.code is not None:
                assert parse_action(c.text).code == c.code


async def test_bad_input_raises(model: OpenAIChatClient, executor: SandboxExecutor) -> None:
    with pytest.raises(ValueError, match="empty"):
        await run_agent(" ", model=model, executor=executor, tools={})
    with pytest.raises(ValueError, match="samples must be >= 1"):
        await run_agent(
            "q", model=model, executor=executor, tools={}, config=AgentConfig(samples=0)
        )
    with pytest.raises(ValueError, match="neither a built-in prompt"):
        await run_agent(
            "q", model=model, executor=executor, tools={}, config=AgentConfig(prompt="/nope.md")
        )


async def test_candidates_that_redefine_a_tool_are_rejected(
    scripted_server: ScriptedServer, model: OpenAIChatClient, executor: SandboxExecutor
) -> None:
    # Seen with Qwen2.5-0.5B: it wrote its own `def final_answer(...)`, which would shadow
    # the tool so the run could never end. Such a candidate must lose to a valid one.
    shadow = act("def final_answer(a):\n    print(a)\nx = 5")
    shadow_search = act("web_search = lambda q: 'made up'\nx = 6")
    scripted_server.script(
        [shadow, shadow_search, act("x = 7")],
        [act("final_answer(x)")] * 3,
    )
    traj = await solve(
        model, executor, tools={"web_search": Search()}, config=AgentConfig(samples=3, seed=1)
    )
    assert traj.finish_reason == "answer" and traj.answer == 7
    c = traj.steps[0].candidates
    assert c[0].parse_error and "`final_answer`" in c[0].parse_error and c[0].execution is None
    assert c[1].parse_error and "`web_search`" in c[1].parse_error
    assert traj.steps[0].chosen == 2


async def test_a_resolved_profile_is_used_as_given_and_never_reloaded(
    scripted_server: ScriptedServer, model: OpenAIChatClient, executor: SandboxExecutor,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A runtime resolves the protocol profile once; runs receive the value: nothing loads
    a profile per run or per step, and the value's texts are what the model sees."""
    from dataclasses import replace

    import agent.agent as agent_module
    from agent.protocol import default_protocol

    profile = replace(default_protocol(), final_answer_request="Answer now, please.")

    def no_loading(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("the profile was loaded during the run")

    monkeypatch.setattr(agent_module, "load_protocol", no_loading)
    scripted_server.script(Reply(act("x = 1")), Reply(act("final_answer(x)")))
    config = AgentConfig(samples=1, max_steps=1, policy="first")
    traj = await run_agent("What is x?", model=model, executor=executor, tools={},
                           config=config, protocol=profile)
    assert traj.finish_reason == "max_steps" and traj.answer == 1
    asked = scripted_server.chat_requests[-1]
    assert asked["messages"][-1]["content"] == "Answer now, please."
    assert asked["stop"] == list(profile.stop)
