"""`distillery solve "QUESTION"`: run the agent once, printing each step (or the JSON)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from agent.trajectory import Candidate, Step, Trajectory
from distillery.options import (
    AGENT_FIELDS,
    ALIASES,
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_MODEL,
    MODEL_FIELDS,
    RETRIEVAL_FIELDS,
    SANDBOX_FIELDS,
    UsageError,
    add_settings_flags,
    fail,
    settings_from_args,
)
from distillery.settings import Settings

# Exit statuses: 0 answered, 1 no answer (max steps without one, timeout), 2 usage or
# configuration error, 3 the model could not be reached or failed.
EXIT_NO_ANSWER = EXIT_FAILED

TOOL_FIELDS = ["mcp_config"]
FIELDS = [*MODEL_FIELDS, *AGENT_FIELDS, *SANDBOX_FIELDS, *RETRIEVAL_FIELDS, *TOOL_FIELDS]


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "solve",
        help="solve one question with the agent",
        description="Solve a question by looping thought -> code -> observation. "
        "Without --model-url the embedded model (Qwen2.5-Coder-0.5B-Instruct) runs in-process. "
        "Every option also reads its DISTILLERY_* variable; flags win.",
    )
    p.add_argument("question", help="the task, in plain text")
    add_settings_flags(p.add_argument_group("model (default: embedded engine)"), MODEL_FIELDS,
                       flags=ALIASES)
    add_settings_flags(p.add_argument_group("agent"), AGENT_FIELDS, flags=ALIASES)
    add_settings_flags(p.add_argument_group("sandbox"), SANDBOX_FIELDS)
    add_settings_flags(p.add_argument_group("retrieval"), RETRIEVAL_FIELDS)
    add_settings_flags(p.add_argument_group("tools"), TOOL_FIELDS)
    p.add_argument("--no-search", action="store_true", help="do not offer the web_search tool")
    p.add_argument("--json", action="store_true", help="print the trajectory JSON on stdout")
    p.set_defaults(func=run)


def settings_for(args: argparse.Namespace) -> Settings:
    """Flags override DISTILLERY_* variables; unset flags leave them alone. One run needs no
    pre-started spare workers (sandbox_pool_size 0 unless the variable says otherwise)."""
    return settings_from_args(args, FIELDS, command_defaults={"sandbox_pool_size": 0})


def run(args: argparse.Namespace) -> int:
    try:
        settings = settings_for(args)
    except UsageError as e:
        return fail(str(e), EXIT_CONFIG)
    try:
        traj = asyncio.run(
            _solve(args.question, settings, show_steps=not args.json, search=not args.no_search)
        )
    except Exception as e:  # configuration and start-up failures: one line, no traceback
        from distillery.components import ConfigError

        code = EXIT_CONFIG if isinstance(e, ConfigError) else EXIT_MODEL
        return fail(str(e) or type(e).__name__, code)
    if args.json:
        print(traj.to_json(indent=2))
    else:
        _print_result(traj)
    if traj.finish_reason == "error":
        return fail(traj.error or "the run failed", EXIT_MODEL)
    return 0 if traj.finish_reason == "answer" else EXIT_NO_ANSWER


async def _solve(
    question: str, settings: Settings, *, show_steps: bool, search: bool
) -> Trajectory:
    from agent.agent import run_agent
    from distillery.components import build_components

    if show_steps:
        _err("distillery: loading components (first run prepares the embedded model and index)...")
    components = build_components(settings, with_retriever=search)
    config = settings.agent_config()

    async def on_step(step: Step) -> None:
        _print_step(step)
        if step.kind != "action" or _ends_run(step):
            return
        if step.number < config.max_steps:
            _waiting(step.number + 1, config.samples, components.model.model_name)
        else:
            _err("distillery: steps used up: asking the model for a final answer...")

    try:
        await components.tools.start()  # MCP servers: spawned / connected, tools listed
        if show_steps:
            _waiting(1, config.samples, components.model.model_name)
        return await run_agent(
            question,
            model=components.model,
            executor=components.executor,
            tools=components.tools_for_run(),
            config=config,
            on_step=on_step if show_steps else None,
            protocol=components.protocol,
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
        print(f"  candidate #{c.index}: {_outcome(c)}", file=out)
    if step.note:
        print(f"  note: {step.note}", file=out)
    kept = step.kept
    if kept.thought:
        print(f"Thought: {kept.thought.strip()}", file=out)
    if kept.code:
        print("Code:\n" + kept.code.rstrip(), file=out)
    print(step.observation.rstrip(), file=out)
    out.flush()


def _outcome(c: Candidate) -> str:
    """What happened to one candidate, in a few words (a cancelled one is not 'ok')."""
    if c.finish_reason == "cancelled":
        return "cancelled (another candidate was kept first)"
    if c.parse_error is not None:
        return "parse error: " + _first_line(c.parse_error)
    if c.execution is None:
        return "not run"
    if not c.execution.ok:
        lines = (c.execution.error or "").strip().splitlines()
        return f"{c.execution.error_kind or 'error'}: {lines[-1] if lines else ''}"
    return "ok (repeats an earlier step)" if c.repeat else "ok"


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
