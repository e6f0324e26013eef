"""In-process chat model (transformers) behind the ModelClient interface: the embedded default.

Semantics follow vLLM's OpenAI server so the agent behaves the same on either:
- the chat template renders the prompt (`add_generation_prompt`; with
  `continue_final_message` the last assistant message is a prefix the model continues,
  and only the continuation is returned);
- `n` samples come from ONE batched `generate` (`num_return_sequences`);
- generation of a sample halts at the first stop string in its generated text; the
  stop string and anything after it are not returned (finish_reason "stop"); the end
  of the turn (EOS) also gives "stop", running out of `max_tokens` gives "length";
- `temperature == 0` is greedy; top-k is off; `seed` makes sampling reproducible;
- usage counts the prompt once and every generated token of every sample.

`generate` runs on the engine's own single worker thread, so the event loop keeps
serving while the model computes and calls are served one at a time, in order. A
cancelled call stops its generation at the next token.

torch and transformers are imported inside functions: the CLI imports this module lazily,
and `import agent` must stay light.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent.model_client import (
    Choice,
    Completion,
    Message,
    ModelError,
    ModelRequestError,
    SamplingParams,
    Usage,
)

_ROLES = frozenset({"system", "user", "assistant"})


class TransformersEngine:
    """A causal LM and its tokenizer, served in-process. Build it with `from_path`."""

    def __init__(
        self, model: Any, tokenizer: Any, *, model_name: str, threads: int | None = None
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.threads = threads if threads is not None else default_threads()
        if self.threads < 1:
            raise ModelError(f"threads must be >= 1, got {self.threads}")
        self._lock = threading.Lock()
        self._worker = concurrent.futures.ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="transformers-engine",
            initializer=_set_worker_threads,
            initargs=(self.threads,),
        )
        self._closed = False
        gen = model.generation_config
        eos = gen.eos_token_id if gen.eos_token_id is not None else tokenizer.eos_token_id
        self._eos_ids: list[int] = [int(e) for e in (eos if isinstance(eos, list) else [eos])]
        if not self._eos_ids:
            raise ModelError("the model defines no end-of-sequence token")
        pad = gen.pad_token_id if gen.pad_token_id is not None else tokenizer.pad_token_id
        self._pad_id: int = int(pad) if pad is not None else self._eos_ids[0]
        self.context_length: int = int(
            getattr(model.config, "max_position_embeddings", 0) or 1 << 30
        )

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
    ) -> TransformersEngine:
        """Load an HF folder (safetensors + config + tokenizer with a chat template).

        dtype: "float32" | "bfloat16" | "float16" | "auto" (the folder's) | None (the
        folder's dtype if this CPU computes it natively, else float32).
        device: None = "cuda" when available, else "cpu".
        threads: torch's CPU threads for generation (set on the engine's worker thread
        only, not process-wide); None = `default_threads()`.
        """
        folder = Path(path).expanduser()
        if threads is not None and threads < 1:
            raise ModelError(f"threads must be >= 1, got {threads}")
        if not (folder / "config.json").is_file():
            raise ModelError(
                f"{folder} is not a Hugging Face model folder (no config.json); pass a folder "
                "saved with save_pretrained, or omit the path to use the embedded model"
            )
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
                str(folder), dtype=_resolve_dtype(folder, dtype, device)
            )
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot load the model in {folder}: {exc}") from exc
        if not getattr(tokenizer, "chat_template", None):
            raise ModelError(f"the tokenizer in {folder} has no chat template")
        model.to(torch.device(device))
        model.eval()
        return cls(model, tokenizer, model_name=model_name or folder.name, threads=threads)

    # --- ModelClient ----------------------------------------------------------------
    async def complete(
        self,
        messages: Sequence[Message],
        params: SamplingParams,
        *,
        continue_final_message: bool = False,
    ) -> Completion:
        if self._closed:
            raise ModelError("the engine is closed")
        _validate(messages, params, continue_final_message)
        cancel = threading.Event()
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(
            self._worker, self._complete_sync, list(messages), params, continue_final_message,
            cancel,
        )  # fmt: skip
        try:
            return await fut
        except asyncio.CancelledError:
            cancel.set()  # the generation ends at its next token
            raise

    async def aclose(self) -> None:
        self._closed = True
        self._worker.shutdown(wait=False, cancel_futures=True)

    # --- the work, on the worker thread ---------------------------------------------
    def _complete_sync(
        self,
        messages: list[Message],
        params: SamplingParams,
        continue_final_message: bool,
        cancel: threading.Event,
    ) -> Completion:
        import torch
        from transformers import StoppingCriteriaList

        started = time.monotonic()
        prompt_ids = self._encode(messages, continue_final_message)
        prompt_len = len(prompt_ids)
        room = self.context_length - prompt_len
        if room < 1:
            raise ModelRequestError(
                f"the prompt is {prompt_len} tokens; the model's context is "
                f"{self.context_length}: shorten the conversation"
            )
        max_new = min(params.max_tokens, room)
        stop = [s for s in params.stop if s]
        criterion = _StopCriterion(self.tokenizer, prompt_len, stop, cancel)
        # Greedy samples are all the same: compute one, return it n times (as vLLM does).
        greedy_copies = params.n if params.temperature == 0 else 1
        input_ids = torch.tensor([prompt_ids], dtype=torch.long, device=self.model.device)
        kwargs: dict[str, Any] = dict(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new,
            num_return_sequences=params.n if greedy_copies == 1 else 1,
            stopping_criteria=StoppingCriteriaList([criterion]),
            eos_token_id=self._eos_ids,
            pad_token_id=self._pad_id,
        )
        if params.temperature > 0:  # OpenAI semantics: no top-k unless asked for
            kwargs.update(
                do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=0
            )
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        with self._lock, torch.inference_mode(), torch.random.fork_rng(devices=[]):
            if params.seed is not None:
                torch.manual_seed(params.seed)
            try:
                out = self.model.generate(**kwargs)
            except Exception as exc:  # noqa: BLE001 - any failure inside generate is a model error
                raise ModelError(f"generation failed: {type(exc).__name__}: {exc}") from exc
        choices: list[Choice] = []
        completion_tokens = 0
        eos = set(self._eos_ids)
        for row in range(out.shape[0]):
            gen = out[row, prompt_len:].tolist()
            if row in criterion.stopped_at:
                n_tok, ended = criterion.stopped_at[row], True
            else:
                first_eos = next((i for i, t in enumerate(gen) if t in eos), None)
                n_tok, ended = (first_eos + 1, True) if first_eos is not None else (len(gen), False)
            completion_tokens += n_tok
            text = self.tokenizer.decode(gen[:n_tok], skip_special_tokens=True)
            cut = _first_stop(text, stop)
            if cut is not None:
                text, ended = text[:cut], True
            choices.append(Choice(text=text, finish_reason="stop" if ended else "length"))
        if greedy_copies > 1:
            choices = [Choice(c.text, c.finish_reason) for c in choices * greedy_copies]
            completion_tokens *= greedy_copies
        return Completion(
            choices=choices,
            usage=Usage(prompt_tokens=prompt_len, completion_tokens=completion_tokens),
            model=self.model_name,
            latency_s=time.monotonic() - started,
        )

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


class _StopCriterion:
    """Ends a sample once its generated text contains a stop string, or all when cancelled.

    Only the generated part is searched (as vLLM does), over a window of recent tokens
    wide enough to hold the longest stop string even at one byte per token.
    """

    def __init__(
        self, tokenizer: Any, prompt_len: int, stop: list[str], cancel: threading.Event
    ) -> None:
        self.tokenizer = tokenizer
        self.prompt_len = prompt_len
        self.stop = stop
        self.cancel = cancel
        self.window = 4 * max((len(s.encode()) for s in stop), default=0) + 4
        self.stopped_at: dict[int, int] = {}
        """row -> number of generated tokens when its stop string appeared."""

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        batch = input_ids.shape[0]
        if self.cancel.is_set():
            return torch.ones(batch, dtype=torch.bool, device=input_ids.device)
        done = [False] * batch
        n_gen = input_ids.shape[1] - self.prompt_len
        if self.stop and n_gen > 0:
            start = input_ids.shape[1] - min(n_gen, self.window)
            tails = input_ids[:, start:].tolist()
            for row, tail in enumerate(tails):
                if row in self.stopped_at:
                    done[row] = True
                    continue
                text = self.tokenizer.decode(tail, skip_special_tokens=True)
                if any(s in text for s in self.stop):
                    self.stopped_at[row] = n_gen
                    done[row] = True
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


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


def _set_worker_threads(threads: int) -> None:
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
