"""The agent loop: thought -> code -> observation, with self-consistent action generation.

Per step, ONE model request samples N candidate replies (`n=N`). Each is parsed;
the parsable ones run in isolation (`session.try_candidates`). Policy `first` keeps the
first valid candidate in sampling order (parses, runs without error); `majority` keeps
the earliest member of the most common observation among valid candidates. The kept
candidate's state is committed; if none is valid, all are discarded and candidate 0's
error becomes the observation. `final_answer(x)` ends the run. When `max_steps` run
out, one more call (n=1) asks for the final answer from the transcript.

The same loop serves requests, generates teacher trajectories (with a first-thought
prefix) and runs evaluations.
"""

from __future__ import annotations

import ast
import asyncio
import logging
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

from agent.answer_check import AnswerCheck, apply_answer_check
from agent.executor import ExecutionSession, Executor, ToolFn
from agent.model_client import (
    Completion,
    Message,
    ModelClient,
    ModelError,
    SamplingParams,
)
from agent.observation import render_error, render_observation
from agent.parsing import ParseError, check_reserved_names, normalize_reply, parse_action
from agent.prompts import initial_messages
from agent.protocol import load_protocol
from agent.trajectory import Candidate, ModelRequest, Step, Trajectory

log = logging.getLogger(__name__)

Policy = Literal["first", "majority"]
StepCallback = Callable[[Step], Awaitable[None]]


@dataclass
class AgentConfig:
    max_steps: int = 5
    """Action steps before the final-answer call."""
    samples: int = 8
    """N: candidate actions sampled per step (one request with n=N); 1 = the plain agent."""
    policy: Policy = "first"
    """How a step picks its candidate: 'first' valid in sampling order, or 'majority'."""
    temperature: float = 0.4
    """Sampling temperature of action steps."""
    top_p: float = 0.8
    """Nucleus sampling of action steps."""
    max_tokens: int = 1024
    """Completion tokens per candidate."""
    seed: int | None = None
    """Sampling seed (None: the server's choice)."""
    prompt: str = "student"
    """'student' | 'teacher' | a path to a prompt file."""
    protocol: str | None = None
    """Protocol profile (every text the model sees): 'default', 'paper', a .toml/.json
    profile file or an exported checkpoint folder (distillery_protocol.json); unset: the
    profile exported with the model's folder when it has one, else 'default'."""
    observation_max_chars: int = 8000
    """Longer observations are truncated with a visible marker."""
    timeout_s: float | None = None
    """Wall-clock limit for the whole run; past it the run ends with finish_reason 'timeout'."""

    def validate(self) -> None:
        problems = []
        if self.max_steps < 1:
            problems.append("max_steps must be >= 1")
        if self.samples < 1:
            problems.append("samples must be >= 1")
        if self.policy not in ("first", "majority"):
            problems.append(f"policy must be 'first' or 'majority', not {self.policy!r}")
        if self.max_tokens < 1:
            problems.append("max_tokens must be >= 1")
        if not 0 < self.top_p <= 1:
            problems.append("top_p must be in (0, 1]")
        if self.temperature < 0:
            problems.append("temperature must be >= 0")
        if self.observation_max_chars < 200:
            problems.append("observation_max_chars must be >= 200")
        if self.timeout_s is not None and self.timeout_s <= 0:
            problems.append("timeout_s must be > 0 (or None)")
        try:
            load_protocol(self.protocol)
        except ValueError as e:
            problems.append(str(e))
        if problems:
            raise ValueError("invalid agent config: " + "; ".join(problems))

    def sampling(self, n: int | None = None) -> SamplingParams:
        return SamplingParams(
            n=self.samples if n is None else n,
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=self.max_tokens,
            stop=list(load_protocol(self.protocol).stop),
            seed=self.seed,
        )


