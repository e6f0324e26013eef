"""Supervised fine-tuning of the student on built conversations (TRL SFTTrainer + peft).

Defaults are the paper's: LoRA r=64, alpha=128, dropout 0.05 on all linear layers,
lr 2e-4 with linear decay, 2 epochs, effective batch 8, max length 10240. Full
fine-tuning is `method="full"`. Agent and CoT data go through the same path: each
example is a chat whose assistant turns alone are learned (training/masking.py).

Layout of `output_dir`:
    sft_config.json      the settings (a resumed run must match them)
    checkpoints/         Trainer checkpoints (resume picks the last one)
    log.jsonl            one line per logged step (loss, lr, grad norm, epoch)
    final/               the adapter (LoRA) or the full model, with the tokenizer
    train_summary.json   data, settings and final metrics (read by `distillery export`)

Data parallel: under `torchrun` (WORLD_SIZE > 1) the Trainer runs DDP - gloo on CPU, NCCL on
GPUs - and gradient accumulation shrinks so that batch_size x accumulation x WORLD_SIZE stays
`effective_batch`: the logged losses are those of one process with the same effective batch
(tests/training/test_ddp.py). Global rank 0 alone writes the files above. `strategy="fsdp"`
shards parameters, gradients and optimizer state over the GPU ranks instead (FSDP2 through
the Trainer; full state dicts on save). It is refused on CPU, where accelerate would drop
the FSDP plugin and train DDP (measured: same losses as DDP, no parameter sharded); it has
not run on GPUs yet.

Interruption: SIGTERM/SIGINT during training save a checkpoint at the end of the
current step and stop; a hard kill loses at most `save_steps` steps. Running the same
command again resumes from the last checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import resource
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from training.masking import Encoded, MaskError, encode_conversation

Method = Literal["lora", "full"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
Device = Literal["auto", "cpu", "cuda"]
Strategy = Literal["ddp", "fsdp"]

# Settings that may differ between an interrupted run and its resumption.
_RESUME_FREE = {
    "resume", "stop_after_steps", "logging_steps", "save_total_limit", "progress", "threads",
    "max_steps", "epochs", "stop_at",  # training longer is a legitimate reason to resume
}  # fmt: skip


class SFTError(RuntimeError):
    """Training cannot run as configured; the message says what to change."""


class Interrupted(RuntimeError):
    """Training stopped early on request (signal or stop_after_steps); a checkpoint was saved."""


@dataclass
class SFTSettings:
    model: Path
    """Base model: a Hugging Face folder (e.g. the embedded Qwen folder)."""
    data: list[Path]
    """Built conversations (`distillery train build-data` output), JSONL."""
    output_dir: Path
    method: Method = "lora"
    lora_r: int = 64
    lora_alpha: int = 128
    lora_dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"
    learning_rate: float = 2e-4
    lr_scheduler: str = "linear"
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    epochs: float = 2.0
    max_steps: int = -1
    """Stop after this many optimizer steps (-1: train for `epochs`)."""
    batch_size: int = 1
    """Per-device micro-batch; gradient accumulation makes up `effective_batch`."""
    effective_batch: int = 8
    max_length: int = 10240
    """Longer conversations are dropped (and counted), not truncated."""
    precision: Precision = "auto"
    device: Device = "auto"
    gradient_checkpointing: bool | None = None
    """None: on for GPU, off for CPU (it only costs time there)."""
    strategy: Strategy = "ddp"
    """How a torchrun job splits the work: "ddp" replicates the model on every rank and
    averages gradients; "fsdp" shards parameters, gradients and optimizer state over the
    ranks (torch FSDP2, `fully_shard`, through accelerate): for a model that does not fit
    one GPU. FSDP needs CUDA GPUs (refused on CPU)."""
    threads: int | None = None
    """CPU threads for torch (None: torch's default). 1 is faster on a CPU shared with
    other busy processes, where torch's threads wait for each other."""
    save_steps: int = 50
    save_total_limit: int = 2
    logging_steps: int = 1
    seed: int = 42
    resume: bool = True
    stop_after_steps: int | None = None
    """Checkpoint and stop (Interrupted) after this many optimizer steps: time-boxed jobs."""
    stop_at: float | None = None
    """Checkpoint and stop (Interrupted) after the first step that ends past this wall-clock
    time (`time.time()` seconds): a time budget."""
    progress: bool = True

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["model"] = str(self.model)
        d["data"] = [str(p) for p in self.data]
        d["output_dir"] = str(self.output_dir)
        return d


@dataclass
class DataStats:
    examples: int = 0
    dropped_too_long: int = 0
    dropped_unmaskable: int = 0
    tokens: int = 0
    learned_tokens: int = 0
    max_tokens: int = 0
    kinds: dict[str, int] = field(default_factory=dict)


def read_conversations(paths: Sequence[Path]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for path in paths:
        if not Path(path).is_file():
            raise SFTError(
                f"training data {path} does not exist (run `distillery train build-data`)"
            )
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise SFTError(f"{path}:{n}: not JSON ({e})") from e
                if not isinstance(row.get("messages"), list):
                    raise SFTError(f"{path}:{n}: no 'messages' list (not build-data output?)")
                rows.append(row)
    if not rows:
        raise SFTError(f"no training examples in {', '.join(map(str, paths))}")
    return rows


def encode_dataset(
    tokenizer: Any, rows: Sequence[dict[str, Any]], max_length: int
) -> tuple[list[Encoded], DataStats]:
    stats = DataStats()
    out: list[Encoded] = []
    for row in rows:
        try:
            enc = encode_conversation(tokenizer, row["messages"])
        except MaskError:
            stats.dropped_unmaskable += 1
            continue
        if len(enc) > max_length:
            stats.dropped_too_long += 1
            continue
        if enc.n_learned == 0:
            stats.dropped_unmaskable += 1
            continue
        out.append(enc)
        stats.examples += 1
        stats.tokens += len(enc)
        stats.learned_tokens += enc.n_learned
        stats.max_tokens = max(stats.max_tokens, len(enc))
        kind = str(row.get("kind", "agent"))
        stats.kinds[kind] = stats.kinds.get(kind, 0) + 1
    return out, stats


def _resolve_device(settings: SFTSettings) -> str:
    import torch

    if settings.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if settings.device == "cuda" and not torch.cuda.is_available():
        raise SFTError("--device cuda but no CUDA GPU is visible; use --device cpu")
    return settings.device


def _resolve_precision(settings: SFTSettings, device: str) -> str:
    import torch

    if settings.precision != "auto":
        if settings.precision == "fp16" and device == "cpu":
            raise SFTError("fp16 training needs a GPU; on CPU use fp32 or bf16")
        return settings.precision
    if device == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def _check_resume(settings: SFTSettings) -> Path | None:
    """The checkpoint to resume from (None: fresh start); refuses mismatched settings."""
    cfg_path = settings.output_dir / "sft_config.json"
    ckpt_dir = settings.output_dir / "checkpoints"
    if is_main_process():
        _drop_partial_checkpoints(ckpt_dir)
    last = _last_complete_checkpoint(ckpt_dir)
    if last is None:
        return None
    if not settings.resume:
        raise SFTError(
            f"{settings.output_dir} already holds checkpoints ({Path(last).name}); resume (the "
            "default) or choose a new --output-dir"
        )
    if cfg_path.is_file():
        old = json.loads(cfg_path.read_text())
        new = settings.to_dict()
        diff = sorted(k for k in new if k not in _RESUME_FREE and old.get(k) != new[k])
        if diff:
            raise SFTError(
                f"cannot resume {settings.output_dir}: settings differ from the interrupted run "
                f"({', '.join(diff)}); use the same flags or a new --output-dir"
            )
    return Path(last)


def is_main_process() -> bool:
    """True in a plain run and on the global rank 0 of a torchrun (DDP) job: the one process
    that writes the run's files (settings, log, final model, summary)."""
    return int(os.environ.get("RANK", "0")) == 0


def data_parallel_world() -> int:
    """torchrun's WORLD_SIZE (1 outside torchrun)."""
    return max(1, int(os.environ.get("WORLD_SIZE", "1") or 1))


def _last_complete_checkpoint(ckpt_dir: Path) -> Path | None:
    """The highest checkpoint-N that holds trainer_state.json (written last by the Trainer);
    every DDP rank picks the same one, whatever another rank is deleting."""
    best: tuple[int, Path] | None = None
    if not ckpt_dir.is_dir():
        return None
    for d in ckpt_dir.glob("checkpoint-*"):
        step = d.name.removeprefix("checkpoint-")
        if step.isdigit() and (d / "trainer_state.json").is_file():
            if best is None or int(step) > best[0]:
                best = (int(step), d)
    return best[1] if best else None


def _drop_partial_checkpoints(ckpt_dir: Path) -> None:
    """Remove checkpoints a hard kill left half-written (the Trainer writes trainer_state.json
    last), so that resuming picks the last complete one instead of failing on it."""
    if not ckpt_dir.is_dir():
        return
    import shutil

    for d in ckpt_dir.glob("checkpoint-*"):
        if d.is_dir() and not (d / "trainer_state.json").is_file():
            print(f"distillery: removing the incomplete checkpoint {d} (interrupted while "
                  "saving)", file=sys.stderr)  # fmt: skip
            shutil.rmtree(d)


@contextmanager
def _graceful_stop(loop: _LoopState) -> Iterator[None]:
    """SIGTERM/SIGINT ask the trainer to checkpoint and stop after the current step."""

    def handler(signum: int, _frame: Any) -> None:
        if loop.requested:  # second signal: stop now
            raise KeyboardInterrupt
        loop.requested = signal.Signals(signum).name
        print(
            f"\ndistillery: {loop.requested} received: saving a checkpoint after this step "
            "(send again to stop at once)",
            file=sys.stderr,
        )

    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def peak_memory_mb(device: str) -> float:
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


@dataclass
class _Plan:
    """What the settings resolve to on this machine (step 1 of train_sft)."""

    device: str
    precision: str
    resume_from: Path | None
    grad_accum: int = 1
    gradient_checkpointing: bool = False


@dataclass
class _LoopState:
    """What the callbacks see and record while the trainer runs."""

    requested: str | None = None
    """Why training must stop early (a signal name or stop_after_steps), None to go on."""
    last_loss: float | None = None
    started: float = field(default_factory=time.monotonic)
    """Set when the trainer is built: `runtime_s` and the log's `elapsed_s` count from it."""
    runtime_s: float = 0.0
    t0: float = 0.0
    tok0: int = 0
    t1: float = 0.0
    tok1: int = 0


def train_sft(
    settings: SFTSettings,
    *,
    extra_callbacks: Sequence[Any] = (),
    on_log: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train; returns the summary (also written to output_dir/train_summary.json).

    Raises SFTError for bad settings/data and Interrupted when stopped early.
    """
    plan = _plan_run(settings)
    tokenizer = _load_tokenizer(settings.model)
    dataset, stats = _prepare_dataset(settings, tokenizer)
    plan.grad_accum = _gradient_accumulation(settings, plan.device)
    gc = settings.gradient_checkpointing
    plan.gradient_checkpointing = plan.device == "cuda" if gc is None else gc
    model = _load_model(settings, plan)
    loop = _LoopState()
    callbacks = [_progress_callback(settings, loop, on_log), *extra_callbacks]
    trainer = _build_trainer(settings, plan, model, tokenizer, dataset, callbacks)
    result = _train(trainer, loop, plan.resume_from, settings.output_dir)
    final = _save_final(trainer, tokenizer, settings.output_dir)
    return _write_summary(settings, plan, stats, loop, trainer, result, final)


def _plan_run(settings: SFTSettings) -> _Plan:
    """Check the settings, resolve device/precision/resume and record the settings."""
    import torch

    if not (settings.model / "config.json").is_file():
        raise SFTError(
            f"base model {settings.model} is not a Hugging Face folder (no config.json); for the "
            "embedded Qwen run `distillery solve` once or pass the folder it prepared"
        )
    if settings.effective_batch % settings.batch_size:
        raise SFTError("effective batch must be a multiple of the per-device batch size")
    if settings.threads is not None:
        if settings.threads < 1:
            raise SFTError("threads must be at least 1")
        torch.set_num_threads(settings.threads)
    device = _resolve_device(settings)
    _check_strategy(settings, device)
    precision = _resolve_precision(settings, device)
    resume_from = _check_resume(settings)
    out = settings.output_dir
    out.mkdir(parents=True, exist_ok=True)
    if is_main_process():
        (out / "sft_config.json").write_text(json.dumps(settings.to_dict(), indent=2))
    return _Plan(device=device, precision=precision, resume_from=resume_from)


def _check_strategy(settings: SFTSettings, device: str) -> None:
    """FSDP needs GPUs: accelerate turns the Trainer's FSDP plugin on only for multi-GPU (and
    other accelerator) runs; on CPU ranks it drops it without a word and trains DDP."""
    if settings.strategy not in ("ddp", "fsdp"):
        raise SFTError(f"unknown strategy {settings.strategy!r}: 'ddp' or 'fsdp'")
    if settings.strategy == "fsdp" and device == "cpu":
        raise SFTError(
            "--strategy fsdp needs CUDA GPUs: on CPU, accelerate ignores the FSDP plugin (it "
            "enables FSDP for multi-GPU/accelerator runs only) and the ranks would train plain "
            "DDP; use --strategy ddp (the default) on CPU"
        )


def _load_tokenizer(model: Path) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _prepare_dataset(settings: SFTSettings, tokenizer: Any) -> tuple[Any, DataStats]:
    """Read, mask and length-filter the conversations into a `datasets.Dataset`."""
    from datasets import Dataset

    rows = read_conversations(settings.data)
    encoded, stats = encode_dataset(tokenizer, rows, settings.max_length)
    if not encoded:
        raise SFTError(
            f"no usable example: {stats.dropped_too_long} longer than --max-length "
            f"{settings.max_length}, {stats.dropped_unmaskable} without maskable assistant turns"
        )
    if not settings.progress:
        import datasets

        datasets.disable_progress_bars()
    dataset = Dataset.from_list([{"input_ids": e.input_ids, "labels": e.labels} for e in encoded])
    return dataset, stats


def _gradient_accumulation(settings: SFTSettings, device: str) -> int:
    """Steps to accumulate so that the effective batch counts every data-parallel replica."""
    import torch

    # data-parallel replicas: torchrun's WORLD_SIZE, else every visible GPU (the Trainer
    # wraps the model in DataParallel), so the effective batch stays what was asked for
    gpus = torch.cuda.device_count() if device == "cuda" else 1
    world = max(1, int(os.environ.get("WORLD_SIZE", "0")) or gpus)
    if settings.effective_batch % (settings.batch_size * world):
        raise SFTError(
            f"effective batch {settings.effective_batch} is not a multiple of batch size "
            f"{settings.batch_size} x {world} data-parallel replicas"
        )
    return max(1, settings.effective_batch // (settings.batch_size * world))


def _load_model(settings: SFTSettings, plan: _Plan) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    dtype = torch.float32
    if settings.method == "full" and plan.precision == "bf16" and plan.device == "cuda":
        dtype = torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(str(settings.model), dtype=dtype)
    if plan.device == "cpu":
        torch.manual_seed(settings.seed)
    return model


def _peft_config(settings: SFTSettings) -> Any:
    """The LoRA configuration (None for full fine-tuning)."""
    if settings.method == "full":
        return None
    if settings.method != "lora":
        raise SFTError(f"unknown method {settings.method!r}: 'lora' or 'full'")
    from peft import LoraConfig

    return LoraConfig(
        r=settings.lora_r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules=settings.target_modules,
        task_type="CAUSAL_LM",
    )


def _trainer_args(settings: SFTSettings, plan: _Plan) -> Any:
    from trl import SFTConfig

    return SFTConfig(
        output_dir=str(settings.output_dir / "checkpoints"),
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=plan.grad_accum,
        learning_rate=settings.learning_rate,
        lr_scheduler_type=settings.lr_scheduler,
        warmup_steps=settings.warmup_ratio,  # a float < 1 is a fraction of the steps
        weight_decay=settings.weight_decay,
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps,
        max_length=settings.max_length,
        # under FSDP, FSDP's own activation checkpointing (fsdp_config) replaces this one
        gradient_checkpointing=plan.gradient_checkpointing and settings.strategy != "fsdp",
        **_fsdp_args(settings, plan),
        bf16=plan.precision == "bf16",
        fp16=plan.precision == "fp16",
        use_cpu=plan.device == "cpu",
        # torchrun on CPU: gloo (NCCL needs GPUs); on GPUs the default (NCCL) stays
        ddp_backend="gloo" if plan.device == "cpu" and data_parallel_world() > 1 else None,
        logging_steps=settings.logging_steps,
        save_strategy="steps",
        save_steps=settings.save_steps,
        save_total_limit=settings.save_total_limit,
        seed=settings.seed,
        data_seed=settings.seed,
        report_to="none",
        disable_tqdm=not settings.progress,
        dataloader_num_workers=0,
        packing=False,
        remove_unused_columns=True,
        include_num_input_tokens_seen="non_padding",
    )


def _fsdp_args(settings: SFTSettings, plan: _Plan) -> dict[str, Any]:
    """The Trainer's FSDP arguments: FSDP2 (`fully_shard` per decoder layer, the model's
    `_no_split_modules`), full state dicts so that checkpoints and `final/` are ordinary HF
    folders; {} for DDP."""
    if settings.strategy != "fsdp":
        return {}
    config = {
        "version": 2,
        "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "state_dict_type": "FULL_STATE_DICT",
        "reshard_after_forward": True,
        "activation_checkpointing": plan.gradient_checkpointing,
    }
    return {"fsdp": True, "fsdp_config": config}


def _progress_callback(
    settings: SFTSettings,
    loop: _LoopState,
    on_log: Callable[[dict[str, Any]], None] | None,
) -> Any:
    """A TrainerCallback: log lines, token/time marks, and the early stop on request."""
    from transformers import TrainerCallback

    log_path = settings.output_dir / "log.jsonl"

    class _Progress(TrainerCallback):  # type: ignore[misc]
        def on_log(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            logs = kw.get("logs")
            if not logs:
                return
            rec = {"step": state.global_step, "max_steps": state.max_steps, **logs}
            rec["elapsed_s"] = round(time.monotonic() - loop.started, 2)
            if "loss" in logs:
                loop.last_loss = logs["loss"]
            if not state.is_world_process_zero:
                return  # the logged loss is the mean over the ranks already: rank 0 writes it
            with log_path.open("a") as f:
                f.write(json.dumps(rec) + "\n")
            if on_log is not None:
                on_log(rec)

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            loop.t0, loop.tok0 = time.monotonic(), state.num_input_tokens_seen

        def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            loop.t1, loop.tok1 = time.monotonic(), state.num_input_tokens_seen

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            stop_after, deadline = settings.stop_after_steps, settings.stop_at
            if not loop.requested and stop_after is not None and state.global_step >= stop_after:
                loop.requested = f"stop_after_steps={stop_after}"
            if not loop.requested and deadline is not None and time.time() >= deadline:
                loop.requested = "time budget spent"
            if loop.requested:
                control.should_save = True
                control.should_training_stop = True

    return _Progress()


def _sharded_parameters(model: Any) -> int:
    """How many of the model's parameters are DTensor shards (what FSDP2 turns them into)."""
    if model is None:
        return 0
    from torch.distributed.tensor import DTensor

    return sum(isinstance(p, DTensor) for p in model.parameters())


def _build_trainer(
    settings: SFTSettings,
    plan: _Plan,
    model: Any,
    tokenizer: Any,
    dataset: Any,
    callbacks: list[Any],
) -> Any:
    from trl import SFTTrainer

    peft_config = _peft_config(settings)
    args = _trainer_args(settings, plan)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
    )
    if not settings.progress:
        from transformers import PrinterCallback

        trainer.remove_callback(PrinterCallback)  # it prints every log dict on stdout
    return trainer


