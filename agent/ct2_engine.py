"""In-process chat model on CTranslate2 (int8 on CPU) behind the ModelClient interface.

The same contract as agent.transformers_engine (vLLM's semantics: chat template, stop
strings, n samples from one prefill, a finished sample leaving the batch, per-choice token
counts, seeds, streaming, a closed stream stopping generation at the next token); only
the decoding runs in CTranslate2's C++ int8 kernels instead of torch. Measured on the
loaded 2-core CPU: 1.2-2.4x the transformers engine's tokens/s at n=1 and 1.2-4x at n=8
(docs/benchmarks.md).

The model is the same Hugging Face folder the transformers engine loads; on first use it
is converted once (`ctranslate2.converters.TransformersConverter`, ~1 min, ~0.6 GB for
the 0.5B Qwen at int8) into `<folder>/ctranslate2-<quantization>/`, atomically (temp dir
+ rename) under a file lock, with a marker naming the weights it came from; changed
weights are converted again. The tokenizer and chat template are the folder's (transformers).

Sampling: temperature and top-p as vLLM, except that the nucleus is taken among the
`TOP_P_CANDIDATES` (256) most likely tokens (top-p over the whole vocabulary sorts every
logit at every step: 2-2.5x slower); top_p=1 samples the whole vocabulary.

How n samples run: one `generate_batch` call with `num_hypotheses=n`. CTranslate2
forwards the prompt once (`include_prompt_in_result=False`), repeats its state n times
and decodes the n rows together; a row whose callback returns True (a stop string, or a
cancelled request) is finalized and leaves the batch. The per-token callback feeds each
row's text to the same incremental decoder as the transformers engine.

ctranslate2 and transformers are imported inside functions (`import agent` stays light).
"""

from __future__ import annotations

import fcntl
import json
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from agent.model_client import Message, ModelError, ModelRequestError, SamplingParams, Usage
from agent.streaming import ChoiceDelta
from agent.transformers_engine import (
    InProcessEngine,
    _RowDecoder,
    default_threads,
    require_model_folder,
)

QUANTIZATIONS = ("int8", "int8_float32", "float32")
_MARKER = ".distillery-converted"


class CTranslate2Engine(InProcessEngine):
    """A CTranslate2 generator and the HF tokenizer, served in-process (`from_path`)."""

    def __init__(
        self,
        load: Callable[[], Any],
        tokenizer: Any,
        *,
        model_name: str,
        eos_ids: list[int],
        context_length: int,
        threads: int | None = None,
    ) -> None:
        super().__init__(tokenizer, model_name=model_name, threads=threads, torch_threads=False)
        if not eos_ids:
            raise ModelError("the model defines no end-of-sequence token")
        self._load = load
        self.generator = load()
        self._used = False  # whether the generator's worker thread has drawn random numbers
        self._eos_ids = list(eos_ids)
        self._eos = frozenset(eos_ids)
        self.context_length = context_length

    @classmethod
    def from_path(
        cls,
        path: str | Path,
        *,
        model_name: str | None = None,
        quantization: str = "int8",
        threads: int | None = None,
    ) -> CTranslate2Engine:
        """Load (converting once) the HF folder `path`; see the module docstring.

        quantization: "int8" (default: the fastest here) | "int8_float32" | "float32".
        threads: CTranslate2's intra-op CPU threads; None = `default_threads()`."""
        folder = Path(path).expanduser()
        if quantization not in QUANTIZATIONS:
            raise ModelError(f"unknown quantization {quantization!r}: use one of {QUANTIZATIONS}")
        if threads is not None and threads < 1:
            raise ModelError(f"threads must be >= 1, got {threads}")
        if not (folder / "config.json").is_file() and (folder / "adapter_config.json").is_file():
            raise ModelError(
                f"{folder} is an adapter-only export: the ctranslate2 engine needs merged "
                "weights; serve it with DISTILLERY_ENGINE=transformers (base + adapter at "
                "load time) or export with --mode merged"
            )
        require_model_folder(folder)
        try:
            import ctranslate2
            from transformers import AutoTokenizer
        except ImportError as exc:
            raise ModelError(
                f"the ctranslate2 engine needs ctranslate2 and transformers ({exc}): "
                "`.venv/bin/pip install -e '.[embedded]'`"
            ) from exc
        converted = ensure_converted(folder, quantization)
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder))
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot load the tokenizer in {folder}: {exc}") from exc
        if not getattr(tokenizer, "chat_template", None):
            raise ModelError(f"the tokenizer in {folder} has no chat template")
        engine_threads = threads if threads is not None else default_threads()

        def load() -> Any:
            return ctranslate2.Generator(
                str(converted),
                device="cpu",
                compute_type=quantization,
                inter_threads=1,
                intra_threads=engine_threads,
            )

        config = json.loads((folder / "config.json").read_text())
        return cls(
            load,
            tokenizer,
            model_name=model_name or folder.name,
            eos_ids=_eos_ids(folder, config, tokenizer),
            context_length=int(config.get("max_position_embeddings") or 1 << 30),
            threads=engine_threads,
        )

    # --- the work, on the worker thread ---------------------------------------------
    def _generate(
        self,
        messages: list[Message],
        params: SamplingParams,
        continue_final_message: bool,
        cancel: threading.Event,
        emit: Any,
    ) -> None:
        prompt_ids = self._encode(messages, continue_final_message)
        room = self.context_length - len(prompt_ids)
        if room < 1:
            raise ModelRequestError(
                f"the prompt is {len(prompt_ids)} tokens; the model's context is "
                f"{self.context_length}: shorten the conversation"
            )
        emit(Usage(prompt_tokens=len(prompt_ids)))
        max_new = min(params.max_tokens, room)
        greedy = params.temperature == 0
        rows = 1 if greedy else params.n  # greedy samples are all the same (as vLLM)
        copies = params.n if greedy else 1
        stop = [s for s in params.stop if s]
        decoders = [_RowDecoder(self.tokenizer, stop, self._eos) for _ in range(rows)]
        step = _StepFeed(decoders, copies, max_new, cancel, emit)
        with self._lock:
            if params.seed is not None and not greedy:
                self._reseed(params.seed)
            self._used = self._used or not greedy
            try:
                self.generator.generate_batch(
                    [self.tokenizer.convert_ids_to_tokens(prompt_ids)],
                    max_length=max_new,
                    num_hypotheses=rows,
                    beam_size=1,
                    sampling_topk=_topk(greedy, params.top_p),
                    sampling_topp=1.0 if greedy else params.top_p,
                    sampling_temperature=1.0 if greedy else params.temperature,
                    end_token=self._eos_ids,
                    include_prompt_in_result=False,
                    callback=step,
                )
            except Exception as exc:  # noqa: BLE001 - any failure inside the model is a model error
                raise ModelError(f"generation failed: {type(exc).__name__}: {exc}") from exc
        if step.error is not None:
            raise step.error

    def _reseed(self, seed: int) -> None:
        """Make this request's sampling start from `seed`.

        CTranslate2 seeds a thread's random generator at its first draw only (a later
        `set_random_seed` does not reach the running worker thread: OpenNMT/CTranslate2
        issue 1757), so a generator that has sampled is rebuilt, which gives it a fresh
        worker thread (~1-3 s for the 0.5B model, from the page cache)."""
        import ctranslate2

        ctranslate2.set_random_seed(seed)
        if self._used:
            self.generator = None  # free the old one before loading the new
            self.generator = self._load()


