"""In-process chat model (transformers) behind the ModelClient interface: the embedded default.

Semantics follow vLLM's OpenAI server so the agent behaves the same on either:
- the chat template renders the prompt (`add_generation_prompt`; with
  `continue_final_message` the last assistant message is a prefix the model continues,
  and only the continuation is returned);
- `n` samples come from ONE batched decoding loop: the prompt is prefilled once, its
  KV cache copied to n rows, and the rows decode together; a row that finishes leaves
  the batch (its cache rows are dropped), so finished samples stop costing compute
  (the earlier `generate(num_return_sequences=n)` prefilled the prompt n times and kept
  computing finished rows until the longest one ended);
- generation of a sample halts at the first stop string in its generated text; the
  stop string and anything after it are not returned (finish_reason "stop"); the end
  of the turn (EOS) also gives "stop", running out of `max_tokens` gives "length";
- `temperature == 0` is greedy; top-k is off; `seed` makes sampling reproducible;
- usage counts the prompt once and every generated token of every sample; each
  choice's delta carries its tokens (exact per-candidate counts).

`stream` (agent.streaming) yields each sample's text as it is decoded; `complete`
collects the stream. Generation runs on the engine's own single worker thread, so the
event loop keeps serving while the model computes and calls are served one at a time,
in order. A closed stream or a cancelled call stops its generation at the next token.

`InProcessEngine` holds what the in-process engines share (the streaming surface, the
worker thread, the chat template, request checks); agent.ct2_engine reuses it and the row
decoder for the CTranslate2 engine.

torch and transformers are imported inside functions: the CLI imports this module lazily,
and `import agent` must stay light.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from agent.model_client import (
    Completion,
    Message,
    ModelError,
    ModelRequestError,
    SamplingParams,
    Usage,
)
from agent.streaming import ChoiceDelta, CompletionStream, collect

_ROLES = frozenset({"system", "user", "assistant"})


class InProcessEngine:
    """What the in-process engines share: the ModelClient/streaming surface, one worker
    thread that runs the calls in order, the chat template and vLLM's request checks.
    A subclass implements `_generate` (on the worker thread: emit a `Usage` with the prompt
    tokens, then `ChoiceDelta`s; stop at the next token once `cancel` is set)."""

    def __init__(
        self, tokenizer: Any, *, model_name: str, threads: int | None, torch_threads: bool
    ) -> None:
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.threads = threads if threads is not None else default_threads()
        if self.threads < 1:
            raise ModelError(f"threads must be >= 1, got {self.threads}")
        self.context_length: int = 1 << 30
        self._lock = threading.Lock()
        self._worker = concurrent.futures.ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix=f"{type(self).__name__}-worker",
            initializer=_set_worker_threads,
            initargs=(self.threads if torch_threads else None,),
        )
        self._closed = False

    # --- ModelClient ----------------------------------------------------------------
    async def complete(
        self,
        messages: Sequence[Message],
        params: SamplingParams,
        *,
        continue_final_message: bool = False,
    ) -> Completion:
        return await collect(
            self.stream(messages, params, continue_final_message=continue_final_message)
        )

    def stream(
        self,
        messages: Sequence[Message],
        params: SamplingParams,
        *,
        continue_final_message: bool = False,
    ) -> CompletionStream:
        """Sample `params.n` continuations, yielding each choice's text as it is decoded.

        Closing the stream (or cancelling the task that reads it) stops the generation
        at its next token. Raises ModelRequestError for invalid input at once."""
        if self._closed:
            raise ModelError("the engine is closed")
        _validate(messages, params, continue_final_message)
        msgs = list(messages)
        return CompletionStream(
            params.n,
            self.model_name,
            lambda stream: self._events(msgs, params, continue_final_message, stream),
        )

    async def aclose(self) -> None:
        self._closed = True
        self._worker.shutdown(wait=False, cancel_futures=True)

    async def _events(
        self,
        messages: list[Message],
        params: SamplingParams,
        continue_final_message: bool,
        stream: CompletionStream,
    ) -> AsyncIterator[ChoiceDelta]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        cancel = threading.Event()

        def emit(item: Any) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        def work() -> None:
            try:
                self._generate(messages, params, continue_final_message, cancel, emit)
            except BaseException as exc:  # noqa: BLE001 - handed to the reading task
                emit(exc)
            finally:
                emit(_END)

        fut = loop.run_in_executor(self._worker, work)
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    break
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, Usage):
                    stream.usage.prompt_tokens = item.prompt_tokens
                    continue
                stream.usage.completion_tokens += item.tokens
                yield item
            await fut
        finally:
            cancel.set()  # a closed stream ends the generation at its next token

    def _generate(
        self,
        messages: list[Message],
        params: SamplingParams,
        continue_final_message: bool,
        cancel: threading.Event,
        emit: Any,
    ) -> None:
        raise NotImplementedError

    def _encode(self, messages: list[Message], continue_final_message: bool) -> list[int]:
        try:
            text = self.tokenizer.apply_chat_template(
                messages,
                tokenize=False,
                add_generation_prompt=not continue_final_message,
                continue_final_message=continue_final_message,
            )
        except Exception as exc:  # noqa: BLE001 - template errors (jinja, bad roles) are the caller's
            raise ModelRequestError(f"the chat template rejected the messages: {exc}") from exc
        # The template already wrote the special tokens (BOS, role markers).
        ids: list[int] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids


class TransformersEngine(InProcessEngine):
    """A causal LM and its tokenizer, served in-process. Build it with `from_path`."""

    def __init__(
        self, model: Any, tokenizer: Any, *, model_name: str, threads: int | None = None
    ) -> None:
        super().__init__(tokenizer, model_name=model_name, threads=threads, torch_threads=True)
        self.model = model
        gen = model.generation_config
        eos = gen.eos_token_id if gen.eos_token_id is not None else tokenizer.eos_token_id
        self._eos_ids: list[int] = [int(e) for e in (eos if isinstance(eos, list) else [eos])]
        if not self._eos_ids:
            raise ModelError("the model defines no end-of-sequence token")
        pad = gen.pad_token_id if gen.pad_token_id is not None else tokenizer.pad_token_id
        self._pad_id: int = int(pad) if pad is not None else self._eos_ids[0]
        self._eos = frozenset(self._eos_ids)
        self.context_length = int(getattr(model.config, "max_position_embeddings", 0) or 1 << 30)

    # --- construction ---------------------------------------------------------------
    @classmethod
    def from_path(
        cls,
        path: str | Path,
        *,
        model_name: str | None = None,
        dtype: str | None = None,
        device: str | None = None,
        threads: int | None = None,
        models_dir: Path | None = None,
    ) -> TransformersEngine:
        """Load an HF folder (safetensors + config + tokenizer with a chat template).

        dtype: "float32" | "bfloat16" | "float16" | "auto" (the folder's) | None (the
        folder's dtype if this CPU computes it natively, else float32).
        device: None = "cuda" when available, else "cpu".
        threads: torch's CPU threads for generation (set on the engine's worker thread
        only, not process-wide); None = `default_threads()`.
        models_dir: where an adapter's base named by a bare name lies (`adapter_base`).
        """
        folder = Path(path).expanduser()
        if threads is not None and threads < 1:
            raise ModelError(f"threads must be >= 1, got {threads}")
        base = adapter_base(folder, models_dir)  # an adapter-only export loads as base + adapter
        weights = base or folder
        require_model_folder(weights, shown=folder)
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as exc:
            raise ModelError(
                f"the in-process engine needs torch and transformers ({exc}): "
                "`.venv/bin/pip install -e '.[embedded]'`"
            ) from exc
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder))
            model: Any = AutoModelForCausalLM.from_pretrained(
                str(weights), dtype=_resolve_dtype(weights, dtype, device)
            )
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot load the model in {folder}: {exc}") from exc
        if not getattr(tokenizer, "chat_template", None):
            raise ModelError(f"the tokenizer in {folder} has no chat template")
        if base is not None:
            model = _merge_adapter(model, folder)
        model.to(torch.device(device))
        model.eval()
        return cls(model, tokenizer, model_name=model_name or folder.name, threads=threads)

    # --- the work, on the worker thread ---------------------------------------------
    def _generate(
        self,
        messages: list[Message],
        params: SamplingParams,
        continue_final_message: bool,
        cancel: threading.Event,
        emit: Any,
    ) -> None:
        """Prefill the prompt once, then decode the n rows together; a finished row leaves
        the batch (its KV cache rows are dropped), so it costs nothing from then on."""
        import torch

        prompt_ids = self._encode(messages, continue_final_message)
        prompt_len = len(prompt_ids)
        room = self.context_length - prompt_len
        if room < 1:
            raise ModelRequestError(
                f"the prompt is {prompt_len} tokens; the model's context is "
                f"{self.context_length}: shorten the conversation"
            )
        emit(Usage(prompt_tokens=prompt_len))
        max_new = min(params.max_tokens, room)
        stop = [s for s in params.stop if s]
        # Greedy samples are all the same: compute one, send it as each of the n (as vLLM).
        greedy = params.temperature == 0
        rows = 1 if greedy else params.n
        copies = params.n if greedy else 1
        seed = params.seed if params.seed is not None else int.from_bytes(os.urandom(7), "little")
        generator = torch.Generator(device="cpu").manual_seed(seed)
        device = self.model.device
        decoders = [_RowDecoder(self.tokenizer, stop, self._eos) for _ in range(rows)]

        def send(row: int, text: str, tokens: int, finish: str | None) -> None:
            for copy in range(copies):
                emit(ChoiceDelta(row * copies + copy, text, tokens, finish))

        with self._lock, torch.inference_mode():
            from transformers import DynamicCache

            cache = DynamicCache(config=self.model.config)
            try:
                out = self.model(
                    input_ids=torch.tensor([prompt_ids], dtype=torch.long, device=device),
                    cache=cache,
                    use_cache=True,
                    logits_to_keep=1,
                )
                logits = out.logits[:, -1, :]
                if rows > 1:
                    cache.batch_repeat_interleave(rows)
                    logits = logits.expand(rows, -1)
                active = list(range(rows))  # batch position -> row
                position = prompt_len
                for n_gen in range(1, max_new + 1):
                    if cancel.is_set():
                        return
                    tokens = _sample(logits, params.temperature, params.top_p, generator)
                    keep = _advance(tokens.tolist(), active, decoders, n_gen == max_new, send)
                    if not keep:
                        return
                    if len(keep) < len(active):
                        index = torch.tensor(keep, dtype=torch.long, device=device)
                        cache.batch_select_indices(index)
                        tokens = tokens.index_select(0, index)
                        active = [active[b] for b in keep]
                    out = self.model(
                        input_ids=tokens.view(-1, 1),
                        position_ids=torch.full(
                            (len(active), 1), position, dtype=torch.long, device=device
                        ),
                        cache=cache,
                        use_cache=True,
                    )
                    position += 1
                    logits = out.logits[:, -1, :]
            except Exception as exc:  # noqa: BLE001 - any failure inside the model is a model error
                raise ModelError(f"generation failed: {type(exc).__name__}: {exc}") from exc


_END = object()


def _advance(
    tokens: list[int], active: list[int], decoders: list[_RowDecoder], last: bool, send: Any
) -> list[int]:
    """Give each row in the batch its new token and send the text it releases; return the
    batch positions whose rows go on (the others are finished)."""
    keep = []
    for b, token in enumerate(tokens):
        row = active[b]
        text, finish = decoders[row].push(token, last=last)
        send(row, text, 1, finish)
        if finish is None:
            keep.append(b)
    return keep


def _sample(logits: Any, temperature: float, top_p: float, generator: Any) -> Any:
    """One token per row: greedy at temperature 0, else nucleus sampling (no top-k)."""
    import torch

    if temperature == 0:
        return logits.argmax(dim=-1)
    scores = logits.float() / temperature
    if top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=True, dim=-1)
        probs = torch.softmax(sorted_scores, dim=-1)
        # drop a token when the tokens above it already hold top_p of the mass
        drop = (probs.cumsum(dim=-1) - probs) > top_p
        sorted_scores = sorted_scores.masked_fill(drop, float("-inf"))
        scores = torch.full_like(scores, float("-inf")).scatter(-1, order, sorted_scores)
    probs = torch.softmax(scores, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).view(-1)


class _RowDecoder:
    """Incremental detokenization of one row, with vLLM's stop semantics.

    Text is released once it cannot be part of a stop string (a stop string and what
    follows it are never sent); a multi-byte character split across tokens waits for
    its last byte. `push` returns (new text, finish_reason or None)."""

    def __init__(self, tokenizer: Any, stop: list[str], eos: frozenset[int]) -> None:
        self.tokenizer = tokenizer
        self.stop = stop
        self.eos = eos
        self.hold = max((len(s) for s in stop), default=1) - 1
        self.ids: list[int] = []
        self.sent = 0  # characters of the decoded text already released

    def push(self, token: int, *, last: bool) -> tuple[str, str | None]:
        if token in self.eos:
            return self._release(self._text(), final=True), "stop"
        self.ids.append(token)
        text = self._text()
        if self.stop:
            start = max(0, self.sent - self.hold)
            cut = _first_stop(text[start:], self.stop)
            if cut is not None:
                return self._release(text[: start + cut], final=True), "stop"
        if last:
            return self._release(text, final=True), "length"
        return self._release(text, final=False), None

    def _text(self) -> str:
        return str(self.tokenizer.decode(self.ids, skip_special_tokens=True))

    def _release(self, text: str, *, final: bool) -> str:
        end = len(text) if final else len(text) - self.hold
        if not final:
            while end > self.sent and text[end - 1] == "\ufffd":  # an incomplete character
                end -= 1
        if end <= self.sent:
            return ""
        out, self.sent = text[self.sent : end], end
        return out


def default_threads() -> int:
    """One CPU thread per core, less one left to the rest of the process.

    torch's threads meet at a barrier after every operation; when one of them is
    descheduled (the event loop, sandbox workers, the tokenizer or another program needs
    the CPU) the others wait. Measured on a 2-core machine with other load: 2 threads ran
    5-10x slower than 1. vLLM's CPU backend reserves a core the same way.
    """
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) - 1)


def _set_worker_threads(threads: int | None) -> None:
    if threads is None:  # an engine that sets its own threads (not torch's)
        return
    import torch

    torch.set_num_threads(threads)  # per OS thread under OpenMP: this worker only


def _first_stop(text: str, stop: list[str]) -> int | None:
    hits = [i for i in (text.find(s) for s in stop) if i >= 0]
    return min(hits) if hits else None


def _validate(messages: Sequence[Message], params: SamplingParams, continue_final: bool) -> None:
    if not messages:
        raise ModelRequestError("no messages: a chat needs at least one message")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in _ROLES:
            raise ModelRequestError(
                f"message {i} needs a role among {sorted(_ROLES)}, got {m!r:.80}"
            )
        if not isinstance(m.get("content"), str):
            raise ModelRequestError(f"message {i} needs string content")
    if continue_final and messages[-1]["role"] != "assistant":
        raise ModelRequestError("continue_final_message needs an assistant message last")
    if params.n < 1:
        raise ModelRequestError(f"n must be >= 1, got {params.n}")
    if params.max_tokens < 1:
        raise ModelRequestError(f"max_tokens must be >= 1, got {params.max_tokens}")
    if params.temperature < 0:
        raise ModelRequestError(f"temperature must be >= 0, got {params.temperature}")
    if not 0 < params.top_p <= 1:
        raise ModelRequestError(f"top_p must be in (0, 1], got {params.top_p}")


def _resolve_dtype(folder: Path, dtype: str | None, device: str) -> Any:
    import torch

    if dtype == "auto":
        return "auto"
    if dtype is not None:
        resolved = getattr(torch, dtype, None)
        if not isinstance(resolved, torch.dtype):
            raise ModelError(f"unknown dtype {dtype!r}: use float32, bfloat16, float16 or auto")
        return resolved
    import json

    saved = json.loads((folder / "config.json").read_text())
    folder_dtype = str(saved.get("dtype") or saved.get("torch_dtype") or "float32")
    if device != "cpu":
        return getattr(torch, folder_dtype, torch.float32)
    # On CPU, bfloat16 is ~2x faster than float32 where the CPU has native bf16 (AVX512-BF16,
    # AMX) and much slower where it does not; float16 matmuls are slow on CPU either way.
    if folder_dtype == "bfloat16" and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return torch.bfloat16
    return torch.float32


def require_model_folder(weights: Path, *, shown: Path | None = None) -> None:
    """ModelError unless `weights` holds a Hugging Face model (config.json); the message names
    `shown` (the path the caller was given) when it differs."""
    if not (weights / "config.json").is_file():
        raise ModelError(
            f"{shown or weights} is not a Hugging Face model folder (no config.json); pass a "
            "folder saved with save_pretrained, or omit the path to use the embedded model"
        )


def adapter_base(folder: Path, models_dir: Path | None = None) -> Path | None:
    """The base model folder of an adapter-only export (`distillery export --mode adapter`:
    adapter_config.json and no config.json), None for a model folder. A relative
    `base_model_name_or_path` counts from the adapter folder, then from `models_dir` (where
    prepared models lie: `agent.embedded_model.prepare_adapter_base`). ModelError when the
    base it names is not a local Hugging Face folder."""
    if (folder / "config.json").is_file() or not (folder / "adapter_config.json").is_file():
        return None
    import json

    try:
        named = json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"cannot read the base model of the adapter in {folder}: {exc}") from exc
    base = folder / str(named or "")
    if named and models_dir is not None and not (base / "config.json").is_file():
        base = models_dir / str(named)
    if not named or not (base / "config.json").is_file():
        raise ModelError(
            f"{folder} is a LoRA adapter whose base model {named!r} is not a local Hugging Face "
            "folder: point base_model_name_or_path in its adapter_config.json at the base "
            "folder, or load the merged export (`distillery export --mode merge`) instead"
        )
    return base


def _merge_adapter(model: Any, folder: Path) -> Any:
    """`model` (the base) with the LoRA adapter in `folder` folded into its weights: the
    merged export's weights, computed at load time (peft)."""
    try:
        from peft import PeftModel
    except ImportError as exc:
        raise ModelError(
            f"{folder} is a LoRA adapter and loading one needs peft ({exc}): "
            "`.venv/bin/pip install -e '.[train]'`, or load the merged export "
            "(`distillery export --mode merge`)"
        ) from exc
    try:
        return PeftModel.from_pretrained(model, str(folder)).merge_and_unload()
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelError(f"cannot apply the adapter in {folder} to its base: {exc}") from exc
