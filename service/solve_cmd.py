"""`distillery solve "QUESTION"`: run the agent once, printing each step (or the JSON)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from agent.trajectory import Step, Trajectory
from service.settings import Settings

# Exit statuses: 0 answered, 1 no answer (max steps without one, timeout), 2 usage or
# configuration error, 3 the model could not be reached or failed.
EXIT_NO_ANSWER = 1
EXIT_CONFIG = 2
EXIT_MODEL = 3


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "solve",
        help="solve one question with the agent",
        description="Solve a question by looping thought -> code -> observation. "
        "Without --model-url the embedded model (Qwen2.5-Coder-0.5B-Instruct) runs in-process.",
    )
    p.add_argument("question", help="the task, in plain text")
    src = p.add_argument_group("model (default: embedded engine)")
    src.add_argument(
        "--model-url", help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1"
    )
    src.add_argument("--model", help="served model name (with --model-url)")
    src.add_argument("--model-path", type=Path, help="local Hugging Face folder run in-process")
    p.add_argument("--samples", "-n", type=int, help="N candidate actions per step (SAG)")
    p.add_argument("--max-steps", type=int, help="steps before the final-answer call")
    p.add_argument("--policy", choices=["first", "majority"], help="how a step picks its candidate")
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-p", type=float)
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--threads", type=int, help="CPU threads of the in-process engine")
    p.add_argument("--prompt", help="'student', 'teacher', or a prompt file")
    p.add_argument(
        "--executor",
        choices=["sandbox", "local"],
        help="'sandbox' (nsjail, default) or 'local' (unjailed subprocess, development only)",
    )
    p.add_argument("--no-search", action="store_true", help="do not offer the web_search tool")
    p.add_argument("--json", action="store_true", help="print the trajectory JSON on stdout")
    p.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Flags override DISTILLERY_* variables; unset flags leave them alone."""
    mapping = {
        "model_url": args.model_url,
        "model": args.model,
        "model_path": args.model_path,
        "samples": args.samples,
        "max_steps": args.max_steps,
        "policy": args.policy,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "max_tokens": args.max_tokens,
        "seed": args.seed,
        "engine_threads": args.threads,
        "prompt": args.prompt,
        "executor": args.executor,
    }
    values: dict[str, Any] = {k: v for k, v in mapping.items() if v is not None}
    if "DISTILLERY_SANDBOX_POOL_SIZE" not in os.environ:
        values["sandbox_pool_size"] = 0  # one run: pre-started spare workers would go unused
    return Settings(**values)


def run(args: argparse.Namespace) -> int:
    if args.model_url and args.model_path:
        return _fail("use either --model-url or --model-path, not both", EXIT_CONFIG)
    try:
        settings = settings_from_args(args)
    except ValidationError as e:
        errs = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
        return _fail(f"invalid option: {errs}", EXIT_CONFIG)
    try:
        traj = asyncio.run(
            _solve(args.question, settings, show_steps=not args.json, search=not args.no_search)
        )
    except Exception as e:  # configuration and start-up failures: one line, no traceback
        from service.components import ConfigError

        code = EXIT_CONFIG if isinstance(e, ConfigError) else EXIT_MODEL
        return _fail(str(e) or type(e).__name__, code)
    if args.json:
        print(traj.to_json(indent=2))
    else:
        _print_result(traj)
    if traj.finish_reason == "error":
        return _fail(traj.error or "the run failed", EXIT_MODEL)
    return 0 if traj.finish_reason == "answer" else EXIT_NO_ANSWER


async def _solve(
    question: str, settings: Settings, *, show_steps: bool, search: bool
) -> Trajectory:
    from agent.agent import run_agent
    from service.components import agent_config, build_components

    if show_steps:
        _err("distillery: loading components (first run prepares the embedded model and index)...")
    components = build_components(settings, with_retriever=search)
    config = agent_config(settings)

    async def on_step(step: Step) -> None:
        _print_step(step)
        if step.kind != "action" or _ends_run(step):
            return
        if step.number < config.max_steps:
            _waiting(step.number + 1, config.samples, components.model.model_name)
        else:
            _err("distillery: steps used up: asking the model for a final answer...")

    try:
        if show_steps:
            _waiting(1, config.samples, components.model.model_name)
        return await run_agent(
            question,
            model=components.model,
            executor=components.executor,
            tools=components.tools_for_run(),
            config=config,
            on_step=on_step if show_steps else None,
        )
    finally:
        await components.aclose()


def _ends_run(step: Step) -> bool:
    return any(
        c.execution is not None and c.execution.is_final
        for c in step.candidates
        if c.index == step.chosen
    )


def _waiting(step_number: int, samples: int, model: str) -> None:
    """A step can take minutes on a CPU: say what is happening (stderr, not the transcript)."""
    _err(f"distillery: step {step_number}: sampling {samples} candidate(s) from {model}...")


def _print_step(step: Step) -> None:
    out = sys.stdout
    title = "final-answer call" if step.kind == "final_answer_call" else f"step {step.number}"
    valid = sum(1 for c in step.candidates if c.valid)
    chosen = "none valid" if step.chosen is None else f"kept #{step.chosen}"
    print(
        f"\n=== {title}: {len(step.candidates)} candidate(s), {valid} valid, {chosen} "
        f"({step.total_s:.2f}s, {step.usage.completion_tokens} tokens) ===",
        file=out,
    )
    for c in step.candidates:
        if c.parse_error is not None:
            outcome = "parse error: " + _first_line(c.parse_error)
        elif c.execution is not None and not c.execution.ok:
            lines = (c.execution.error or "").strip().splitlines()
            outcome = f"{c.execution.error_kind or 'error'}: {lines[-1] if lines else ''}"
        else:
            outcome = "ok"
        print(f"  candidate #{c.index}: {outcome}", file=out)
    kept = step.kept
    if kept.thought:
        print(f"Thought: {kept.thought.strip()}", file=out)
    if kept.code:
        print("Code:\n" + kept.code.rstrip(), file=out)
    print(step.observation.rstrip(), file=out)
    out.flush()


def _print_result(traj: Trajectory) -> None:
    print(
        f"\n=== {traj.finish_reason} after {len(traj.steps)} step(s), {traj.total_s:.1f}s, "
        f"{traj.usage.total_tokens} tokens ==="
    )
    answer = traj.answer if isinstance(traj.answer, str) else json.dumps(traj.answer)
    print(f"Final answer: {answer}")


def _first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0] if lines else ""


def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _fail(msg: str, code: int) -> int:
    _err("distillery: error: " + " ".join(msg.split()))
    return code
