"""The CTranslate2 engine on the random tiny Llama (converted for real, int8), held to the
same contract as the transformers engine: the tests compare it with itself (same seed,
other seed, stop strings cutting a free text) and with the transformers engine on greedy
decoding. The tiny model's samples are near-uniform over a 49k vocabulary, so equal texts
mean equal randomness."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("ctranslate2")

from agent.ct2_engine import CTranslate2Engine, ensure_converted  # noqa: E402
from agent.model_client import ModelClient, ModelError, ModelRequestError, SamplingParams  # noqa: E402
from agent.streaming import supports_streaming  # noqa: E402

CHAT = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is 2 + 2?"},
]


def params(**kw: Any) -> SamplingParams:
    base: dict[str, Any] = dict(n=1, temperature=1.0, top_p=1.0, max_tokens=24, stop=[], seed=7)
    base.update(kw)
    return SamplingParams(**base)


class CallbackSpy:
    """Wraps the engine's generator (calls through) to count CTranslate2's per-token
    callbacks: how many tokens were really decoded."""

    def __init__(self, engine: CTranslate2Engine) -> None:
        self.engine = engine
        self.inner = engine.generator
        self.count = [0]

    @property
    def tokens(self) -> int:
        return self.count[0]

    def generate_batch(self, *args: Any, callback: Any, **kw: Any) -> Any:
        count = self.count  # the callback must not hold the generator: CTranslate2 drops
        # it on its own thread, and a generator freed there cannot join that thread

        def counted(step: Any) -> bool:
            count[0] += 1
            return bool(callback(step))

        return self.inner.generate_batch(*args, callback=counted, **kw)

    def __enter__(self) -> CallbackSpy:
        self.engine.generator = self
        return self

    def __exit__(self, *exc: object) -> None:
        self.engine.generator = self.inner


@pytest.fixture(scope="module")
def model_copy(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    # a private copy: the conversion writes into the folder
    target = tmp_path_factory.mktemp("ct2") / "tiny"
    shutil.copytree(tiny_model_dir, target)
    return target


@pytest.fixture(scope="module")
def engine(model_copy: Path) -> CTranslate2Engine:
    return CTranslate2Engine.from_path(model_copy, model_name="tiny")


@pytest.fixture
async def fresh_engine(model_copy: Path) -> AsyncIterator[CTranslate2Engine]:
    e = CTranslate2Engine.from_path(model_copy, model_name="tiny")
    yield e
    await e.aclose()


def test_is_a_streaming_model_client(engine: CTranslate2Engine) -> None:
    assert isinstance(engine, ModelClient) and supports_streaming(engine)
    assert engine.model_name == "tiny"


def test_conversion_happens_once_and_again_when_the_weights_change(model_copy: Path) -> None:
    converted = ensure_converted(model_copy)
    model_bin = converted / "model.bin"
    before = model_bin.stat().st_mtime_ns
    assert ensure_converted(model_copy) == converted
    assert model_bin.stat().st_mtime_ns == before  # not converted again
    weights = next(model_copy.glob("*.safetensors"))
    weights.touch()  # a retrained folder: new weights
    ensure_converted(model_copy)
    assert model_bin.stat().st_mtime_ns != before


async def test_n_samples_are_independent_and_counted_per_choice(engine: CTranslate2Engine) -> None:
    result = await engine.complete(CHAT, params(n=4, max_tokens=10))
    texts = [c.text for c in result.choices]
    assert len(texts) == 4 and len(set(texts)) == 4
    assert all(c.finish_reason == "length" for c in result.choices)
    assert [c.tokens for c in result.choices] == [10] * 4
    assert result.usage.completion_tokens == 40
    tok = engine.tokenizer
    rendered = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert result.usage.prompt_tokens == len(tok(rendered, add_special_tokens=False)["input_ids"])


async def test_each_sample_stops_on_its_own(engine: CTranslate2Engine) -> None:
    # "e" is in a large share of the vocabulary: every sample meets it within 60 tokens.
    result = await engine.complete(CHAT, params(n=4, max_tokens=60, stop=["e"], seed=3))
    for c in result.choices:
        assert "e" not in c.text and c.finish_reason == "stop"
    assert len({c.tokens for c in result.choices}) > 1
    assert sum(c.tokens or 0 for c in result.choices) == result.usage.completion_tokens < 240


async def test_stop_string_cuts_the_text_where_vllm_would(engine: CTranslate2Engine) -> None:
    free = await engine.complete(CHAT, params(max_tokens=40))
    text = free.choices[0].text
    assert len(text) > 30
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    cut = await engine.complete(CHAT, params(max_tokens=40, stop=[stop]))
    assert cut.choices[0].text == text[: text.find(stop)]
    assert cut.choices[0].finish_reason == "stop"
    assert cut.usage.completion_tokens < free.usage.completion_tokens


async def test_same_seed_same_samples_other_seed_other_samples(engine: CTranslate2Engine) -> None:
    a = await engine.complete(CHAT, params(n=2, seed=11))
    b = await engine.complete(CHAT, params(n=2, seed=11))
    c = await engine.complete(CHAT, params(n=2, seed=12))
    assert [x.text for x in a.choices] == [x.text for x in b.choices]
    assert [x.text for x in a.choices] != [x.text for x in c.choices]


async def test_greedy_matches_the_transformers_engine(
    engine: CTranslate2Engine, tiny_engine: Any
) -> None:
    # int8 weights move the logits a little; the tiny model's greedy text is a repeated
    # high-margin token, which both engines must agree on.
    ours = await engine.complete(CHAT, params(n=3, temperature=0.0, max_tokens=8))
    theirs = await tiny_engine.complete(CHAT, params(n=1, temperature=0.0, max_tokens=8))
    assert [c.text for c in ours.choices] == [theirs.choices[0].text] * 3
    assert ours.usage.completion_tokens == 24
    narrow = await engine.complete(CHAT, params(n=2, top_p=1e-6, max_tokens=8))
    assert [c.text for c in narrow.choices] == [ours.choices[0].text] * 2


async def test_continue_final_message_returns_only_the_continuation(
    engine: CTranslate2Engine, tiny_engine: Any
) -> None:
    chat = [*CHAT, {"role": "assistant", "content": "Thought: the sum is"}]
    g = params(max_tokens=8, temperature=0.0)
    ours = await engine.complete(chat, g, continue_final_message=True)
    theirs = await tiny_engine.complete(chat, g, continue_final_message=True)
    assert ours.choices[0].text == theirs.choices[0].text
    assert ours.usage.prompt_tokens == theirs.usage.prompt_tokens
    with pytest.raises(ModelRequestError, match="assistant"):
        await engine.complete(CHAT, params(), continue_final_message=True)


async def test_stream_matches_complete(engine: CTranslate2Engine) -> None:
    full = await engine.complete(CHAT, params(n=3, max_tokens=20, stop=["e"], seed=5))
    stream = engine.stream(CHAT, params(n=3, max_tokens=20, stop=["e"], seed=5))
    texts, tokens = ["", "", ""], [0, 0, 0]
    finish: list[str | None] = [None, None, None]
    async for delta in stream:
        assert finish[delta.index] is None  # nothing after a choice's last delta
        texts[delta.index] += delta.text
        tokens[delta.index] += delta.tokens
        finish[delta.index] = delta.finish_reason
    assert texts == [c.text for c in full.choices]
    assert tokens == [c.tokens for c in full.choices]
    assert finish == [c.finish_reason for c in full.choices]
    assert stream.usage.completion_tokens == full.usage.completion_tokens


async def test_closing_a_stream_stops_every_unfinished_sample(
    fresh_engine: CTranslate2Engine,
) -> None:
    with CallbackSpy(fresh_engine) as spy:
        stream = fresh_engine.stream(CHAT, params(n=4, max_tokens=3000, seed=None))
        got = 0
        async for _ in stream:
            got += 1
            if got == 12:
                break
        await stream.aclose()
        after = await fresh_engine.complete(CHAT, params(max_tokens=4, seed=None))
        decoded = spy.tokens
    assert after.choices[0].finish_reason == "length"  # the worker was free again
    # the closed request stopped at its next token: far fewer than 4 x 3000 were decoded
    assert decoded < 1000


async def test_cancelling_a_call_frees_the_worker(fresh_engine: CTranslate2Engine) -> None:
    with CallbackSpy(fresh_engine) as spy:
        task = asyncio.create_task(
            fresh_engine.complete(CHAT, params(n=2, max_tokens=3000, seed=None))
        )
        while spy.tokens < 3:  # wait until decoding has started
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        after = await fresh_engine.complete(CHAT, params(max_tokens=4, seed=None))
        decoded = spy.tokens
    assert after.choices[0].tokens == 4
    assert decoded < 1000


@pytest.mark.parametrize(
    "bad, match",
    [(dict(n=0), "n must be"), (dict(max_tokens=0), "max_tokens"), (dict(top_p=0.0), "top_p")],
)
async def test_bad_requests_are_request_errors(
    engine: CTranslate2Engine, bad: dict[str, Any], match: str
) -> None:
    with pytest.raises(ModelRequestError, match=match):
        await engine.complete(CHAT, params(**bad))
    with pytest.raises(ModelRequestError, match="context"):
        await engine.complete([{"role": "user", "content": "word " * 5000}], params())


def test_from_path_rejects_bad_input(tmp_path: Path, model_copy: Path) -> None:
    with pytest.raises(ModelError, match="config.json"):
        CTranslate2Engine.from_path(tmp_path)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"base_model_name_or_path": "../base"}')
    with pytest.raises(ModelError, match="DISTILLERY_ENGINE=transformers"):
        CTranslate2Engine.from_path(adapter)
    with pytest.raises(ModelError, match="quantization"):
        CTranslate2Engine.from_path(model_copy, quantization="int3")
    with pytest.raises(ModelError, match="threads"):
        CTranslate2Engine.from_path(model_copy, threads=0)


async def test_closed_engine_refuses_work(fresh_engine: CTranslate2Engine) -> None:
    await fresh_engine.aclose()
    with pytest.raises(ModelError, match="closed"):
        await fresh_engine.complete(CHAT, params())
