"""The in-process engine on the random tiny Llama (real tokenizer and chat template).

The tiny model's samples are near-uniform over a 49k vocabulary, so two sampled texts
virtually never agree by chance: equal texts mean equal randomness, different texts
mean different randomness.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import torch

from agent.model_client import ModelClient, ModelError, ModelRequestError, SamplingParams
from agent.transformers_engine import TransformersEngine

CHAT = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is 2 + 2?"},
]


def params(**kw: Any) -> SamplingParams:
    base: dict[str, Any] = dict(n=1, temperature=1.0, top_p=1.0, max_tokens=24, stop=[], seed=7)
    base.update(kw)
    return SamplingParams(**base)


class GenerateSpy:
    """Wraps model.generate (calls through) to count calls and see their shapes."""

    def __init__(self, engine: TransformersEngine) -> None:
        self.engine = engine
        self.original = engine.model.generate
        self.calls: list[dict[str, Any]] = []
        self.outputs: list[Any] = []

    def __call__(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        out = self.original(**kwargs)
        self.outputs.append(out)
        return out

    def __enter__(self) -> GenerateSpy:
        self.engine.model.generate = self
        return self

    def __exit__(self, *exc: object) -> None:
        self.engine.model.generate = self.original


def test_implements_the_model_client_protocol(tiny_engine: TransformersEngine) -> None:
    assert isinstance(tiny_engine, ModelClient)
    assert tiny_engine.model_name == "tiny"


async def test_n_samples_come_from_one_batched_generate(tiny_engine: TransformersEngine) -> None:
    with GenerateSpy(tiny_engine) as spy:
        result = await tiny_engine.complete(CHAT, params(n=4))
    assert len(spy.calls) == 1
    assert spy.calls[0]["num_return_sequences"] == 4
    assert spy.outputs[0].shape[0] == 4
    texts = [c.text for c in result.choices]
    assert len(texts) == 4 and len(set(texts)) == 4  # independent samples
    assert all(c.finish_reason == "length" for c in result.choices)
    assert result.model == "tiny"


async def test_usage_counts_prompt_once_and_every_generated_token(
    tiny_engine: TransformersEngine,
) -> None:
    tok = tiny_engine.tokenizer
    rendered = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    expected_prompt = len(tok(rendered, add_special_tokens=False)["input_ids"])
    result = await tiny_engine.complete(CHAT, params(n=3, max_tokens=10))
    assert result.usage.prompt_tokens == expected_prompt
    # No stop strings and a near-uniform model: every sample runs to max_tokens.
    assert [c.finish_reason for c in result.choices] == ["length"] * 3
    assert result.usage.completion_tokens == 30
    assert result.usage.total_tokens == expected_prompt + 30
    for c in result.choices:
        assert len(tok(c.text, add_special_tokens=False)["input_ids"]) >= 5


async def test_stop_string_cuts_the_text_where_vllm_would(tiny_engine: TransformersEngine) -> None:
    free = await tiny_engine.complete(CHAT, params(max_tokens=40))
    text = free.choices[0].text
    assert len(text) > 30
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    cut = await tiny_engine.complete(CHAT, params(max_tokens=40, stop=[stop]))
    # Same seed, same samples: the stopped text is the free text up to the stop string.
    assert cut.choices[0].text == text[: text.find(stop)]
    assert cut.choices[0].finish_reason == "stop"
    assert stop not in cut.choices[0].text
    assert cut.usage.completion_tokens < free.usage.completion_tokens


async def test_earliest_of_several_stop_strings_wins(tiny_engine: TransformersEngine) -> None:
    text = (await tiny_engine.complete(CHAT, params(max_tokens=40))).choices[0].text
    late, early = text[-6:-3], text[8:11]
    cut = await tiny_engine.complete(CHAT, params(max_tokens=40, stop=[late, early]))
    first = min(text.find(late), text.find(early))
    assert cut.choices[0].text == text[:first]


async def test_each_sample_stops_on_its_own(tiny_engine: TransformersEngine) -> None:
    # "e" is in a large share of the vocabulary: every sample meets it within 40 tokens.
    result = await tiny_engine.complete(CHAT, params(n=4, max_tokens=40, stop=["e"]))
    assert len(result.choices) == 4
    for c in result.choices:
        assert "e" not in c.text
        assert c.finish_reason == "stop"
    assert result.usage.completion_tokens < 4 * 40


async def test_continue_final_message_returns_only_the_continuation(
    tiny_engine: TransformersEngine,
) -> None:
    prefix = "Thought: the sum is"
    chat = [*CHAT, {"role": "assistant", "content": prefix}]
    result = await tiny_engine.complete(chat, params(max_tokens=12), continue_final_message=True)

    # The same prompt rendered by hand: the assistant turn is open, ending in the prefix.
    tok = tiny_engine.tokenizer
    rendered = tok.apply_chat_template(chat, tokenize=False, continue_final_message=True)
    assert rendered.endswith(prefix)
    ids = tok(rendered, add_special_tokens=False, return_tensors="pt")["input_ids"]
    assert result.usage.prompt_tokens == ids.shape[1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        out = tiny_engine.model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=12,
            do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
            pad_token_id=tok.pad_token_id,
        )  # fmt: skip
    expected = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert result.choices[0].text == expected
    assert not result.choices[0].text.startswith(prefix)


async def test_continue_final_message_needs_an_assistant_turn_last(
    tiny_engine: TransformersEngine,
) -> None:
    with pytest.raises(ModelRequestError, match="assistant"):
        await tiny_engine.complete(CHAT, params(), continue_final_message=True)


async def test_same_seed_same_samples_other_seed_other_samples(
    tiny_engine: TransformersEngine,
) -> None:
    a = await tiny_engine.complete(CHAT, params(n=2, seed=11))
    b = await tiny_engine.complete(CHAT, params(n=2, seed=11))
    c = await tiny_engine.complete(CHAT, params(n=2, seed=12))
    assert [x.text for x in a.choices] == [x.text for x in b.choices]
    assert [x.text for x in a.choices] != [x.text for x in c.choices]


async def test_temperature_and_top_p_reach_generate(tiny_engine: TransformersEngine) -> None:
    with GenerateSpy(tiny_engine) as spy:
        await tiny_engine.complete(CHAT, params(temperature=0.3, top_p=0.5, max_tokens=3))
    call = spy.calls[0]
    assert call["do_sample"] is True
    assert (call["temperature"], call["top_p"], call["max_new_tokens"]) == (0.3, 0.5, 3)


async def test_greedy_n_samples_are_one_computation_repeated(
    tiny_engine: TransformersEngine,
) -> None:
    with GenerateSpy(tiny_engine) as spy:
        result = await tiny_engine.complete(CHAT, params(n=3, temperature=0.0, max_tokens=8))
    assert spy.calls[0]["do_sample"] is False
    assert spy.outputs[0].shape[0] == 1
    assert len({c.text for c in result.choices}) == 1 and len(result.choices) == 3
    assert result.usage.completion_tokens == 3 * 8


async def test_generation_does_not_block_the_event_loop(tiny_engine: TransformersEngine) -> None:
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0.005)

    task = asyncio.create_task(ticker())
    await tiny_engine.complete(CHAT, params(n=2, max_tokens=120))
    done.set()
    await task
    assert ticks > 5


async def test_concurrent_calls_are_served_one_at_a_time(tiny_engine: TransformersEngine) -> None:
    active = 0
    peak = 0
    original = tiny_engine.model.generate

    def tracking(**kwargs: Any) -> Any:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        try:
            return original(**kwargs)
        finally:
            active -= 1

    tiny_engine.model.generate = tracking
    try:
        results = await asyncio.gather(
            *(tiny_engine.complete(CHAT, params(seed=s, max_tokens=16)) for s in range(4))
        )
    finally:
        tiny_engine.model.generate = original
    assert peak == 1
    assert len({r.choices[0].text for r in results}) == 4


async def test_cancelling_a_call_stops_its_generation(
    fresh_tiny_engine: TransformersEngine,
) -> None:
    engine = fresh_tiny_engine
    with GenerateSpy(engine) as spy:
        task = asyncio.create_task(engine.complete(CHAT, params(max_tokens=3000)))
        while not spy.calls:  # wait until generate has started
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The worker is free again: the next call runs (after the cancelled one ended early).
        after = await engine.complete(CHAT, params(max_tokens=4))
    assert after.choices[0].finish_reason == "length"
    prompt_len = spy.calls[0]["input_ids"].shape[1]
    assert spy.outputs[0].shape[1] - prompt_len < 3000


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(n=0), "n must be"),
        (dict(max_tokens=0), "max_tokens"),
        (dict(temperature=-1.0), "temperature"),
        (dict(top_p=0.0), "top_p"),
    ],
)
async def test_bad_sampling_params_are_request_errors(
    tiny_engine: TransformersEngine, bad: dict[str, Any], match: str
) -> None:
    with pytest.raises(ModelRequestError, match=match):
        await tiny_engine.complete(CHAT, params(**bad))


async def test_bad_messages_are_request_errors(tiny_engine: TransformersEngine) -> None:
    with pytest.raises(ModelRequestError, match="no messages"):
        await tiny_engine.complete([], params())
    with pytest.raises(ModelRequestError, match="role"):
        await tiny_engine.complete([{"role": "robot", "content": "hi"}], params())


async def test_prompt_longer_than_the_context_is_a_request_error(
    tiny_engine: TransformersEngine,
) -> None:
    huge = [{"role": "user", "content": "word " * 5000}]  # the tiny model's context is 4096
    with pytest.raises(ModelRequestError, match="context"):
        await tiny_engine.complete(huge, params())


def test_from_path_rejects_a_folder_that_is_not_a_model(tmp_path: Any) -> None:
    with pytest.raises(ModelError, match="config.json"):
        TransformersEngine.from_path(tmp_path)


async def test_closed_engine_refuses_work(fresh_tiny_engine: TransformersEngine) -> None:
    await fresh_tiny_engine.aclose()
    with pytest.raises(ModelError, match="closed"):
        await fresh_tiny_engine.complete(CHAT, params())


async def test_threads_apply_to_the_worker_only(tiny_model_dir: Any) -> None:
    main_threads = torch.get_num_threads()
    engine = TransformersEngine.from_path(tiny_model_dir, threads=1)
    try:
        seen: list[int] = []
        original = engine.model.generate

        def probe(**kwargs: Any) -> Any:
            seen.append(torch.get_num_threads())
            return original(**kwargs)

        engine.model.generate = probe
        await engine.complete(CHAT, params(max_tokens=2))
        assert seen == [1]
        assert torch.get_num_threads() == main_threads  # the process setting is untouched
    finally:
        await engine.aclose()
    with pytest.raises(ModelError, match="threads"):
        TransformersEngine.from_path(tiny_model_dir, threads=0)