async def run_agent(
    question: str,
    *,
    model: ModelClient,
    executor: Executor,
    tools: Mapping[str, ToolFn],
    config: AgentConfig = AgentConfig(),  # noqa: B008 - never mutated
    thought_prefix: str | None = None,
    on_step: StepCallback | None = None,
    run_id: str | None = None,
    answer_check: AnswerCheck | None = None,
) -> Trajectory:
    """Solve `question`; see the module docstring.

    Never raises for model, executor or tool failures, nor for an exception from
    `on_step`: the trajectory ends with finish_reason 'error' (error, error_type set) or
    'timeout', keeping the steps so far. Raises ValueError for bad input (empty question,
    invalid config, unknown prompt). Cancellation closes the execution session and
    propagates. `answer_check` (agent.answer_check) validates final answers on the host:
    a rejected one is an error observation and the run goes on."""
    if not question or not question.strip():
        raise ValueError("the question is empty")
    config.validate()
    protocol = load_protocol(config.protocol)
    messages = initial_messages(
        question, prompt=config.prompt, tool_names=list(tools), protocol=protocol
    )
    traj = Trajectory(
        id=run_id or f"run-{uuid.uuid4().hex[:16]}",
        question=question,
        model=model.model_name,
        messages=messages,
        config={**asdict(config), "protocol_fingerprint": protocol.fingerprint()},
        started_at=time.time(),
    )
    t0 = time.perf_counter()
    run = _Run(traj, model, config, thought_prefix, on_step)
    run.answer_check = answer_check
    scope = asyncio.timeout(config.timeout_s)  # None: no limit
    try:
        async with scope:
            await run.execute(executor, tools)
    except TimeoutError as e:
        if scope.expired():
            traj.finish_reason = "timeout"
            traj.error = f"the run exceeded its time limit of {config.timeout_s:g} s"
            traj.error_type = "TimeoutError"
        else:
            _fail(traj, e)
    except Exception as e:  # model / executor / tool failures end the run, recorded
        _fail(traj, e)
    finally:
        await run.close()
        traj.total_s = time.perf_counter() - t0
    return traj


def _fail(traj: Trajectory, e: Exception) -> None:
    if isinstance(e, ModelError):
        log.warning("agent run %s: model call failed: %s", traj.id, e)
    else:
        log.exception("agent run %s failed", traj.id)
    traj.finish_reason = "error"
    traj.error = str(e) or type(e).__name__
    traj.error_type = type(e).__name__


