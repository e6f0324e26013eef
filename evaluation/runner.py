"""`distillery eval run`: the agent (or CoT) over evaluation sets, resumable, then the reports.

The loop is `training.generate.generate` (a bounded pool of runs, one fsynced JSONL record
per finished question, resume by id): evaluation adds the run folder around it.

    DIR/config.json     what ran: model, agent/sampling, mode, sets with file sha256, judge
    DIR/records.jsonl   one record per question (the `generate` record), appended
    DIR/gold.json       the gold passages of the run's covered questions (retrieval recall)
    DIR/judgments.jsonl the judge's verdict (or error) per factual question, when judged
    DIR/judge_cache.jsonl  verdicts by (question, gold, prediction) (`evaluation.judge`)
    DIR/report.json, report.md, report.html

Rerunning the same command in the same folder finishes an interrupted run (questions
whose last record is an error run again; records already written are never rewritten).
A run with a different configuration (`fingerprint`: anything that changes the numbers)
is refused with the differing fields, so two configurations never mix in one folder.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from agent import AgentConfig, Executor, ModelClient, Runtime, ToolFn
from evaluation.datasets import EvalSet
from evaluation.gateway_client import GatewayClient
from evaluation.judge import Judge
from evaluation.report import write_reports
from training.generate import GenerateConfig, GenerateError, generate, tools_by_task
from training.questions import Question
from training.run_folder import load_records, write_json_atomic, write_jsonl_atomic

__all__ = [
    "CONFIG_VERSION",
    "EvalConfig",
    "EvalError",
    "fingerprint",
    "judge_pass",
    "run_eval",
    "write_config",
]

CONFIG_VERSION = 1
Mode = Literal["agent", "cot"]


class EvalError(RuntimeError):
    """The evaluation cannot run as configured; the message says what to change."""


@dataclass
class EvalConfig:
    mode: Mode = "agent"
    agent: AgentConfig = field(default_factory=AgentConfig)
    concurrency: int = GenerateConfig.concurrency
    """Questions in flight."""
    model: dict[str, Any] = field(default_factory=dict)
    """What answers: {"kind": url|path|embedded|gateway, "name", "url"|"path"}."""
    retrieval: dict[str, Any] | None = None
    judge: dict[str, Any] | None = None
    """{"url", "model"} of the LLM judge (factual accuracy), None: exact match."""
    protocol: dict[str, Any] | None = None
    limit: int | None = None
    only_covered: bool = False
    cot_temperature: float = GenerateConfig.cot_temperature
    """Sampling temperature of the CoT pass (--mode cot)."""
    cot_max_tokens: int = GenerateConfig.cot_max_tokens
    """Completion tokens of the CoT pass."""
    name: str | None = None
    """The run's label in reports (default: the folder name)."""
    progress: bool = True
    data_dir: str | None = None


def _agent_dict(a: AgentConfig) -> dict[str, Any]:
    d = dataclasses.asdict(a)
    prompt = Path(str(a.prompt))
    if a.prompt not in ("student", "teacher") and prompt.is_file():
        import hashlib

        d["prompt_sha256"] = hashlib.sha256(prompt.read_bytes()).hexdigest()
    return d


