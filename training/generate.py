"""Teacher trajectories (`distillery generate`): the teacher runs as an agent over a question set.

The teacher goes through the same loop as the served student (`agent.agent.run_agent`),
with a bounded pool of concurrent runs. Output is append-only JSONL, one record per
finished question, flushed as it completes: an interrupted job loses only the runs in
flight, and running the same command again skips the ids already done (failed runs are
retried). Per-run failures (model outage, timeout, executor crash) are recorded in the
file, never fatal.

Modes:
- agent (default): thought -> code -> observation trajectories;
- agent with first-thought prefix (`ftp=True`): a plain chain-of-thought answer first,
  whose first paragraph is prefilled as the start of the agent's first thought;
- cot: the chain-of-thought answer alone (the CoT-distillation baseline's data).

A record: {"id", "question", "gold", "task", "source", "mode", "ftp", "status": "ok"|"error",
"prediction", "correct", "grade", "trajectory" (agent), "cot" (cot/ftp), "tools" (names),
"tool_specs" (what the prompt listed for each host tool: name, signature, description, argument
schema; empty in cot mode; build-data renders the student's prompt from them), "teacher",
"error", "error_type", "elapsed_s", "created_at"}, and "hint" for a hinted run.

Hinted runs (rationalization): a question whose `meta["hint"]` is set is asked with the hint
appended to its task text (`hinted_task`): only the teacher sees it. The record's "question"
stays the question alone and "hint" holds the hint; the trajectory records what the teacher
saw. build-data renders such a run with the question alone (training/build_data.py).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from agent.executor import Executor, ToolFn
from agent.model_client import ModelClient, ModelError, SamplingParams
from agent.tools import host_tool_specs
from training.cot import cot_messages, first_paragraph
from training.grading import extract_answer, grade_with_judge
from training.questions import Question
from training.run_folder import RecordAppender, iter_records

if TYPE_CHECKING:
    from agent.agent import AgentConfig

Mode = Literal["agent", "cot"]


class GenerateError(RuntimeError):
    """Generation cannot start as configured; the message says what to change."""


@dataclass
class GenerateConfig:
    mode: Mode = "agent"
    ftp: bool = False
    """First-thought prefix (agent mode): a CoT pass whose first paragraph starts the thought."""
    concurrency: int = 4
    """Questions in flight."""
    agent: AgentConfig | None = None
    """None: AgentConfig(prompt='teacher', samples=1)."""
    cot_temperature: float = 0.0
    """Sampling temperature of the CoT pass (--mode cot, and the first-thought prefix)."""
    cot_max_tokens: int = 2048
    """Completion tokens of the CoT pass."""
    retry_errors: bool = True
    """On resume, run again the ids whose last record is an error."""
    progress: bool = True


@dataclass
class GenerateSummary:
    out: str
    questions: int
    skipped_done: int = 0
    generated: int = 0
    succeeded: int = 0
    errors: int = 0
    correct: int = 0
    graded: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    elapsed_s: float = 0.0
    error_types: dict[str, int] = field(default_factory=dict)

    def count(self, rec: dict[str, Any]) -> None:
        """Add one finished record (a `run_question` result)."""
        self.generated += 1
        self.prompt_tokens += rec["usage"]["prompt_tokens"]
        self.completion_tokens += rec["usage"]["completion_tokens"]
        if rec["status"] == "ok":
            self.succeeded += 1
        else:
            self.errors += 1
            et = str(rec["error_type"])
            self.error_types[et] = self.error_types.get(et, 0) + 1
        if rec["correct"] is not None:
            self.graded += 1
            self.correct += int(rec["correct"])

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["accuracy"] = round(self.correct / self.graded, 4) if self.graded else None
        minutes = self.elapsed_s / 60
        d["trajectories_per_min"] = round(self.generated / minutes, 2) if minutes > 0 else None
        return d


def default_agent_config() -> AgentConfig:
    from agent.agent import AgentConfig

    return AgentConfig(prompt="teacher", samples=1)


def done_ids(path: Path, *, retry_errors: bool) -> tuple[set[str], dict[str, Any] | None]:
    """Ids already finished in `path` (last record per id), and the first record (for checks)."""
    last: dict[str, str] = {}
    first: dict[str, Any] | None = None
    for rec in iter_records(path):  # a half-written last line is skipped
        first = first or rec
        last[str(rec["id"])] = str(rec.get("status"))
    return {i for i, s in last.items() if s == "ok" or not retry_errors}, first


async def _cot_pass(
    model: ModelClient, q: Question, cfg: GenerateConfig, seed: int | None
) -> dict[str, Any]:
    messages = cot_messages(q.question, q.task)
    params = SamplingParams(
        n=1,
        temperature=cfg.cot_temperature,
        top_p=1.0 if cfg.cot_temperature == 0 else 0.95,
        max_tokens=cfg.cot_max_tokens,
        stop=[],
        seed=seed,
    )
    comp = await model.complete(messages, params)
    if not comp.choices:
        raise ModelError("the teacher returned no choice for the chain-of-thought request")
    choice = comp.choices[0]
    return {
        "messages": messages,
        "text": choice.text,
        "finish_reason": choice.finish_reason,
        "usage": comp.usage.to_dict(),
    }


async def run_question(
    q: Question,
    *,
    model: ModelClient,
    executor: Executor,
    tools: Mapping[str, ToolFn],
    cfg: GenerateConfig,
    agent_config: AgentConfig,
    judge: ModelClient | None = None,
) -> dict[str, Any]:
    """One question -> one record. Never raises for model/executor failures (recorded)."""
    started = time.monotonic()
    rec = _new_record(q, cfg, tools, model.model_name)
    prediction: Any = None
    try:
        if cfg.mode == "cot" or cfg.ftp:
            cot = await _cot_pass(model, q, cfg, agent_config.seed)
            rec["cot"] = cot
            _add_usage(rec, cot["usage"]["prompt_tokens"], cot["usage"]["completion_tokens"])
        if cfg.mode == "cot":
            prediction = extract_answer(rec["cot"]["text"])
        else:
            prediction = await _agent_pass(
                q, rec, model=model, executor=executor, tools=tools, cfg=cfg,
                agent_config=agent_config,
            )  # fmt: skip
    except ModelError as e:
        rec.update(status="error", error=str(e), error_type=type(e).__name__)
    except Exception as e:  # noqa: BLE001 - one broken run must not end the job; it is recorded
        rec.update(status="error", error=f"{type(e).__name__}: {e}", error_type=type(e).__name__)
    rec["prediction"] = _json_safe(prediction)
    if rec["status"] == "ok" and q.answer is not None:
        await _grade(rec, q, prediction, judge)
    rec["elapsed_s"] = round(time.monotonic() - started, 3)
    return rec


def hinted_task(q: Question) -> str:
    """The task text the teacher is given: the question, and its hint when it has one."""
    hint = q.meta.get("hint") if q.meta else None
    return f"{q.question}\n\n{hint}" if hint else q.question


def _new_record(
    q: Question, cfg: GenerateConfig, tools: Mapping[str, ToolFn], teacher: str
) -> dict[str, Any]:
    """A record with every field, before the run (status ok until something fails)."""
    return {
        "id": q.id,
        "question": q.question,
        "gold": q.answer,
        "task": q.task,
        "grader": q.spec.grader,
        "source": q.source,
        "mode": cfg.mode,
        "ftp": cfg.ftp and cfg.mode == "agent",
        "status": "ok",
        "prediction": None,
        "correct": None,
        "grade": None,
        "trajectory": None,
        "cot": None,
        "tools": sorted(tools),
        "tool_specs": [] if cfg.mode == "cot" else [s.to_json() for s in host_tool_specs(tools)],
        "teacher": teacher,
        "error": None,
        "error_type": None,
        "usage": {"prompt_tokens": 0, "completion_tokens": 0},
        "created_at": time.time(),
        **({"hint": q.meta["hint"]} if q.meta and q.meta.get("hint") else {}),
    }


def _add_usage(rec: dict[str, Any], prompt_tokens: int, completion_tokens: int) -> None:
    rec["usage"]["prompt_tokens"] += prompt_tokens
    rec["usage"]["completion_tokens"] += completion_tokens


async def _agent_pass(
    q: Question,
    rec: dict[str, Any],
    *,
    model: ModelClient,
    executor: Executor,
    tools: Mapping[str, ToolFn],
    cfg: GenerateConfig,
    agent_config: AgentConfig,
) -> Any:
    """The agent run (its first thought prefilled under ftp) into `rec`; returns its answer."""
    from agent.agent import run_agent

    prefix = None
    if cfg.ftp:
        paragraph = first_paragraph(rec["cot"]["text"])
        rec["cot"]["prefix"] = paragraph or None
        # run_agent prefills "Thought: <prefix>": the paragraph, then a blank line
        prefix = f"{paragraph}\n\n" if paragraph else None
    traj = await run_agent(
        hinted_task(q),
        model=model,
        executor=executor,
        tools=tools,
        config=agent_config,
        thought_prefix=prefix,
        run_id=q.id,
    )
    rec["trajectory"] = traj.to_dict()
    _add_usage(rec, traj.usage.prompt_tokens, traj.usage.completion_tokens)
    if traj.finish_reason in ("error", "timeout"):
        rec["status"] = "error"
        rec["error"] = traj.error or traj.finish_reason
        rec["error_type"] = traj.error_type or traj.finish_reason
    return traj.answer


async def _grade(
    rec: dict[str, Any], q: Question, prediction: Any, judge: ModelClient | None
) -> None:
    try:
        g = await grade_with_judge(q.spec.grader, q.question, prediction, q.answer, judge)
        # (the sympy check runs in a helper process; a slow one only delays this run)
        rec["grade"] = g.to_dict()
        rec["correct"] = g.correct
    except ModelError as e:  # the judge is down: keep the run, grade it later
        rec["grade"] = {"error": f"judge unavailable: {e}"}


def _json_safe(x: Any) -> Any:
    try:
        json.dumps(x)
        return x
    except (TypeError, ValueError):
        return str(x)


async def generate(
    questions: Sequence[Question],
    out: Path,
    *,
    model: ModelClient,
    executor: Executor,
    tools_factory: Callable[[], Mapping[str, ToolFn]] = dict,
    config: GenerateConfig | None = None,
    judge: ModelClient | None = None,
    run: Callable[[Question], Awaitable[dict[str, Any]]] | None = None,
    tools_for: Callable[[Question], Mapping[str, ToolFn]] | None = None,
) -> GenerateSummary:
    """Run every question not done yet in `out`; returns the summary of this invocation.

    Each run's tools come from `tools_for(question)` when given (`tools_by_task`: the
    tools its task names), else from `tools_factory()`. `run`, when given, makes each
    question's record instead of `run_question` (evaluation through a deployed gateway); it
    must return the same record shape and never raise.
    """
    from tqdm import tqdm

    cfg = config or GenerateConfig()
    agent_config = _check_config(cfg)
    out = Path(out)
    todo = _pending(questions, out, cfg)
    if tools_for is None:
        tools_for = lambda _q: tools_factory()  # noqa: E731
    elif run is None:
        _check_task_tools(todo, tools_for)
    summary = GenerateSummary(out=str(out), questions=len(questions))
    summary.skipped_done = len(questions) - len(todo)
    started = time.monotonic()
    if not todo:
        return summary

    appender = RecordAppender(out)
    bar = tqdm(
        total=len(todo),
        desc="generate",
        unit="run",
        file=sys.stderr,
        disable=not cfg.progress,
        dynamic_ncols=True,
    )
    queue: asyncio.Queue[Question] = asyncio.Queue()
    for q in todo:
        queue.put_nowait(q)

    async def worker() -> None:
        while True:
            try:
                q = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            rec = await run(q) if run is not None else await run_question(
                q,
                model=model,
                executor=executor,
                tools=tools_for(q),
                cfg=cfg,
                agent_config=agent_config,
                judge=judge,
            )
            appender.write(rec)
            summary.count(rec)
            bar.set_postfix(ok=summary.succeeded, err=summary.errors, correct=summary.correct)
            bar.update(1)

    try:
        await asyncio.gather(*(worker() for _ in range(min(cfg.concurrency, len(todo)))))
    finally:
        summary.elapsed_s = round(time.monotonic() - started, 2)
        bar.close()
        appender.close()
    return summary


def tools_by_task(
    tools_for_run: Callable[[Collection[str] | None], Mapping[str, ToolFn]],
) -> Callable[[Question], Mapping[str, ToolFn]]:
    """`generate`'s `tools_for` over a runtime's `tools_for_run(names)`: each question gets
    what its task names (None: all the runtime's tools; (): none; names: those)."""

    def tools(q: Question) -> Mapping[str, ToolFn]:
        wanted = q.spec.tools
        if wanted is None:
            return tools_for_run(None)
        return tools_for_run(list(wanted)) if wanted else {}

    return tools


def _check_task_tools(
    todo: Sequence[Question], tools_for: Callable[[Question], Mapping[str, ToolFn]]
) -> None:
    """GenerateError, before any run, when a task names tools the job does not serve."""
    seen: set[str] = set()
    for q in todo:
        spec = q.spec
        key = f"{spec.name}:{spec.tools}"
        if key in seen:
            continue
        seen.add(key)
        try:
            tools_for(q)
        except ValueError as e:  # UnknownToolsError names them
            raise GenerateError(
                f"task {spec.name!r} (question {q.id}) runs with the tools "
                f"{', '.join(spec.tools or ())}, which this job does not serve ({e}): give the "
                "MCP servers that have them with --mcp-config (DISTILLERY_MCP_CONFIG)"
            ) from None


def _check_config(cfg: GenerateConfig) -> AgentConfig:
    """GenerateError for settings that cannot run; returns the agent configuration to use."""
    if cfg.concurrency < 1:
        raise GenerateError("concurrency must be at least 1")
    if cfg.mode not in ("agent", "cot"):
        raise GenerateError(f"unknown mode {cfg.mode!r}: 'agent' or 'cot'")
    agent_config = cfg.agent or default_agent_config()
    try:
        from agent.prompts import system_prompt_template
        from agent.protocol import load_protocol

        agent_config.validate()  # (loads the protocol profile too)
        system_prompt_template(agent_config.prompt, load_protocol(agent_config.protocol))
    except ValueError as e:
        raise GenerateError(str(e)) from e
    return agent_config


def _pending(questions: Sequence[Question], out: Path, cfg: GenerateConfig) -> list[Question]:
    """The questions `out` has no finished record of; refuses a file of another mode."""
    done, first = done_ids(out, retry_errors=cfg.retry_errors)
    if first is not None:
        want_ftp = cfg.ftp and cfg.mode == "agent"
        if first.get("mode") != cfg.mode or bool(first.get("ftp")) != want_ftp:
            raise GenerateError(
                f"{out} holds mode={first.get('mode')} ftp={first.get('ftp')} records; this run is "
                f"mode={cfg.mode} ftp={want_ftp}: use another --out"
            )
    return [q for q in questions if q.id not in done]
