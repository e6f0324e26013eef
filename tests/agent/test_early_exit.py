"""Early exit (policy 'early'), stuck detection and streamed calls, over real HTTP.

The scripted server streams each choice token by token at its own pace; the sandbox is
the real one, unjailed. Nothing here asserts wall-clock times: the order of events is
fixed by the server's schedule, and what is checked is what the server saw (the stream
closed by the client, tokens sent) and what the trajectory records.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from agent.agent import AgentConfig, run_agent
from agent.model_client import ModelUnavailable, SamplingParams
from agent.openai_client import OpenAIChatClient
from agent.prompts import FINAL_ANSWER_REQUEST
from agent.streaming import collect
from agent.trajectory import Trajectory
from sandbox.executor import SandboxExecutor
from tests.helpers.scripted_server import Reply, ScriptedServer
from tests.helpers.unjailed import unjailed_config
from tests.sandbox.util import wait_until


def act(code: str, thought: str = "Next step.") -> str:
    return f"Thought: {thought}\nCode:\n```py\n{code}\n```<end_code>"


LONG = act("x = 0\n" + "\n".join(f"y{i} = {i}  # padding padding" for i in range(300)), "Slow.")


@pytest.fixture
async def model(scripted_server: ScriptedServer) -> AsyncIterator[OpenAIChatClient]:
    client = OpenAIChatClient(scripted_server.url, scripted_server.model, retries=0)
    yield client
    await client.aclose()


@pytest.fixture
async def executor() -> AsyncIterator[SandboxExecutor]:
    ex = SandboxExecutor(unjailed_config(step_timeout_s=5.0))
    yield ex
    await ex.aclose()


async def solve(model: OpenAIChatClient, executor: SandboxExecutor, **cfg: Any) -> Trajectory:
    config = AgentConfig(**{"samples": 2, "max_steps": 4, "policy": "early", **cfg})
    return await run_agent("What is x?", model=model, executor=executor, tools={}, config=config)


async def test_step_ends_at_the_first_valid_candidate_and_closes_the_stream(
    scripted_server: ScriptedServer, model: OpenAIChatClient, executor: SandboxExecutor
) -> None:
    srv = scripted_server
    # candidate 0: ~2,000 tokens at 50 ms each (100 s); candidate 1: a dozen tokens, valid
    srv.script(
        Reply([LONG, act("x = 6 * 7\nprint(x)", "Quick.")], token_delay_s=[0.05, 0.005]),
        Reply(act("final_answer(x)"), token_delay_s=0.001),
    )
    traj = await solve(model, executor)
    assert traj.finish_reason == "answer" and traj.answer == 42
    s1 = traj.steps[0]
    assert s1.policy == "early" and s1.chosen == 1 and s1.first_valid_s is not None
    slow, quick = s1.candidates
    assert (
        quick.valid
        and quick.finish_reason == "stop"
        and quick.tokens == len(quick.text.removesuffix("<end_code>").split())
    )
    # the slow one was cut: recorded as cancelled with what it had generated so far
    assert slow.finish_reason == "cancelled" and slow.execution is None and not slow.valid
    assert slow.code is None and slow.text and LONG.startswith(slow.text)
    assert slow.tokens is not None and 0 < slow.tokens == len(slow.text.split())
    # the server saw the client close the stream before the slow choice was done
    assert await wait_until(lambda: srv.streams[0].closed_by_client, timeout=10)
    rec = srv.streams[0]
    assert not rec.finished and rec.tokens_sent[0] < rec.tokens_total[0]
    assert rec.tokens_sent[1] == rec.tokens_total[1]
    body = srv.requests[0]
    assert body["stream"] is True and body["n"] == 2 and body["return_token_ids"] is True
    assert body["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}
    # usage counts what was generated: the whole quick one and the slow one's part
    assert s1.usage.completion_tokens == slow.tokens + (quick.tokens or 0)
    assert traj.to_dict()["steps"][0]["candidates"][0]["finish_reason"] == "cancelled"
    assert Trajectory.from_json(traj.to_json()).to_dict() == traj.to_dict()


async def test_an_invalid_early_candidate_leaves_no_trace(
    scripted_server: ScriptedServer, model: OpenAIChatClient, executor: SandboxExecutor
) -> None:
    # candidate 1 finishes first but raises after changing the state; candidate 0 is kept
    scripted_server.script(
        Reply(act("items = []"), token_delay_s=0.001),
        Reply(
            [act("items.append('kept')"), act("items.append('raised')\nw = 1\n1 / 0")],
            token_delay_s=[0.03, 0.001],
        ),
        Reply(act("final_answer([items, 'w' in globals()])"), token_delay_s=0.001),
    )
    traj = await solve(model, executor, samples=2)
    s2 = traj.steps[1]
    assert s2.chosen == 0
    assert s2.candidates[1].execution is not None
    assert s2.candidates[1].execution.error_kind == "exception"
    assert traj.answer == [["kept"], False]


async def test_no_valid_candidate_waits_for_all_and_shows_candidate_0(
    scripted_server: ScriptedServer, model: OpenAIChatClient, executor: SandboxExecutor
) -> None:
    scripted_server.script(
        Reply(["No code here.", act("1 / 0")], token_delay_s=[0.01, 0.001]),
        Reply(act("final_answer(5)"), token_delay_s=0.001),
    )
    traj = await solve(model, executor)
    s1 = traj.steps[0]
    assert s1.chosen is None and [c.finish_reason for c in s1.candidates] == ["stop", "stop"]
    assert s1.candidates[0].parse_error and "no code block" in s1.observation
    assert scripted_server.streams[0].finished
    assert traj.answer == 5


async def test_stuck_run_goes_to_the_final_answer_call(
    scripted_server: ScriptedServer, model: OpenAIChatClient, executor: SandboxExecutor
) -> None:
    srv = scripted_server
    same = act("x = 2 + 3\nprint(x)")
    srv.script([same] * 2, [same] * 2, [act("final_answer(x * 10)", "Done.")])
    traj = await solve(model, executor, policy="first", max_steps=5)
    assert traj.finish_reason == "stuck" and traj.answer == 50
    assert traj.answer_source == "final_answer"
    assert [s.kind for s in traj.steps] == ["action", "action", "final_answer_call"]
    assert [s.stuck for s in traj.steps] == [False, True, False]
    assert traj.steps[1].candidates[0].repeat and not traj.steps[0].candidates[0].repeat
    assert srv.requests[-1]["n"] == 1
    assert srv.requests[-1]["messages"][-1]["content"] == FINAL_ANSWER_REQUEST
    # switched off: the same script runs to max_steps
    srv.script([same] * 2, [same] * 2, [act("final_answer(x)")])
    traj = await solve(model, executor, policy="first", max_steps=2, stuck_detection=False)
    assert traj.finish_reason == "max_steps" and not any(s.stuck for s in traj.steps)


@pytest.mark.parametrize("policy", ["first", "early", "majority"])
async def test_a_different_valid_candidate_beats_a_repeat(
    scripted_server: ScriptedServer,
    model: OpenAIChatClient,
    executor: SandboxExecutor,
    policy: str,
) -> None:
    same = act("x = 2 + 3\nprint(x)")
    scripted_server.script(
        Reply([same] * 3, token_delay_s=0.001),
        # the repeat finishes first and comes first in sampling order: both lose
        Reply([same, same, act("x = x + 1\nprint(x)")], token_delay_s=[0.001, 0.001, 0.02]),
        Reply(act("final_answer(x)"), token_delay_s=0.001),
    )
    traj = await solve(model, executor, policy=policy, samples=3)
    s2 = traj.steps[1]
    assert s2.chosen == 2 and not s2.stuck and s2.candidates[0].repeat
    assert traj.finish_reason == "answer" and traj.answer == 6


async def test_stream_retries_only_while_nothing_was_generated(
    scripted_server: ScriptedServer,
) -> None:
    srv = scripted_server
    msgs = [{"role": "user", "content": "q"}]
    # silent before the first token: a timeout, re-sent, and the second try works
    srv.script(
        Reply("one two three", token_delay_s=3.0), Reply("one two three", token_delay_s=0.001)
    )
    client = OpenAIChatClient(srv.url, srv.model, retries=2, timeout_s=0.5, backoff_s=0.01)
    try:
        completion = await collect(client.stream(msgs, SamplingParams(n=1)))
        assert completion.choices[0].text == "one two three"
        assert completion.choices[0].tokens == 3 and completion.usage.completion_tokens == 3
        assert len(srv.chat_requests) == 2 and client.stats.retries == 1
        # silent after some tokens: never re-sent, the error says so
        srv.reset()
        srv.script(Reply(["a b", "c d e f"], token_delay_s=[0.001, 3.0]))
        with pytest.raises(ModelUnavailable, match="after 2 generated tokens; not re-sent"):
            await collect(client.stream(msgs, SamplingParams(n=2)))
        assert len(srv.chat_requests) == 1
    finally:
        await client.aclose()


async def test_a_long_generation_is_not_a_timeout_when_streamed(
    scripted_server: ScriptedServer,
) -> None:
    # 40 tokens 0.1 s apart (4 s in all) with a 1 s timeout: it is about silence, not length
    srv = scripted_server
    srv.script(Reply(" ".join(f"w{i}" for i in range(40)), token_delay_s=0.1))
    client = OpenAIChatClient(srv.url, srv.model, retries=0, timeout_s=1.0)
    try:
        completion = await collect(client.stream([{"role": "user", "content": "q"}],
                                                 SamplingParams(n=1)))  # fmt: skip
    finally:
        await client.aclose()
    assert completion.choices[0].tokens == 40 and completion.choices[0].finish_reason == "stop"


async def test_a_json_reply_to_a_streamed_request_is_the_reply(
    scripted_server: ScriptedServer, model: OpenAIChatClient, executor: SandboxExecutor
) -> None:
    """A model server that ignores `stream: true` and answers with one JSON body: its
    choices are used as they are; the step runs as policy 'first' and says why."""
    srv = scripted_server
    srv.script(
        Reply(["no code here", act("x = 6 * 7\nprint(x)")], ignore_stream=True),
        Reply(act("final_answer(x)"), ignore_stream=True),
    )
    traj = await solve(model, executor)
    assert traj.finish_reason == "answer" and traj.answer == 42
    s1 = traj.steps[0]
    assert srv.requests[0]["stream"] is True  # asked for a stream, got a body
    assert s1.chosen == 1 and s1.policy == "first"
    assert s1.note is not None and "one JSON body" in s1.note
    assert s1.candidates[0].parse_error and s1.candidates[1].valid
    assert s1.usage.completion_tokens > 0
    assert Trajectory.from_json(traj.to_json()).steps[0].note == s1.note