def _protocol_doc(a: AgentConfig) -> dict[str, Any] | None:
    """The protocol profile the agent runs with (`--protocol`), with the file's sha256."""
    spec = getattr(a, "protocol", None)
    if not spec:
        return None
    import hashlib

    doc: dict[str, Any] = {"spec": str(spec)}
    path = Path(str(spec))
    if path.is_dir():
        path = path / "distillery_protocol.json"
    if path.is_file():
        doc["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    return doc


def config_document(sets: Sequence[EvalSet], cfg: EvalConfig) -> dict[str, Any]:
    """config.json's content (JSON values only: it is compared with the saved one on resume)."""
    doc = {
        "version": CONFIG_VERSION,
        "name": cfg.name,
        "mode": cfg.mode,
        "model": cfg.model,
        "agent": _agent_dict(cfg.agent) if cfg.mode == "agent" else None,
        "cot": (
            {"temperature": cfg.cot_temperature, "max_tokens": cfg.cot_max_tokens}
            if cfg.mode == "cot"
            else None
        ),
        "seed": cfg.agent.seed,
        "retrieval": cfg.retrieval,
        "judge": cfg.judge,
        "protocol": cfg.protocol or _protocol_doc(cfg.agent),
        "limit": cfg.limit,
        "only_covered": cfg.only_covered,
        "data_dir": cfg.data_dir,
        "sets": [s.describe() for s in sets],
        "concurrency": cfg.concurrency,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return dict(json.loads(json.dumps(doc, default=str)))


_NOT_FINGERPRINT = {"name", "concurrency", "created_at", "data_dir"}
_NOT_FINGERPRINT_SET = {"file"}


def fingerprint(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The part of config.json that decides the numbers (a resume must match it exactly)."""
    fp = {k: v for k, v in doc.items() if k not in _NOT_FINGERPRINT}
    fp["sets"] = [
        {k: v for k, v in s.items() if k not in _NOT_FINGERPRINT_SET} for s in doc.get("sets", [])
    ]
    if isinstance(fp.get("agent"), dict):
        fp["agent"] = {k: v for k, v in fp["agent"].items() if k != "timeout_s"}
    return fp


def _differences(old: Any, new: Any, path: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in sorted(set(old) | set(new)):
            out += _differences(old.get(k), new.get(k), f"{path}.{k}" if path else str(k))
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        out = []
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            out += _differences(a, b, f"{path}[{i}]")
        return out
    return [] if old == new else [f"{path}: {json.dumps(old)} -> {json.dumps(new)}"]


def write_config(out: Path, doc: dict[str, Any]) -> dict[str, Any]:
    """Write DIR/config.json, or check it against the folder's: EvalError when they differ."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "config.json"
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise EvalError(f"{path} is not valid JSON ({e}): use another --out") from e
        diffs = _differences(fingerprint(old), fingerprint(doc))
        if diffs:
            shown = "; ".join(diffs[:6]) + ("; ..." if len(diffs) > 6 else "")
            raise EvalError(
                f"{out} holds a run with another configuration ({shown}); rerun with the same "
                "options to resume it, or use another --out"
            )
        return dict(old)
    if (out / "records.jsonl").is_file():
        raise EvalError(
            f"{out} has records.jsonl but no config.json (not an evaluation folder?): "
            "use another --out"
        )
    write_json_atomic(path, doc)
    return doc


class _Unused:
    """Stands in for the model and executor when a gateway runs every question."""

    model_name = "gateway"

    async def complete(self, *_a: Any, **_k: Any) -> Any:
        raise RuntimeError("evaluation through a gateway calls no model directly")

    async def start(self) -> None:
        return None

    async def open_session(self, *_a: Any, **_k: Any) -> Any:
        raise RuntimeError("evaluation through a gateway runs no code directly")

    async def aclose(self) -> None:
        return None


def _write_gold(out: Path, sets: Sequence[EvalSet]) -> None:
    doc = {
        qid: dataclasses.asdict(g) for s in sets for qid, g in s.gold.items()
    }
    write_json_atomic(out / "gold.json", doc)


async def judge_pass(
    out: Path,
    sets: Sequence[EvalSet],
    judge: Judge,
    *,
    concurrency: int = 8,
) -> dict[str, int]:
    """Judge the factual records of the run; rewrites DIR/judgments.jsonl."""
    records = load_records(out / "records.jsonl")
    wanted = [
        records[q.id]
        for s in sets
        if s.domain == "factual"
        for q in s.questions
        if q.id in records
    ]
    verdicts = await judge.judge_records(wanted, concurrency=concurrency)
    write_jsonl_atomic(out / "judgments.jsonl", (
        {"id": qid, "model": judge.model, **v.to_dict()} for qid, v in verdicts.items()))
    return {
        "judged": sum(v.verdict is not None for v in verdicts.values()),
        "judge_errors": sum(v.verdict is None for v in verdicts.values()),
        "judge_calls": judge.calls,
    }


def _add_summary(total: dict[str, Any], part: Mapping[str, Any]) -> None:
    for k, v in part.items():
        if k == "error_types":
            types = total.setdefault("error_types", {})
            for et, n in v.items():
                types[et] = types.get(et, 0) + n
        elif isinstance(v, int | float) and not isinstance(v, bool) and v is not None:
            total[k] = round(total.get(k, 0) + v, 2)
        else:
            total.setdefault(k, v)


def _check_args(cfg: EvalConfig, runtime: Runtime | None, gateway: GatewayClient | None) -> None:
    if (runtime is None) == (gateway is None):
        raise EvalError("run_eval needs either a runtime (model + executor) or a gateway")
    if gateway is not None and cfg.mode != "agent":
        raise EvalError(
            "--gateway-url evaluates the served agent: --mode cot needs a model (--model-url)"
        )
    if cfg.concurrency < 1:
        raise EvalError("--concurrency must be at least 1")


async def _check_gateway_tools(gateway: GatewayClient, questions: Sequence[Question]) -> None:
    """EvalError, before any run, when a task names tools the gateway does not serve."""
    needed = sorted({(q.spec.name, q.spec.tools) for q in questions if q.spec.tools})
    if not needed:
        return
    served = set(await gateway.served_tools())
    for task, tools in needed:
        missing = [t for t in tools or () if t not in served]
        if missing:
            raise EvalError(
                f"task {task!r} runs with the tools {', '.join(tools or ())}; the gateway at "
                f"{gateway.url} does not serve {', '.join(missing)} (it serves: "
                f"{', '.join(sorted(served)) or 'no tool'}): start it with the MCP servers "
                "that have them (`distillery serve --mcp-config FILE`)"
            )


async def run_eval(
    sets: Sequence[EvalSet],
    out: Path,
    cfg: EvalConfig,
    *,
    runtime: Runtime | None = None,
    gateway: GatewayClient | None = None,
    judge: Judge | None = None,
    html: bool = True,
) -> dict[str, Any]:
    """Run (or finish) the evaluation in `out`, then write the reports; returns the summary."""
    _check_args(cfg, runtime, gateway)
    questions = [q for s in sets for q in s.questions]
    if gateway is not None:
        await _check_gateway_tools(gateway, questions)
    out = Path(out)
    doc = config_document(sets, cfg)
    write_config(out, doc)
    _write_gold(out, sets)
    gen_cfg = GenerateConfig(
        mode=cfg.mode,
        concurrency=cfg.concurrency,
        agent=cfg.agent,
        cot_temperature=cfg.cot_temperature,
        cot_max_tokens=cfg.cot_max_tokens,
        retry_errors=True,
        progress=cfg.progress,
    )
    model: ModelClient
    executor: Executor
    # Each question gets the tools its task names (training.tasks): math the Python tool
    # only, factual every tool of the runtime (web_search when it has a retriever), a task
    # over MCP tools those it lists.
    tools_for: Callable[[Question], Mapping[str, ToolFn]] | None = None
    if runtime is not None:
        if cfg.mode == "agent":
            await runtime.tools.start()  # MCP servers (a no-op when the caller started them)
        model, executor = runtime.model, runtime.executor
        tools_for = tools_by_task(runtime.tools_for_run)
    else:
        model, executor = _Unused(), _Unused()
    totals: dict[str, Any] = {}
    try:
        summary = await generate(
            questions,
            out / "records.jsonl",
            model=model,
            executor=executor,
            tools_for=tools_for if cfg.mode == "agent" else None,
            config=gen_cfg,
            run=gateway.record if gateway is not None else None,
        )
        _add_summary(totals, summary.to_dict())
    except GenerateError as e:
        raise EvalError(str(e)) from e
    result: dict[str, Any] = {**totals, "out": str(out), "questions": len(questions)}
    for k in ("accuracy", "trajectories_per_min", "correct", "graded"):
        result.pop(k, None)  # generate's view; the report's numbers follow
    if judge is not None:
        result.update(await judge_pass(out, sets, judge, concurrency=max(cfg.concurrency, 4)))
    report = write_reports(out, html=html)
    result["average_accuracy"] = report["average_accuracy"]
    result["sets"] = {name: m["accuracy"] for name, m in report["sets"].items()}
    result["report"] = {
        k: str(out / f) for k, f in [("json", "report.json"), ("md", "report.md")]
    }
    if html:
        result["report"]["html"] = str(out / "report.html")
    return result
