"""Chat rendering with a loss mask: only the assistant turns are learned.

The conversation is rendered once with the tokenizer's own chat template. Each
assistant turn's character span is found by rendering the conversation up to that
turn with and without it (`add_generation_prompt=True` before it): the difference is
the turn's content plus the template's end-of-turn marker (e.g. `<|im_end|>`), which is
learned too so the model learns to stop; the template's trailing newline is not.
Tokens are then labelled by their character offsets: a token is learned iff it lies
inside an assistant span. System, task and observation tokens get the label -100.

Works for any prefix-stable template (Qwen2.5, SmolLM2, Llama 3, ...); a template that
rewrites earlier turns when later ones are added raises MaskError instead of guessing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

IGNORE_INDEX = -100


class MaskError(ValueError):
    """The conversation cannot be rendered with a reliable assistant mask."""


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    """input_ids with every non-assistant token replaced by IGNORE_INDEX."""
    text: str
    """The rendered conversation."""
    spans: list[tuple[int, int]] = field(default_factory=list)
    """Character spans of `text` that are learned (one per assistant turn)."""
    offsets: list[tuple[int, int]] = field(default_factory=list)

    @property
    def n_learned(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)

    def __len__(self) -> int:
        return len(self.input_ids)


def _render(tokenizer: Any, messages: Sequence[dict[str, str]], *, gen_prompt: bool) -> str:
    text = tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=gen_prompt
    )
    if not isinstance(text, str):
        raise MaskError("the chat template did not render to a string")
    return text


def assistant_spans(
    tokenizer: Any, messages: Sequence[dict[str, str]]
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character span of every assistant turn."""
    if not getattr(tokenizer, "chat_template", None):
        raise MaskError("the tokenizer has no chat template; use an instruct model's tokenizer")
    full = _render(tokenizer, messages, gen_prompt=False)
    spans = []
    for i, m in enumerate(messages):
        if m.get("role") != "assistant":
            continue
        if i == 0:
            raise MaskError("a conversation cannot start with an assistant turn")
        before = _render(tokenizer, messages[:i], gen_prompt=True)
        upto = _render(tokenizer, messages[: i + 1], gen_prompt=False)
        if not (upto.startswith(before) and full.startswith(upto)):
            raise MaskError(
                f"the chat template is not prefix-stable at message {i}: rendering more turns "
                "changes earlier text, so assistant tokens cannot be located reliably"
            )
        turn = upto[len(before) :]
        if m["content"].strip() and m["content"].strip() not in turn:
            raise MaskError(f"assistant message {i} does not appear verbatim in the rendered turn")
        spans.append((len(before), len(before) + len(turn.rstrip())))
    return full, spans


def encode_conversation(tokenizer: Any, messages: Sequence[dict[str, str]]) -> Encoded:
    """Tokenize a conversation and label only its assistant turns (see the module docstring)."""
    if not getattr(tokenizer, "is_fast", False):
        raise MaskError("a fast tokenizer (with offset mapping) is required")
    text, spans = assistant_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    offsets = [(int(a), int(b)) for a, b in enc["offset_mapping"]]
    labels = [IGNORE_INDEX] * len(ids)
    for t, (s, e) in enumerate(offsets):
        for a, b in spans:
            if s >= a and e <= b and e > s:
                labels[t] = ids[t]
                break
            if s < b and e > a:  # straddles a span edge: the template and the content merged
                raise MaskError(
                    f"token {t} ({text[s:e]!r}) straddles the edge of an assistant turn; "
                    "this tokenizer/template pair cannot be masked exactly"
                )
    return Encoded(input_ids=ids, labels=labels, text=text, spans=spans, offsets=offsets)


def learned_text(tokenizer: Any, enc: Encoded) -> list[str]:
    """Decode each contiguous run of learned tokens (for checks and debugging)."""
    runs: list[list[int]] = []
    prev = False
    for tok, lab in zip(enc.input_ids, enc.labels, strict=True):
        on = lab != IGNORE_INDEX
        if on and not prev:
            runs.append([])
        if on:
            runs[-1].append(tok)
        prev = on
    return [tokenizer.decode(r, skip_special_tokens=False) for r in runs]


def verify_encoding(tokenizer: Any, enc: Encoded) -> None:
    """Raise MaskError unless the learned tokens decode to exactly the assistant spans."""
    runs = learned_text(tokenizer, enc)
    expected = [enc.text[a:b] for a, b in enc.spans if b > a]
    if runs != expected:
        raise MaskError(
            f"learned tokens do not match the assistant turns: {len(runs)} runs vs "
            f"{len(expected)} turns; first difference: "
            + next(
                (f"{r!r} != {e!r}" for r, e in zip(runs, expected, strict=False) if r != e),
                "(count)",
            )
        )
