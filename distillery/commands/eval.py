"""`distillery eval run|report|compare`: evaluation on the paper's eight tasks, and reports.

    distillery eval run --questions paper --out runs/base --model-url URL --model NAME
    distillery eval run --questions hotpotqa --only-covered --gateway-url http://gw:8080
    distillery eval report runs/base
    distillery eval compare runs/base runs/student --out runs/cmp

Flags that set a Settings field are generated from the field (model, agent, sandbox,
retrieval groups, `--data-dir`). Batch-job friendly like `generate`: the last stdout line
is a JSON summary (`{"ok": true, ...}` / `{"ok": false, "error": ...}`), a failure exits
non-zero with one line on stderr (2 bad input or configuration, 3 the model or gateway
cannot be reached, 130 interrupted: rerun the same command to resume).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distillery.commands.training import GENERATION_FIELDS, add_generation_flags
from distillery.options import (
    AGENT_FIELDS,
    ALIASES,
    EXIT_CONFIG,
    EXIT_INTERRUPTED,
    EXIT_MODEL,
    MODEL_FIELDS,
    RETRIEVAL_FIELDS,
    SANDBOX_FIELDS,
    UsageError,
    add_settings_flags,
    dataclass_values,
    emit,
    fail,
    settings_from_args,
)
from distillery.settings import Settings

if TYPE_CHECKING:
    from agent.agent import AgentConfig
    from evaluation.datasets import EvalSet
    from evaluation.runner import EvalConfig

TOOL_FIELDS = ["mcp_config"]
EVAL_FIELDS = [
    *MODEL_FIELDS, *AGENT_FIELDS, *SANDBOX_FIELDS, *RETRIEVAL_FIELDS, *TOOL_FIELDS, "data_dir"
]


def _fail(msg: str, code: int, **extra: Any) -> int:
    return fail(msg, code, json_line=True, **extra)


def _note(msg: str) -> None:
    print(f"distillery eval: {msg}", file=sys.stderr, flush=True)


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a model or a gateway on the paper's eight tasks; reports and comparisons",
        description="Evaluate an agent (or CoT) on question sets, write report.json/.md/.html, "
        "and compare runs with paired bootstrap confidence intervals.",
    )
    esub = p.add_subparsers(dest="eval_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda _a: (p.print_help(), EXIT_CONFIG)[1])
    _add_run(esub)
    _add_report(esub)
    _add_compare(esub)


def _add_run(esub: Any) -> None:
    r = esub.add_parser(
        "run",
        help="run an evaluation (resumable) and write its reports",
        description="Run every question of the sets; one record per question in "
        "DIR/records.jsonl. Rerun the same command to finish an interrupted run.",
    )
    r.add_argument(
        "--questions",
        nargs="+",
        required=True,
        metavar="SET_OR_FILE",
        help="'paper' (the eight test sets), set names (math500 gsm_hard aime olymmath "
        "hotpotqa bamboogle musique 2wiki) or question files (paper JSON / .jsonl)",
    )
    r.add_argument("--out", required=True, type=Path, help="run folder (created; resumed)")
    r.add_argument("--name", help="the run's label in reports (default: the folder name)")
    r.add_argument("--task", help="a registered task (math, factual, shop) for every question "
                   "of the files (default: each question's own, else from the set's name)")
    r.add_argument("--limit", type=int, help="only the first N questions of each set")
    r.add_argument(
        "--only-covered",
        action="store_true",
        help="factual sets: only questions whose gold passages are in the mini-Wikipedia",
    )
    add_settings_flags(r, ["data_dir"])
    m = r.add_argument_group("model (default: the embedded engine)")
    add_settings_flags(
        m, MODEL_FIELDS, flags={**ALIASES, "model_api_key": ["--api-key", "--model-api-key"]},
        helps={"model_api_key": "Bearer key of --model-url, or of --gateway-url"},
    )
    m.add_argument(
        "--gateway-url",
        help="evaluate a running `distillery serve` through /v1/solve instead of a model",
    )
    a = r.add_argument_group("agent")
    a.add_argument("--mode", choices=["agent", "cot"], default="agent",
                   help="the agent (default) or plain chain-of-thought")
    add_settings_flags(a, AGENT_FIELDS, flags=ALIASES)
    from evaluation.runner import EvalConfig as RunConfig

    add_generation_flags(a, RunConfig)
    add_settings_flags(r.add_argument_group("sandbox"), SANDBOX_FIELDS)
    add_settings_flags(r.add_argument_group("retrieval (factual sets)"), RETRIEVAL_FIELDS)
    add_settings_flags(r.add_argument_group("tools (tasks that name them)"), TOOL_FIELDS)
    j = r.add_argument_group("judge (factual accuracy; without one: exact match)")
    j.add_argument("--judge-url", help="OpenAI-compatible base URL of the LLM judge")
    j.add_argument("--judge-model", help="model name of the judge")
    j.add_argument("--judge-api-key", help="Bearer key of the judge")
    j.add_argument(
        "--judge-cache", type=Path, help="verdict cache file (default: DIR/judge_cache.jsonl)"
    )
    o = r.add_argument_group("output")
    o.add_argument("--no-html", action="store_true", help="skip report.html")
    o.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    r.set_defaults(func=run_eval_command)


def _add_report(esub: Any) -> None:
    r = esub.add_parser(
        "report", help="rewrite report.json/.md/.html of a run folder from its records"
    )
    r.add_argument("run_dir", type=Path)
    r.add_argument("--no-html", action="store_true")
    r.set_defaults(func=report_command)


def _add_compare(esub: Any) -> None:
    c = esub.add_parser(
        "compare",
        help="runs side by side, paired bootstrap 95%% CIs (the first run is the baseline)",
    )
    c.add_argument("run_dirs", nargs="+", type=Path, metavar="DIR")
    c.add_argument("--out", required=True, type=Path, help="folder for compare.json/.md/.html")
    c.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples")
    c.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    c.add_argument("--no-html", action="store_true")
    c.set_defaults(func=compare_command)


# --------------------------------------------------------------------------- run


def _model_description(settings: Settings, model_name: str) -> dict[str, Any]:
    if settings.model_url:
        return {"kind": "url", "url": settings.model_url, "name": settings.model}
    if settings.model_path:
        return {"kind": "path", "path": str(settings.model_path.resolve()), "name": model_name}
    return {"kind": "embedded", "name": model_name}


def _retrieval_description(settings: Settings) -> dict[str, Any]:
    if settings.es_url:
        backend: dict[str, Any] = {
            "backend": "es", "es_url": settings.es_url, "es_index": settings.es_index
        }
    else:
        idx = settings.index_dir
        backend = {"backend": "embedded", "index_dir": str(idx.resolve()) if idx else None}
    return {**backend, "search_k": settings.search_k}


def _no_index_message(settings: Settings, factual: list[str]) -> str:
    corpus = settings.data_dir / "wiki" / "passages.jsonl.gz"
    target = settings.cache_dir / "wiki-index"
    return (
        f"factual sets ({', '.join(factual)}) search Wikipedia, and no index is configured: "
        f"build the mini-Wikipedia once with `distillery index build --corpus {corpus} "
        f"--index-dir {target}`, then pass --index-dir {target} (or set DISTILLERY_INDEX_DIR, "
        "or --es-url for Elasticsearch)"
    )


@dataclass
class _Plan:
    settings: Settings
    agent: AgentConfig
    sets: list[EvalSet]
    cfg: EvalConfig
    local_search: bool


def _plan(args: argparse.Namespace) -> _Plan | int:
    """Validate the flags and read the sets; an exit status when they cannot work."""
    from evaluation.datasets import DatasetError, resolve_sets
    from evaluation.runner import EvalConfig

    if bool(args.judge_url) != bool(args.judge_model):
        return _fail("--judge-url and --judge-model go together", EXIT_CONFIG)
    if args.gateway_url and (args.model_url or args.model_path):
        return _fail("use either --gateway-url or --model-url/--model-path, not both", EXIT_CONFIG)
    if args.gateway_url and args.mode == "cot":
        return _fail(
            "--gateway-url evaluates the served agent; --mode cot needs a model (--model-url)",
            EXIT_CONFIG,
        )
    if args.concurrency is not None and args.concurrency < 1:
        return _fail("--concurrency must be at least 1", EXIT_CONFIG)
    try:
        settings = settings_from_args(args, EVAL_FIELDS)
        agent_cfg = settings.agent_config(timeout_s=args.run_timeout)
        agent_cfg.validate()
        sets = resolve_sets(args.questions, settings.data_dir, limit=args.limit,
                            only_covered=args.only_covered, task=args.task)
    except (UsageError, ValueError, DatasetError) as e:
        return _fail(str(e), EXIT_CONFIG)
    for s in sets:
        cov = ""
        if s.domain == "factual":
            cov = (f", {len(s.gold)} with gold passages in the mini-Wikipedia "
                   f"({s.covered_total} of {s.total} in the file)")
        _note(f"{s.name} ({s.domain}): {len(s.questions)} questions{cov}")
    factual = [s.name for s in sets if s.domain == "factual"]
    local_search = bool(factual) and args.mode == "agent" and not args.gateway_url
    if local_search and not settings.es_url and settings.index_dir is None:
        return _fail(_no_index_message(settings, factual), EXIT_CONFIG)
    cfg = EvalConfig(
        mode=args.mode,
        agent=agent_cfg,
        retrieval=_retrieval_description(settings) if local_search else None,
        judge={"url": args.judge_url, "model": args.judge_model} if args.judge_url else None,
        limit=args.limit,
        only_covered=args.only_covered,
        name=args.name,
        progress=not args.no_progress,
        data_dir=str(settings.data_dir),
        **dataclass_values(args, EvalConfig, GENERATION_FIELDS),
    )
    return _Plan(settings, agent_cfg, sets, cfg, local_search)


async def _execute(args: argparse.Namespace, plan: _Plan) -> dict[str, Any]:
    from distillery.components import build_components, build_judge
    from evaluation.gateway_client import GatewayClient
    from evaluation.judge import Judge, JudgeCache
    from evaluation.runner import run_eval

    settings, cfg = plan.settings, plan.cfg
    key = settings.model_api_key.get_secret_value() if settings.model_api_key else None
    closers: list[Any] = []
    cache: JudgeCache | None = None
    try:
        judge = None
        if args.judge_url:
            client = build_judge(args.judge_url, args.judge_model, args.judge_api_key)
            closers.append(client)
            cache = JudgeCache(args.judge_cache or args.out / "judge_cache.jsonl")
            judge = Judge(client, cache)
        if args.gateway_url:
            gateway = GatewayClient(args.gateway_url, api_key=key, agent=plan.agent)
            closers.append(gateway)
            cfg.model = {"kind": "gateway", **(await gateway.check())}
            return await run_eval(
                plan.sets, args.out, cfg, gateway=gateway, judge=judge, html=not args.no_html
            )
        runtime = build_components(
            settings, with_executor=args.mode == "agent", with_retriever=plan.local_search
        )
        closers.append(runtime)
        if settings.model_url:
            await _check_model(runtime.model, settings)
        cfg.model = _model_description(settings, runtime.model.model_name)
        return await run_eval(
            plan.sets, args.out, cfg, runtime=runtime, judge=judge, html=not args.no_html
        )
    finally:
        for c in reversed(closers):
            await c.aclose()
        if cache is not None:
            cache.close()


def run_eval_command(args: argparse.Namespace) -> int:
    from evaluation.runner import EvalError

    plan = _plan(args)
    if isinstance(plan, int):
        return plan
    try:
        summary = asyncio.run(_execute(args, plan))
    except EvalError as e:
        return _fail(str(e), EXIT_CONFIG)
    except KeyboardInterrupt:
        return _fail(
            f"interrupted; finished questions are in {args.out}/records.jsonl: rerun the same "
            "command to resume",
            EXIT_INTERRUPTED,
        )
    except Exception as e:  # start-up failures (config, model, gateway, index): one line
        from distillery.components import ConfigError
        from evaluation.gateway_client import GatewayError

        code = EXIT_CONFIG if isinstance(e, ConfigError) else EXIT_MODEL
        plain = isinstance(e, GatewayError | Unreachable | ConfigError)
        return _fail(str(e) if plain else f"{type(e).__name__}: {e}", code)
    if summary["generated"] and summary["succeeded"] == 0:
        kinds = ", ".join(f"{k} x{v}" for k, v in summary["error_types"].items())
        return _fail(
            f"every run failed ({kinds}); is the model reachable? see the 'error' field of the "
            f"records in {args.out}/records.jsonl, then rerun the same command",
            EXIT_MODEL,
            summary=summary,
        )
    if summary.get("judge_errors"):
        _note(
            f"{summary['judge_errors']} judge call(s) failed (counted wrong): rerun the same "
            "command to judge them again"
        )
    emit({"ok": True, **summary})
    return 0


class Unreachable(RuntimeError):
    """The model server cannot be used; the message says what to check."""


async def _check_model(model: Any, settings: Settings) -> None:
    from agent.model_client import ModelError

    try:
        names = await model.list_models()
    except ModelError as e:
        raise Unreachable(
            f"cannot reach the model at {settings.model_url}: {e}; check --model-url"
        ) from e
    if settings.model and names and settings.model not in names:
        raise Unreachable(
            f"cannot use model {settings.model!r}: {settings.model_url} serves {names}; "
            "check --model"
        )


# --------------------------------------------------------------------------- report, compare


def report_command(args: argparse.Namespace) -> int:
    from evaluation.report import write_reports

    try:
        rep = write_reports(args.run_dir, html=not args.no_html)
    except (ValueError, OSError) as e:
        return _fail(str(e), EXIT_CONFIG)
    files = ["report.json", "report.md"] + ([] if args.no_html else ["report.html"])
    emit(
        {
            "ok": True,
            "out": str(args.run_dir),
            "average_accuracy": rep["average_accuracy"],
            "sets": {k: m["accuracy"] for k, m in rep["sets"].items()},
            "missing": rep["missing"],
            "files": [str(args.run_dir / f) for f in files],
        }
    )
    return 0


def compare_command(args: argparse.Namespace) -> int:
    from evaluation.compare import CompareError, compare_runs

    if args.resamples < 100:
        return _fail("--resamples must be at least 100", EXIT_CONFIG)
    try:
        summary = compare_runs(
            args.run_dirs, args.out, resamples=args.resamples, seed=args.seed,
            html=not args.no_html,
        )
    except CompareError as e:
        return _fail(str(e), EXIT_CONFIG)
    emit({"ok": True, **summary})
    return 0
