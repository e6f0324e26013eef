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


class ForwardSpy:
    """Wraps the model's forward (calls through) to see each call's batch and length."""

    def __init__(self, engine: TransformersEngine) -> None:
        self.engine = engine
        self.original = engine.model.forward
        self.shapes: list[tuple[int, ...]] = []
        self.active = 0
        self.peak = 0
        self.threads: list[int] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        ids = kwargs.get("input_ids", args[0] if args else None)
        assert ids is not None
        self.shapes.append(tuple(ids.shape))
        self.threads.append(torch.get_num_threads())
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            return self.original(*args, **kwargs)
        finally:
            self.active -= 1

    @property
    def decode_batches(self) -> list[int]:
        return [shape[0] for shape in self.shapes if shape[1] == 1]

    def __enter__(self) -> ForwardSpy:
        self.engine.model.forward = self
        return self

    def __exit__(self, *exc: object) -> None:
        self.engine.model.forward = self.original


def test_implements_the_model_client_protocol(tiny_engine: TransformersEngine) -> None:
    assert isinstance(tiny_engine, ModelClient)
    assert tiny_engine.model_name == "tiny"


async def test_n_samples_share_one_prefill_and_decode_together(
    tiny_engine: TransformersEngine,
) -> None:
    with ForwardSpy(tiny_engine) as spy:
        result = await tiny_engine.complete(CHAT, params(n=4, max_tokens=10))
    prefill, *decode = spy.shapes
    assert prefill[0] == 1 and prefill[1] > 10  # the prompt once, not once per sample
    assert decode == [(4, 1)] * 9  # the 4 rows together, one token each
    texts = [c.text for c in result.choices]
    assert len(texts) == 4 and len(set(texts)) == 4  # independent samples
    assert all(c.finish_reason == "length" for c in result.choices)
    assert [c.tokens for c in result.choices] == [10] * 4
    assert result.model == "tiny"


async def test_finished_rows_stop_costing_compute(tiny_engine: TransformersEngine) -> None:
    # "e" is in a large share of the vocabulary: samples stop at different lengths
    with ForwardSpy(tiny_engine) as spy:
        result = await tiny_engine.complete(CHAT, params(n=4, max_tokens=60, stop=["e"], seed=3))
    batches = spy.decode_batches
    assert batches == sorted(batches, reverse=True) and batches and batches[-1] < 4
    # every computed row produced a kept token: nothing was computed for a finished sample
    assert result.usage.completion_tokens == 4 + sum(batches)
    assert sum(c.tokens or 0 for c in result.choices) == result.usage.completion_tokens
    assert len({c.tokens for c in result.choices}) > 1


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
    result = await tiny_engine.complete(
        chat, params(max_tokens=12, temperature=0.0), continue_final_message=True
    )

    # The same prompt rendered by hand: the assistant turn is open, ending in the prefix.
    tok = tiny_engine.tokenizer
    rendered = tok.apply_chat_template(chat, tokenize=False, continue_final_message=True)
    assert rendered.endswith(prefix)
    ids = tok(rendered, add_special_tokens=False, return_tensors="pt")["input_ids"]
    assert result.usage.prompt_tokens == ids.shape[1]
    # transformers' own greedy generate on that prompt gives the same continuation
    out = tiny_engine.model.generate(
        input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=12,
        do_sample=False, temperature=None, top_p=None, top_k=None,
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


async def test_temperature_and_top_p_shape_the_samples(tiny_engine: TransformersEngine) -> None:
    greedy = await tiny_engine.complete(CHAT, params(temperature=0.0, max_tokens=12))
    # a nucleus this small holds only the most likely token: sampling becomes greedy
    narrow = await tiny_engine.complete(CHAT, params(n=2, top_p=1e-6, max_tokens=12))
    assert [c.text for c in narrow.choices] == [greedy.choices[0].text] * 2
    # a very low temperature does the same; a high one does not
    cold = await tiny_engine.complete(CHAT, params(temperature=1e-4, max_tokens=12))
    hot = await tiny_engine.complete(CHAT, params(temperature=1.0, max_tokens=12))
    assert cold.choices[0].text == greedy.choices[0].text != hot.choices[0].text


async def test_greedy_n_samples_are_one_computation_repeated(
    tiny_engine: TransformersEngine,
) -> None:
    with ForwardSpy(tiny_engine) as spy:
        result = await tiny_engine.complete(CHAT, params(n=3, temperature=0.0, max_tokens=8))
    assert all(b == 1 for b, _ in spy.shapes)
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
    with ForwardSpy(tiny_engine) as spy:
        results = await asyncio.gather(
            *(tiny_engine.complete(CHAT, params(seed=s, max_tokens=16)) for s in range(4))
        )
    assert spy.peak == 1
    assert len({r.choices[0].text for r in results}) == 4


async def test_cancelling_a_call_stops_its_generation(
    fresh_tiny_engine: TransformersEngine,
) -> None:
    engine = fresh_tiny_engine
    with ForwardSpy(engine) as spy:
        task = asyncio.create_task(engine.complete(CHAT, params(max_tokens=3000)))
        while len(spy.shapes) < 3:  # wait until decoding has started
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The worker is free again: the next call runs (after the cancelled one ended early).
        after = await engine.complete(CHAT, params(max_tokens=4))
        calls = len(spy.shapes)
    assert after.choices[0].finish_reason == "length"
    assert calls < 3000


async def test_stream_yields_each_sample_as_it_is_decoded(tiny_engine: TransformersEngine) -> None:
    full = await tiny_engine.complete(CHAT, params(n=3, max_tokens=20, stop=["e"], seed=5))
    stream = tiny_engine.stream(CHAT, params(n=3, max_tokens=20, stop=["e"], seed=5))
    texts = ["", "", ""]
    tokens = [0, 0, 0]
    finish: list[str | None] = [None, None, None]
    order: list[int] = []
    async for delta in stream:
        assert finish[delta.index] is None  # nothing after a choice's last delta
        texts[delta.index] += delta.text
        tokens[delta.index] += delta.tokens
        finish[delta.index] = delta.finish_reason
        if delta.finish_reason:
            order.append(delta.index)
    assert texts == [c.text for c in full.choices]
    assert tokens == [c.tokens for c in full.choices]
    assert finish == [c.finish_reason for c in full.choices] and sorted(order) == [0, 1, 2]
    assert stream.usage.completion_tokens == full.usage.completion_tokens
    assert stream.usage.prompt_tokens == full.usage.prompt_tokens


async def test_closing_a_stream_stops_every_unfinished_sample(
    fresh_tiny_engine: TransformersEngine,
) -> None:
    engine = fresh_tiny_engine
    with ForwardSpy(engine) as spy:
        stream = engine.stream(CHAT, params(n=4, max_tokens=3000))
        got = 0
        async for _ in stream:
            got += 1
            if got == 12:
                break
        await stream.aclose()
        after = await engine.complete(CHAT, params(max_tokens=4))  # the worker is free
        calls = len(spy.shapes)
    assert after.choices[0].finish_reason == "length"
    assert calls < 1000


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
        with ForwardSpy(engine) as spy:
            await engine.complete(CHAT, params(max_tokens=2))
        assert spy.threads and set(spy.threads) == {1}
        assert torch.get_num_threads() == main_threads  # the process setting is untouched
    finally:
        await engine.aclose()
    with pytest.raises(ModelError, match="threads"):
        TransformersEngine.from_path(tiny_model_dir, threads=0)
