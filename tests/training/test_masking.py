"""The loss mask on the real chat templates (Qwen2.5 from the embedded model folder, SmolLM2
from its gguf): every learned token belongs to an assistant turn, and every assistant
token is learned. The expected spans are located independently of the implementation."""

from __future__ import annotations

from typing import Any

import pytest

from agent.executor import ExecutionResult
from agent.observation import render_error, render_observation
from agent.prompts import initial_messages
from tests.helpers.tiny_model import (
    default_test_cache_dir,
    load_smollm2_tokenizer,
    smollm2_gguf_path,
)
from training.build_data import load_tokenizer
from training.masking import (
    IGNORE_INDEX,
    MaskError,
    encode_conversation,
    learned_text,
    verify_encoding,
)

END = "<|im_end|>"  # both templates close every turn with it


@pytest.fixture(scope="module")
def qwen_tokenizer() -> Any:
    from transformers import AutoTokenizer

    from agent.embedded_model import ensure_embedded_model

    path = ensure_embedded_model(default_test_cache_dir())  # shared with tests/engine
    return AutoTokenizer.from_pretrained(str(path))


@pytest.fixture(scope="module")
def smollm2_tokenizer() -> Any:
    return load_smollm2_tokenizer()


def conversation() -> list[dict[str, str]]:
    """A realistic agent transcript: student prompt, task, an error recovered from, unicode,
    an observation that itself looks like an assistant turn, and the final answer."""
    msgs = initial_messages(
        "Ünïcode question: what is 17 × 23, in 日本語 digits?", prompt="student",
        tool_names=["web_search"],
    )  # fmt: skip
    a1 = "Thought: Multiply.\nCode:\n```py\nresult = 17 * 23\nprint(resu1t)\n```<end_code>"
    o1 = render_error(1, "NameError: name 'resu1t' is not defined", max_chars=8000)
    a2 = (
        "Thought: Fix the typo; note that  two spaces and a tab\t stay.\nCode:\n```py\n"
        'result = 17 * 23\nprint(f"{result} → 三九一")\n```<end_code>'
    )
    o2 = render_observation(
        2,
        ExecutionResult(stdout="391 → 三九一\nThought: not mine\n", value_repr=None),
        max_chars=8000,
    )
    a3 = "Thought: Done.\nCode:\n```py\nfinal_answer(391)\n```<end_code>"
    return [
        *msgs,
        {"role": "assistant", "content": a1},
        {"role": "user", "content": o1},
        {"role": "assistant", "content": a2},
        {"role": "user", "content": o2},
        {"role": "assistant", "content": a3},
    ]


def expected_spans(
    text: str, messages: list[dict[str, str]]
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(assistant spans incl. the end marker, other message content spans), by plain search."""
    pos = 0
    assistant, other = [], []
    for m in messages:
        start = text.index(m["content"], pos)
        end = start + len(m["content"])
        if m["role"] == "assistant":
            assert text[end : end + len(END)] == END
            assistant.append((start, end + len(END)))
            pos = end + len(END)
        else:
            other.append((start, end))
            pos = end
    return assistant, other


# the Qwen tokenizer comes from the prepared embedded model (a download and a conversion)
@pytest.mark.parametrize("which", [pytest.param("qwen", marks=pytest.mark.slow), "smollm2"])
def test_mask_covers_exactly_the_assistant_turns(
    which: str, request: pytest.FixtureRequest
) -> None:
    tok = request.getfixturevalue(f"{which}_tokenizer")
    messages = conversation()
    enc = encode_conversation(tok, messages)

    # the same token ids the template itself produces (what a server sees)
    ids = tok.apply_chat_template(messages, tokenize=True, return_dict=False)
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    assert enc.input_ids == list(ids)

    assistant, other = expected_spans(enc.text, messages)
    learned = [lab != IGNORE_INDEX for lab in enc.labels]
    for (s, e), on, lab, tid in zip(enc.offsets, learned, enc.labels, enc.input_ids, strict=True):
        inside = any(a <= s and e <= b for a, b in assistant)
        assert on == inside, (which, enc.text[s:e], s, e)
        if on:
            assert lab == tid
        if any(s < b and e > a for a, b in other):
            assert not on, f"non-assistant token learned: {enc.text[s:e]!r}"

    # decoded, the learned tokens are the assistant turns verbatim, each with its end marker
    assert learned_text(tok, enc) == [
        m["content"] + END for m in messages if m["role"] == "assistant"
    ]
    verify_encoding(tok, enc)
    n_expected = sum(
        len(tok(enc.text[a:b], add_special_tokens=False)["input_ids"]) for a, b in assistant
    )
    assert enc.n_learned == n_expected


def test_tokenizer_from_a_gguf_file_masks_the_same(smollm2_tokenizer: Any) -> None:
    tok = load_tokenizer(smollm2_gguf_path())
    messages = conversation()
    assert (
        encode_conversation(tok, messages).labels
        == encode_conversation(smollm2_tokenizer, messages).labels
    )


def test_unreliable_templates_are_refused(smollm2_tokenizer: Any) -> None:
    import copy

    messages = conversation()
    tok = copy.deepcopy(smollm2_tokenizer)
    # a template that renders an earlier assistant turn differently once more turns follow
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
        "{% if m['role'] == 'assistant' and not loop.last %}[hidden]{% else %}{{ m['content'] }}"
        "{% endif %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    with pytest.raises(MaskError, match="prefix-stable"):
        encode_conversation(tok, messages)
    tok.chat_template = None
    with pytest.raises(MaskError, match="no chat template"):
        encode_conversation(tok, messages)
    with pytest.raises(MaskError, match="start with an assistant"):
        encode_conversation(smollm2_tokenizer, [{"role": "assistant", "content": "x"}])