class _Run:
    """The state of one run (kept out of run_agent so timeouts can cut it anywhere)."""

    def __init__(
        self,
        traj: Trajectory,
        model: ModelClient,
        config: AgentConfig,
        thought_prefix: str | None,
        on_step: StepCallback | None,
    ) -> None:
        self.traj = traj
        self.model = model
        self.config = config
        self.protocol = load_protocol(config.protocol)
        self.thought_prefix = thought_prefix
        self.on_step = on_step
        self.session: ExecutionSession | None = None
        self.tool_names: frozenset[str] = frozenset({"final_answer"})
        self.answer_check: AnswerCheck | None = None

    async def execute(self, executor: Executor, tools: Mapping[str, ToolFn]) -> None:
        self.tool_names = frozenset({"final_answer", *tools})
        self.session = await executor.open_session(tools)
        for number in range(1, self.config.max_steps + 1):
            step = await self.action_step(number)
            await self.record(step)
            final = step.kept.execution if step.chosen is not None else None
            if final is not None and final.is_final:
                self.traj.answer = final.final_answer
                self.traj.finish_reason = "answer"
                return
        step = await self.final_answer_step(self.config.max_steps + 1)
        await self.record(step)
        self.traj.finish_reason = "max_steps"

    async def close(self) -> None:
        if self.session is not None:
            session, self.session = self.session, None
            try:
                await session.close()
            except Exception:
                log.exception("closing the execution session of run %s failed", self.traj.id)

    async def record(self, step: Step) -> None:
        self.traj.steps.append(step)
        self.traj.usage.add(step.usage)
        if self.on_step is not None:
            await self.on_step(step)

    # -- one action step ---------------------------------------------------------------
    async def action_step(self, number: int) -> Step:
        t_step = time.perf_counter()
        messages = list(self.traj.messages)
        prefix = ""
        if number == 1 and self.thought_prefix:
            prefix = f"Thought: {self.thought_prefix}"
            messages.append({"role": "assistant", "content": prefix})
        request = ModelRequest(
            messages=messages,
            params=self.config.sampling(),
            continue_final_message=bool(prefix),
        )
        completion, model_s = await self.call_model(request)
        candidates = [
            _candidate(i, prefix + c.text, c.finish_reason, self.tool_names)
            for i, c in enumerate(completion.choices)
        ]
        t_exec = time.perf_counter()
        chosen = await self.execute_and_choose(candidates)
        exec_s = time.perf_counter() - t_exec
        kept = candidates[chosen if chosen is not None else 0]
        observation = self.observe(number, kept)
        self.traj.messages.append({"role": "assistant", "content": kept.text})
        if not (chosen is not None and kept.execution is not None and kept.execution.is_final):
            self.traj.messages.append({"role": "user", "content": observation})
        return Step(
            number=number,
            request=request,
            candidates=candidates,
            chosen=chosen,
            observation=observation,
            usage=completion.usage,
            model_s=model_s,
            exec_s=exec_s,
            total_s=time.perf_counter() - t_step,
        )

    async def call_model(self, request: ModelRequest) -> tuple[Completion, float]:
        t = time.perf_counter()
        completion = await self.model.complete(
            request.messages, request.params, continue_final_message=request.continue_final_message
        )
        return completion, time.perf_counter() - t

    async def execute_and_choose(self, candidates: list[Candidate]) -> int | None:
        """Run the parsable candidates in isolation, pick one by policy, commit or discard."""
        assert self.session is not None
        runnable = [c for c in candidates if c.code is not None]
        if not runnable:
            return None
        results = await self.session.try_candidates([c.code or "" for c in runnable])
        for cand, result in zip(runnable, results, strict=True):
            apply_answer_check(self.answer_check, result)
            cand.execution = result
        chosen = self.choose(candidates)
        if chosen is None:
            await self.session.discard()
        else:
            await self.session.commit(runnable.index(candidates[chosen]))
        return chosen

    def choose(self, candidates: list[Candidate]) -> int | None:
        valid = [c for c in candidates if c.valid]
        if not valid:
            return None
        if self.config.policy == "first" or len(valid) == 1:
            return valid[0].index
        keys = [_outcome_key(c) for c in valid]
        counts = Counter(keys)
        best = max(counts.values())
        for cand, key in zip(valid, keys, strict=True):  # earliest of the most common
            if counts[key] == best:
                return cand.index
        return None  # unreachable

    def observe(self, number: int, cand: Candidate) -> str:
        limit = self.config.observation_max_chars
        if cand.execution is not None:
            return render_observation(
                number, cand.execution, max_chars=limit, layout=self.protocol.observation
            )
        return render_error(
            number, cand.parse_error or "no action", max_chars=limit,
            layout=self.protocol.observation,
        )

    # -- the final-answer call at max_steps -------------------------------------------------
    async def final_answer_step(self, number: int) -> Step:
        t_step = time.perf_counter()
        ask: Message = {"role": "user", "content": self.protocol.final_answer_request}
        request = ModelRequest(
            messages=[*self.traj.messages, ask], params=self.config.sampling(n=1)
        )
        completion, model_s = await self.call_model(request)
        choice = completion.choices[0]
        cand = _candidate(0, choice.text, choice.finish_reason, self.tool_names)
        t_exec = time.perf_counter()
        chosen = await self.execute_and_choose([cand])
        exec_s = time.perf_counter() - t_exec
        if chosen is not None and cand.execution is not None and cand.execution.is_final:
            answer = cand.execution.final_answer
        else:
            answer = _answer_from_text(cand)
        self.traj.answer = answer
        self.traj.messages.extend([ask, {"role": "assistant", "content": cand.text}])
        return Step(
            number=number,
            request=request,
            candidates=[cand],
            chosen=chosen,
            observation=self.observe(number, cand),
            usage=completion.usage,
            model_s=model_s,
            exec_s=exec_s,
            total_s=time.perf_counter() - t_step,
            kind="final_answer_call",
        )


def _candidate(
    index: int, text: str, finish_reason: str | None, reserved: frozenset[str]
) -> Candidate:
    try:
        action = parse_action(text)
        check_reserved_names(action.code, reserved)
    except ParseError as e:
        return Candidate(
            index=index,
            text=normalize_reply(text),
            parse_error=str(e),
            finish_reason=finish_reason,
        )
    return Candidate(
        index=index,
        text=action.text,
        thought=action.thought,
        code=action.code,
        finish_reason=finish_reason,
    )


def _outcome_key(cand: Candidate) -> tuple[Any, ...]:
    """What 'the same observation' means for the majority policy."""
    ex = cand.execution
    assert ex is not None
    if ex.is_final:
        return ("final", repr(ex.final_answer))
    return ("obs", ex.stdout, ex.value_repr)


def _answer_from_text(cand: Candidate) -> Any:
    """The answer when the final-answer call did not run a final_answer(...) cleanly:
    a literal argument of final_answer in its code, else the reply's text."""
    tree = None
    if cand.code:
        try:
            tree = ast.parse(cand.code)
        except SyntaxError:
            pass
    for node in ast.walk(tree) if tree is not None else ():
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "final_answer"
            and node.args
        ):
            try:
                return ast.literal_eval(node.args[0])
            except (ValueError, SyntaxError):
                break  # an expression that did not run: its text is no answer
    text = cand.text.removesuffix("<end_code>").strip()
    return text or None
