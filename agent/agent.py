"""The agent loop: thought -> code -> observation, with self-consistent action generation.

Per step, ONE model request samples N candidate replies (`n=N`; streamed when the
client can stream, so every candidate's tokens are counted and timeouts are about
silence). Each is parsed; the parsable ones run in isolation (`session.try_candidates`).
Policies:
- `first` (the paper's): wait for all N, keep the first valid candidate in sampling
  order (parses, runs without error);
- `majority`: wait for all N, keep the earliest member of the most common observation
  among valid candidates;
- `early`: run each candidate in its own fork as soon as it is complete (stop string or
  end), keep the first that is valid, and close the stream: the server stops the others,
  which are recorded with finish_reason 'cancelled', their partial text and tokens.
  A step then costs about as much as its first valid candidate, not its longest one.
The kept candidate's state is committed; if none is valid, all are discarded and
candidate 0's error becomes the observation. `final_answer(x)` ends the run.

Stuck detection (`stuck_detection`): a valid candidate that repeats the code of an
earlier step's kept action with the same observation is a repeat; another valid
candidate is preferred. When the kept action is a repeat all the same (valid or not),
the step is flagged `stuck` and the run goes to the final-answer call at once, ending
with finish_reason 'stuck' (a repeat at the last step is flagged, the reason stays
'max_steps'). When `max_steps` run out, the same final-answer call (n=1)
asks for the answer from the transcript; its reply is read per the protocol
(`agent.final_answer`), and `Trajectory.answer_source` says how.

The same loop serves requests, generates teacher trajectories (with a first-thought
prefix) and runs evaluations.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from agent.answer_check import AnswerCheck, apply_answer_check
from agent.executor import ExecutionResult, ExecutionSession, Executor, ToolFn
from agent.final_answer import extract_answer
from agent.model_client import (
    Completion,
    Message,
    ModelClient,
    ModelError,
    SamplingParams,
    Usage,
)
from agent.observation import render_error, render_observation
from agent.parsing import ParseError, check_reserved_names, normalize_reply, parse_action
from agent.prompts import initial_messages
from agent.protocol import Protocol, load_protocol
from agent.streaming import ChoiceState, collect, supports_streaming
from agent.tools import announced, tool_specs
from agent.trajectory import Candidate, ModelRequest, Step, Trajectory

log = logging.getLogger(__name__)

Policy = Literal["first", "early", "majority"]
POLICIES = ("first", "early", "majority")
StepCallback = Callable[[Step], Awaitable[None]]


@dataclass
class AgentConfig:
    max_steps: int = 5
    """Action steps before the final-answer call."""
    samples: int = 8
    """N: candidate actions sampled per step (one request with n=N); 1 = the plain agent."""
    policy: Policy = "early"
    """How a step picks its candidate: 'early' first valid to finish (stops the rest; the
    default: measured to keep accuracy and cut tokens and latency, docs/benchmarks.md),
    'first' valid in sampling order (the paper's; waits for all N), or 'majority'."""
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
    stuck_detection: bool = True
    """Prefer a candidate that does not repeat an earlier step (code and observation); when
    the kept action repeats one anyway, go to the final-answer call at once ('stuck')."""
    stream: bool = True
    """Stream model replies when the client can (per-candidate tokens, silence timeouts);
    policy 'early' needs it and falls back to 'first' without it."""

    def validate(self, *, check_protocol: bool = True) -> None:
        """ValueError naming every problem; `check_protocol=False` when the caller already
        holds the resolved profile (loading it is what checks it)."""
        problems = []
        if self.max_steps < 1:
            problems.append("max_steps must be >= 1")
        if self.samples < 1:
            problems.append("samples must be >= 1")
        if self.policy not in POLICIES:
            problems.append(f"policy must be one of {', '.join(POLICIES)}, not {self.policy!r}")
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
        if check_protocol:
            try:
                load_protocol(self.protocol)
            except ValueError as e:
                problems.append(str(e))
        if problems:
            raise ValueError("invalid agent config: " + "; ".join(problems))

    def sampling(
        self, n: int | None = None, stop: Sequence[str] | None = None
    ) -> SamplingParams:
        """The model request's sampling; `stop`: the run's protocol stop strings (by default
        those of this config's profile, loaded here)."""
        if stop is None:
            stop = load_protocol(self.protocol).stop
        return SamplingParams(
            n=self.samples if n is None else n,
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=self.max_tokens,
            stop=list(stop),
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
    protocol: Protocol | None = None,
) -> Trajectory:
    """Solve `question`; see the module docstring.

    Never raises for model, executor or tool failures, nor for an exception from
    `on_step`: the trajectory ends with finish_reason 'error' (error, error_type set) or
    'timeout', keeping the steps so far. Raises ValueError for bad input (empty question,
    invalid config, unknown prompt). Cancellation closes the execution session and
    propagates. `answer_check` (agent.answer_check) validates final answers on the host:
    a rejected one is an error observation and the run goes on. `protocol`: the resolved
    profile of `config.protocol` when the caller holds it (a runtime resolves it once);
    None loads it here."""
    if not question or not question.strip():
        raise ValueError("the question is empty")
    config.validate(check_protocol=protocol is None)
    if protocol is None:  # resolved once per run; a runtime passes the one it resolved
        protocol = load_protocol(config.protocol)
    shown = announced(tools)
    messages = initial_messages(question, prompt=config.prompt, tool_names=shown, protocol=protocol)
    traj = Trajectory(
        id=run_id or f"run-{uuid.uuid4().hex[:16]}",
        question=question,
        model=model.model_name,
        messages=messages,
        config={
            **asdict(config),
            "protocol_fingerprint": protocol.fingerprint(),
            "tools": [spec.to_json() for spec in tool_specs(shown)],  # what the model was shown
        },
        started_at=time.time(),
    )
    t0 = time.perf_counter()
    run = _Run(traj, model, config, protocol, thought_prefix, on_step)
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


UNSTREAMED_NOTE = (
    "the model server answered the streamed request with one JSON body: every candidate "
    "arrived at once, so they were checked in order (policy 'first', no early exit)"
)


class _Run:
    """The state of one run (kept out of run_agent so timeouts can cut it anywhere)."""

    def __init__(
        self,
        traj: Trajectory,
        model: ModelClient,
        config: AgentConfig,
        protocol: Protocol,
        thought_prefix: str | None,
        on_step: StepCallback | None,
    ) -> None:
        self.traj = traj
        self.model = model
        self.config = config
        self.protocol = protocol
        self.thought_prefix = thought_prefix
        self.on_step = on_step
        self.session: ExecutionSession | None = None
        self.tool_names: frozenset[str] = frozenset({"final_answer"})
        self.answer_check: AnswerCheck | None = None
        self.history: set[tuple[str, tuple[Any, ...]]] = set()
        """(code, outcome) of every earlier step's kept action (stuck detection)."""
        self.streaming = config.stream and supports_streaming(model)

    async def execute(self, executor: Executor, tools: Mapping[str, ToolFn]) -> None:
        self.tool_names = frozenset({"final_answer", *tools})
        self.session = await executor.open_session(tools)
        for number in range(1, self.config.max_steps + 1):
            step = await self.action_step(number)
            await self.record(step)
            final = step.kept.execution if step.chosen is not None else None
            if final is not None and final.is_final:
                self.traj.answer = final.final_answer
                self.traj.answer_source = "final_answer"
                self.traj.finish_reason = "answer"
                return
            if step.stuck and number < self.config.max_steps:
                stuck = True  # the final-answer call comes now, not after max_steps
                break
        else:
            stuck = False
        step = await self.final_answer_step(len(self.traj.steps) + 1)
        await self.record(step)
        self.traj.finish_reason = "stuck" if stuck else "max_steps"

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
            params=self.config.sampling(stop=self.protocol.stop),
            continue_final_message=bool(prefix),
        )
        policy = self.config.policy
        first_valid_s: float | None = None
        note: str | None = None
        if policy == "early" and self.streaming:
            candidates, chosen, usage, model_s, exec_s, unstreamed = await self.early_exit(
                request, prefix)
            if chosen is not None:
                first_valid_s = time.perf_counter() - t_step
            if unstreamed:
                policy, note = "first", UNSTREAMED_NOTE
        else:
            policy = "first" if policy == "early" else policy
            completion, model_s = await self.call_model(request)
            candidates = [
                _candidate(i, prefix + c.text, c.finish_reason, self.tool_names, c.tokens)
                for i, c in enumerate(completion.choices)
            ]
            t_exec = time.perf_counter()
            chosen = await self.execute_and_choose(candidates, policy)
            exec_s = time.perf_counter() - t_exec
            usage = completion.usage
        kept = candidates[chosen if chosen is not None else 0]
        stuck = self.note_kept(kept)
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
            usage=usage,
            model_s=model_s,
            exec_s=exec_s,
            total_s=time.perf_counter() - t_step,
            stuck=stuck,
            policy=policy,
            first_valid_s=first_valid_s,
            note=note,
        )

    def note_kept(self, kept: Candidate) -> bool:
        """Remember the kept action; True when it repeats an earlier one (and detection is on)."""
        if kept.code is None or kept.execution is None:
            return False
        key = (kept.code.strip(), _outcome_key(kept))
        repeat = key in self.history
        self.history.add(key)
        if repeat:
            kept.repeat = kept.valid
        return repeat and self.config.stuck_detection and not kept.execution.is_final

    def is_repeat(self, cand: Candidate) -> bool:
        if not self.config.stuck_detection or cand.code is None or cand.execution is None:
            return False
        if cand.execution.is_final:
            return False
        return (cand.code.strip(), _outcome_key(cand)) in self.history

    async def call_model(self, request: ModelRequest) -> tuple[Completion, float]:
        t = time.perf_counter()
        if self.streaming:
            stream = self.model.stream(  # type: ignore[attr-defined]
                request.messages,
                request.params,
                continue_final_message=request.continue_final_message,
            )
            completion: Completion = await collect(stream)
        else:
            completion = await self.model.complete(
                request.messages,
                request.params,
                continue_final_message=request.continue_final_message,
            )
        return completion, time.perf_counter() - t

    async def early_exit(
        self, request: ModelRequest, prefix: str
    ) -> tuple[list[Candidate], int | None, Usage, float, float, bool]:
        """Policy 'early': run candidates as they complete; stop at the first valid one.
        The last value: the server answered with one JSON body instead of a stream.

        Candidates run one at a time (`try_candidates([code])`, then `commit(0)` for the
        kept one or `discard()`), each against the state before the step, while the
        stream goes on. A valid repeat (stuck detection) is set aside; if no other valid
        candidate comes, it is run again and kept."""
        t0 = time.perf_counter()
        stream = self.model.stream(  # type: ignore[attr-defined]
            request.messages, request.params, continue_final_message=request.continue_final_message
        )
        states = [ChoiceState(i) for i in range(request.params.n)]
        finished: asyncio.Queue[int] = asyncio.Queue()
        reader = asyncio.create_task(_read_choices(stream, states, finished))
        done: dict[int, Candidate] = {}
        chosen: int | None = None
        repeats: list[Candidate] = []
        exec_s = 0.0
        try:
            while chosen is None and (i := await finished.get()) >= 0:
                st = states[i]
                cand = _candidate(i, prefix + st.text, st.finish_reason, self.tool_names, st.tokens)
                done[i] = cand
                if cand.code is None:
                    continue
                t_exec = time.perf_counter()
                if await self.try_one(cand, keep_repeat=False):
                    chosen = i
                elif cand.valid:
                    cand.repeat = True
                    repeats.append(cand)
                exec_s += time.perf_counter() - t_exec
        finally:
            model_s = time.perf_counter() - t0
            if not reader.done():
                reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            await stream.aclose()
        error = reader.exception() if not reader.cancelled() else None
        if chosen is None and repeats:  # only repeats were valid: keep the first (stuck)
            t_exec = time.perf_counter()
            if await self.try_one(repeats[0], keep_repeat=True):
                chosen = repeats[0].index
            exec_s += time.perf_counter() - t_exec
        if chosen is None and error is not None:
            raise error
        usage = Usage(stream.usage.prompt_tokens, stream.usage.completion_tokens)
        unstreamed = bool(getattr(stream, "unstreamed", False))
        return _early_candidates(states, done, prefix), chosen, usage, model_s, exec_s, unstreamed

    async def try_one(self, cand: Candidate, *, keep_repeat: bool) -> bool:
        """Run one candidate against the committed state; commit it when it is valid (and
        not a repeat, unless `keep_repeat`), else discard it. True when committed."""
        assert self.session is not None
        cand.execution = (await self.session.try_candidates([cand.code or ""]))[0]
        await apply_answer_check(self.answer_check, cand.execution)
        if cand.valid and (keep_repeat or not self.is_repeat(cand)):
            await self.session.commit(0)
            return True
        await self.session.discard()
        return False

    async def execute_and_choose(
        self, candidates: list[Candidate], policy: str | None = None
    ) -> int | None:
        """Run the parsable candidates in isolation, pick one by policy, commit or discard."""
        assert self.session is not None
        runnable = [c for c in candidates if c.code is not None]
        if not runnable:
            return None
        results = await self.session.try_candidates([c.code or "" for c in runnable])
        await asyncio.gather(*(apply_answer_check(self.answer_check, r) for r in results))
        for cand, result in zip(runnable, results, strict=True):
            cand.execution = result
        chosen = self.choose(candidates, policy or self.config.policy)
        if chosen is None:
            await self.session.discard()
        else:
            await self.session.commit(runnable.index(candidates[chosen]))
        return chosen

    def choose(self, candidates: list[Candidate], policy: str) -> int | None:
        valid = [c for c in candidates if c.valid]
        if not valid:
            return None
        fresh = [c for c in valid if not self.is_repeat(c)]
        for c in valid:
            c.repeat = c not in fresh
        pool = fresh or valid  # all repeats: the step will be flagged stuck
        if policy != "majority" or len(pool) == 1:
            return pool[0].index
        keys = [_outcome_key(c) for c in pool]
        counts = Counter(keys)
        best = max(counts.values())
        for cand, key in zip(pool, keys, strict=True):  # earliest of the most common
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
            number,
            cand.parse_error or "no action",
            max_chars=limit,
            layout=self.protocol.observation,
        )

    # -- the final-answer call at max_steps (or when stuck) -------------------------------
    async def final_answer_step(self, number: int) -> Step:
        t_step = time.perf_counter()
        ask: Message = {"role": "user", "content": self.protocol.final_answer_request}
        request = ModelRequest(
            messages=[*self.traj.messages, ask],
            params=self.config.sampling(n=1, stop=self.protocol.stop),
        )
        completion, model_s = await self.call_model(request)
        choice = completion.choices[0]
        cand = _candidate(0, choice.text, choice.finish_reason, self.tool_names, choice.tokens)
        t_exec = time.perf_counter()
        chosen = await self.execute_and_choose([cand], "first")
        exec_s = time.perf_counter() - t_exec
        answer, source = extract_answer(choice.text, cand.code, cand.execution)
        self.traj.answer = answer
        self.traj.answer_source = source
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