# Top-p over the whole vocabulary sorts all ~150k logits of every row at every step: 2-2.5x
# slower decoding at n=8 (measured). A nucleus is looked for among the most likely tokens
# instead; it differs from vLLM's only when the nucleus would hold more than these.
TOP_P_CANDIDATES = 256


def _topk(greedy: bool, top_p: float) -> int:
    if greedy:
        return 1
    return 0 if top_p >= 1.0 else TOP_P_CANDIDATES  # 0: the whole vocabulary (no top-k)


class _StepFeed:
    """CTranslate2's per-token callback: feeds the row's decoder, emits its text, and
    returns True (finalize this row) at a stop string or once the request is cancelled."""

    def __init__(
        self,
        decoders: list[_RowDecoder],
        copies: int,
        max_new: int,
        cancel: threading.Event,
        emit: Any,
    ) -> None:
        self.decoders = decoders
        self.copies = copies
        self.max_new = max_new
        self.cancel = cancel
        self.emit = emit
        self.counts = [0] * len(decoders)
        self.done = [False] * len(decoders)
        self.error: BaseException | None = None

    def __call__(self, result: Any) -> bool:
        row = int(result.hypothesis_id)
        if self.cancel.is_set() or self.error is not None or self.done[row]:
            return True
        try:
            self.counts[row] += 1
            last = self.counts[row] >= self.max_new or bool(result.is_last)
            text, finish = self.decoders[row].push(int(result.token_id), last=last)
            for copy in range(self.copies):
                self.emit(ChoiceDelta(row * self.copies + copy, text, 1, finish))
        except BaseException as exc:  # noqa: BLE001 - raised on the worker once CT2 returns
            self.error = exc
            return True
        if finish is not None:
            self.done[row] = True
            return True
        return False


def ensure_converted(folder: Path, quantization: str = "int8") -> Path:
    """The CTranslate2 model converted from the HF folder, converting it (once) if needed."""
    target = folder / f"ctranslate2-{quantization}"
    stamp = _weights_stamp(folder)
    if _marker_matches(target, stamp):
        return target
    with _file_lock(folder / f".ctranslate2-{quantization}.lock"):
        if _marker_matches(target, stamp):  # another process converted it while we waited
            return target
        try:
            from ctranslate2.converters import TransformersConverter
        except ImportError as exc:
            raise ModelError(f"converting needs ctranslate2 and transformers ({exc})") from exc
        with tempfile.TemporaryDirectory(prefix=".ct2-", dir=folder) as work:
            staging = Path(work) / "model"
            try:
                TransformersConverter(str(folder), low_cpu_mem_usage=True).convert(
                    str(staging), quantization=quantization, force=True
                )
            except Exception as exc:  # noqa: BLE001 - unsupported architectures, bad weights
                raise ModelError(f"cannot convert {folder} for ctranslate2: {exc}") from exc
            (staging / _MARKER).write_text(stamp)
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
    return target


def _weights_stamp(folder: Path) -> str:
    """Names, sizes and mtimes of the folder's weight files: changes when it is retrained."""
    files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin"))
    if not files:
        raise ModelError(f"{folder} holds no weights (*.safetensors or *.bin)")
    return "".join(f"{p.name} {p.stat().st_size} {p.stat().st_mtime_ns}\n" for p in files)


def _marker_matches(target: Path, stamp: str) -> bool:
    marker = target / _MARKER
    return marker.is_file() and marker.read_text() == stamp


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _eos_ids(folder: Path, config: dict[str, Any], tokenizer: Any) -> list[int]:
    """generation_config's eos ids (the end of a chat turn), else config's, else the tokenizer's."""
    eos: Any = None
    gen_file = folder / "generation_config.json"
    if gen_file.is_file():
        eos = json.loads(gen_file.read_text()).get("eos_token_id")
    if eos is None:
        eos = config.get("eos_token_id", tokenizer.eos_token_id)
    if eos is None:
        return []
    return [int(e) for e in (eos if isinstance(eos, list) else [eos])]