def _train(trainer: Any, loop: _LoopState, resume_from: Path | None, out: Path) -> Any:
    """Run the training loop under the graceful-stop handlers; Interrupted if stopped early."""
    with _graceful_stop(loop):
        result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    loop.runtime_s = time.monotonic() - loop.started
    if loop.requested:
        raise Interrupted(
            f"training stopped at step {trainer.state.global_step}/{trainer.state.max_steps} "
            f"({loop.requested}); a checkpoint is in {out / 'checkpoints'}: run the same "
            "command again to resume"
        )
    return result


def _save_final(trainer: Any, tokenizer: Any, out: Path) -> Path:
    final = out / "final"
    trainer.save_model(str(final))  # (writes on the main process only)
    if is_main_process():
        tokenizer.save_pretrained(str(final))
    return final


def _write_summary(
    settings: SFTSettings,
    plan: _Plan,
    stats: DataStats,
    loop: _LoopState,
    trainer: Any,
    result: Any,
    final: Path,
) -> dict[str, Any]:
    """The run's summary (train_summary.json); SFTError when the loss diverged."""
    epochs_done = float(trainer.state.epoch or settings.epochs)
    # this run's non-padding tokens over the training loop's time (setup excluded)
    trained_tokens = int(loop.tok1 - loop.tok0)
    loop_s = float(loop.t1 - loop.t0)
    summary: dict[str, Any] = {
        "base_model": str(settings.model),
        "method": settings.method,
        "device": plan.device,
        "precision": plan.precision,
        "gradient_checkpointing": plan.gradient_checkpointing,
        "gradient_accumulation_steps": plan.grad_accum,
        "resumed_from": str(plan.resume_from) if plan.resume_from else None,
        "settings": settings.to_dict(),
        "data": asdict(stats),
        "metrics": {
            "train_loss": result.training_loss,
            "final_loss": loop.last_loss,
            "global_step": trainer.state.global_step,
            "epochs": epochs_done,
            "runtime_s": round(loop.runtime_s, 2),
            "train_loop_s": round(loop_s, 2),
            "trained_tokens": trained_tokens,
            "tokens_per_s": round(trained_tokens / loop_s, 1) if loop_s > 0 else None,
            "peak_memory_mb": round(peak_memory_mb(plan.device), 1),
        },
        "final_dir": str(final),
    }
    loss = summary["metrics"]["train_loss"]
    if isinstance(loss, float) and math.isnan(loss):
        raise SFTError("training diverged (loss is NaN): lower --learning-rate or use fp32")
    summary["data_parallel_world"] = data_parallel_world()
    # parameters the trained model holds as DTensor shards (FSDP2): 0 under DDP
    summary["sharded_parameters"] = _sharded_parameters(trainer.model_wrapped or trainer.model)
    if is_main_process():
        (settings.output_dir / "train_summary.json").write_text(json.dumps(summary, indent=2))
    return summary