async def _read_choices(
    stream: Any, states: list[ChoiceState], finished: asyncio.Queue[int]
) -> None:
    """Accumulate the stream's deltas; put each choice's index on `finished` when it is
    complete, and -1 when the stream ends (or fails: the task's exception says why)."""
    try:
        async for delta in stream:
            if not 0 <= delta.index < len(states):
                continue
            st = states[delta.index]
            was_done = st.done
            st.add(delta)
            if st.done and not was_done:
                finished.put_nowait(delta.index)
    finally:
        finished.put_nowait(-1)


def _early_candidates(
    states: list[ChoiceState], done: dict[int, Candidate], prefix: str
) -> list[Candidate]:
    """Every candidate in sampling order; one stopped before it was complete is kept as it
    was (partial text and tokens, finish_reason 'cancelled'), never parsed nor run."""
    return [
        done[i]
        if i in done
        else Candidate(index=i, text=prefix + st.text, finish_reason="cancelled", tokens=st.tokens)
        for i, st in enumerate(states)
    ]


def _candidate(
    index: int,
    text: str,
    finish_reason: str | None,
    reserved: frozenset[str],
    tokens: int | None = None,
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
            tokens=tokens,
        )
    return Candidate(
        index=index,
        text=action.text,
        thought=action.thought,
        code=action.code,
        finish_reason=finish_reason,
        tokens=tokens,
    )


def _outcome_key(cand: Candidate) -> tuple[Any, ...]:
    """What 'the same observation' means for the majority policy."""
    ex = cand.execution
    assert ex is not None
    return _result_key(ex)


def _result_key(ex: ExecutionResult) -> tuple[Any, ...]:
    if ex.is_final:
        return ("final", repr(ex.final_answer))
    if ex.error is not None:
        return ("error", ex.error)
    return ("obs", ex.stdout, ex.value_repr)
