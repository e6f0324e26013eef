"""Early exit through the embedded engine (the real decoding loop) on the tiny model.

The tiny model is random: it writes no code and almost never ends its turn. So the
first-thought prefix carries the code block (every candidate parses to it once it is
complete), and a wrapper around the model's forward stands in for a model that ends
one sample early: it puts the end-of-turn token on top of row 1's logits at its 5th
token, and slows every later forward (20 ms) so row 0 cannot reach max_tokens while the
agent runs candidate 1. What is checked is what the engine did (forward calls, rows)
and what the trajectory records - no wall-clock assertions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agent.agent import AgentConfig, run_agent
from agent.transformers_engine import TransformersEngine
from sandbox.executor import SandboxExecutor
from tests.helpers.unjailed import unjailed_config

MAX_TOKENS = 1000


class EndRowOne:
    """Calls the model's forward; ends row 1 at its 5th token, then slows decoding."""

    def __init__(self, engine: TransformersEngine) -> None:
        self.engine = engine
        self.original = engine.model.forward
        self.eos = engine._eos_ids[0]
        self.batches: list[int] = []
        self.slow = True

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        import time

        out = self.original(*args, **kwargs)
        ids = kwargs["input_ids"]
        batch, length = ids.shape
        if length == 1:
            self.batches.append(batch)
            if batch == 2 and len(self.batches) == 4:  # logits of each row's 5th token
                out.logits[1, -1, :] = float("-inf")
                out.logits[1, -1, self.eos] = 0.0
            if batch == 1 and self.slow:
                time.sleep(0.02)
        return out

    def __enter__(self) -> EndRowOne:
        self.engine.model.forward = self
        return self

    def __exit__(self, *exc: object) -> None:
        self.engine.model.forward = self.original


@pytest.fixture
async def engine(tiny_model_dir: Path) -> AsyncIterator[TransformersEngine]:
    eng = TransformersEngine.from_path(tiny_model_dir, model_name="tiny", threads=1)
    yield eng
    await eng.aclose()


@pytest.fixture
async def executor() -> AsyncIterator[SandboxExecutor]:
    ex = SandboxExecutor(unjailed_config(step_timeout_s=10.0))
    yield ex
    await ex.aclose()


async def test_the_engine_stops_the_other_samples_at_the_first_valid_one(
    engine: TransformersEngine, executor: SandboxExecutor
) -> None:
    config = AgentConfig(
        samples=2, max_steps=1, policy="early", max_tokens=MAX_TOKENS, seed=1, temperature=1.0
    )
    decode_calls = 0

    async def on_step(step: Any) -> None:
        nonlocal decode_calls
        if step.number == 1:
            decode_calls = len(spy.batches)
            spy.slow = False  # the final-answer call that follows runs at full speed

    with EndRowOne(engine) as spy:
        traj = await run_agent(
            "What is x?",
            model=engine,
            executor=executor,
            tools={},
            config=config,
            thought_prefix="compute x.\nCode:\n```py\nx = 6 * 7\nprint(x)\n```",
            on_step=on_step,
        )
    s1 = traj.steps[0]
    assert s1.policy == "early" and s1.chosen == 1
    long, short = s1.candidates
    assert short.valid and short.finish_reason == "stop" and short.tokens == 5
    assert short.execution is not None and short.execution.stdout == "42\n"
    # row 0 was stopped by the closed stream, well before max_tokens
    assert long.finish_reason == "cancelled" and long.execution is None
    assert long.tokens is not None and 5 <= long.tokens < MAX_TOKENS
    assert long.text.startswith("Thought: compute x.")
    assert decode_calls < MAX_TOKENS // 2
    assert spy.batches[:4] == [2, 2, 2, 2] and set(spy.batches[4:decode_calls]) <= {1}
    # the run goes on to the final-answer call (max_steps=1) on the same engine
    assert traj.steps[-1].kind == "final_answer_call"
    assert s1.usage.completion_tokens == long.tokens + short.tokens
