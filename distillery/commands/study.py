"""`distillery study run`: the distillation study, resumable stage by stage.

    distillery study run --preset cpu-small --out runs/study --budget-h 3
    distillery study run --config study.json --out runs/study        # JSON overrides of a preset
    distillery study run --quick --student DIR --teacher-url URL --out DIR   (the test suite's)
    distillery study report --out runs/study    # results.json/.md of what is finished so far
    distillery study pack --out runs/study --to study.tar.gz   # to continue on another machine
    distillery study unpack study.tar.gz --out runs/study2
    distillery study run --config other-sft.json --out runs/s2 --harvest-from runs/study
                                    # a new study on runs/study's teacher records

Rerun the same command to continue after a kill or a spent budget. The last stdout line is a
JSON summary; exit status 0 complete, 75 budget spent (rerun to continue), 2 bad
configuration, 1 a stage failed (the message says what to do), 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distillery.options import EXIT_CONFIG, EXIT_FAILED, EXIT_INTERRUPTED, emit, fail

EXIT_BUDGET = 75


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "study",
        help="the distillation study: teacher -> data -> SFT -> export -> serve -> eval",
        description="Run the agent- vs CoT-distillation study, stage by stage; each finished "
        "stage is skipped when the command runs again.",
    )
    ssub = p.add_subparsers(dest="study_command", metavar="ACTION")
    p.set_defaults(func=lambda _a: (p.print_help(), EXIT_CONFIG)[1])
    r = ssub.add_parser("run", help="run or continue a study in --out")
    src = r.add_mutually_exclusive_group()
    src.add_argument("--config", type=Path, help="JSON file of StudyConfig fields over a preset")
    src.add_argument("--preset", choices=["cpu-small", "quick"], help="[default: cpu-small]")
    r.add_argument("--quick", action="store_true", help="the quick preset (test suite)")
    r.add_argument("--out", required=True, type=Path, help="study folder (created; resumed)")
    r.add_argument("--budget-h", type=float, help="stop cleanly after this many hours")
    r.add_argument("--student", help="student base model folder (or 'smollm2')")
    r.add_argument("--teacher", help="teacher model folder (or 'embedded') to serve with vLLM")
    r.add_argument("--teacher-url", help="an OpenAI-compatible server already serving the teacher")
    r.add_argument("--teacher-model", help="the teacher's served name")
    r.add_argument("--index-dir", help="mini-Wikipedia index for web_search (factual questions)")
    r.add_argument("--data-dir", help="the shared data folder (questions/, wiki/)")
    r.add_argument("--serve", choices=["vllm", "embedded"], help="how students are served")
    r.add_argument("--concurrency", "-j", type=int, help="runs in flight")
    r.add_argument("--nice", type=int, default=0, help="niceness of the vLLM servers started")
    r.add_argument("--mcp-config", type=Path, metavar="FILE",
                   help="MCP servers file whose tools the agent runs get (tasks that name them); "
                   "env DISTILLERY_MCP_CONFIG")  # fmt: skip
    r.add_argument("--harvest-from", type=Path, metavar="DIR",
                   help="start this new study with DIR's teacher records (its config may differ "
                   "only after the harvest: SFT, evaluation, repair)")  # fmt: skip
    r.set_defaults(func=run_study_command)
    rep = ssub.add_parser("report", help="write results.json/.md from what a study has so far")
    rep.add_argument("--out", required=True, type=Path, help="the study folder")
    rep.set_defaults(func=report_command)
    pk = ssub.add_parser("pack", help="archive a study's finished work to continue it elsewhere")
    pk.add_argument("--out", required=True, type=Path, help="the study folder")
    pk.add_argument("--to", required=True, type=Path, help="the archive to write (.tar.gz)")
    pk.add_argument("--without-weights", action="store_true",
                    help="leave the trained students out (the record of a finished study; "
                    "continuing it trains them again)")  # fmt: skip
    pk.set_defaults(func=pack_command)
    up = ssub.add_parser("unpack", help="extract a packed study into a new folder")
    up.add_argument("archive", type=Path, help="a `study pack` archive")
    up.add_argument("--out", required=True, type=Path, help="the new study folder")
    up.set_defaults(func=unpack_command)


def pack_command(args: argparse.Namespace) -> int:
    from study import PackError, pack_study

    try:
        summary = pack_study(args.out, args.to, weights=not args.without_weights)
    except (PackError, OSError) as e:
        return fail(str(e), EXIT_CONFIG, json_line=True)
    emit({"ok": True, **summary})
    return 0


def unpack_command(args: argparse.Namespace) -> int:
    from study import PackError, unpack_study

    try:
        manifest = unpack_study(args.archive, args.out)
    except (PackError, OSError) as e:
        return fail(str(e), EXIT_CONFIG, json_line=True)
    emit({"ok": True, "out": str(args.out), **manifest,
          "next": f"distillery study run --config ... --out {args.out} (the same configuration)"})
    return 0


def report_command(args: argparse.Namespace) -> int:
    from study import ConfigError, StudyError, report_study

    try:
        results = report_study(args.out)
    except (StudyError, ConfigError, OSError, ValueError) as e:
        return fail(str(e), EXIT_CONFIG, json_line=True)
    emit({"ok": True, "partial": results["partial"], "results": str(args.out / "results.json"),
          "harvest": results["harvest"], "build_data": results["build_data"]})  # fmt: skip
    return 0


@dataclass
class _Backend:
    """Runtimes built by the composition root (distillery.components)."""

    executor: str
    index_dir: str | None
    cache_dir: Path
    model_timeout_s: float | None = None
    """A model call's timeout: the run's (StudyConfig.run_timeout_s), not the service's 120 s
    default - on a 2-core CPU one 768-token reply at 4 in flight takes about that long."""
    vllm_python: Path | None = field(default=None, kw_only=True)
    """Settings.vllm_python: the vLLM venv the study starts its servers with."""
    mcp_config: Path | None = None
    """--mcp-config (unset: DISTILLERY_MCP_CONFIG, read by Settings): each runtime's MCP
    servers, started and closed with the stage that uses it."""

    def runtime(
        self, *, url: str | None, name: str, path: Path | None, executor: bool, search: bool
    ) -> Any:
        from distillery.components import build_components
        from distillery.settings import Settings, set_in_environment

        values: dict[str, Any] = {"model": name, "executor": self.executor}
        if self.model_timeout_s and not set_in_environment("model_timeout_s"):
            values["model_timeout_s"] = self.model_timeout_s
        if url:
            values["model_url"] = url
        if path is not None:
            values["model_path"] = path
        if search and self.index_dir:
            values["index_dir"] = Path(self.index_dir)
        if self.mcp_config is not None:
            values["mcp_config"] = self.mcp_config
        settings = Settings(**values)  # type: ignore[arg-type]
        return build_components(settings, with_executor=executor, with_retriever=search)


def run_study_command(args: argparse.Namespace) -> int:
    from distillery.settings import Settings
    from study import (
        BudgetSpent,
        ConfigError,
        HarvestError,
        ServeError,
        StudyError,
        load_config,
        reuse_harvest,
        run_study,
    )

    teacher: dict[str, Any] = {}
    if args.teacher_url:
        teacher.update(url=args.teacher_url, path=None)
    if args.teacher:
        teacher["path"] = args.teacher
    if args.teacher_model:
        teacher["name"] = args.teacher_model
    overrides: dict[str, Any] = {
        "teacher": teacher or None,
        "student": {"path": args.student} if args.student else None,
        "index_dir": args.index_dir,
        "data_dir": args.data_dir,
        "serve": args.serve,
        "concurrency": args.concurrency,
    }
    try:
        cfg = load_config(args.config, preset_name="quick" if args.quick else args.preset,
                          **overrides)  # fmt: skip
        if cfg.search and not cfg.index_dir and cfg.hotpot_train + cfg.hotpot_test:
            corpus = Path(cfg.data_dir) / "wiki" / "passages.jsonl.gz"
            raise ConfigError(
                "factual questions search the mini-Wikipedia: build its index once with "
                f"`distillery index build --corpus {corpus} --index-dir INDEX` and pass "
                "--index-dir INDEX (or set search: false in a --config file)"
            )
        if args.harvest_from is not None:
            reused = reuse_harvest(args.harvest_from, cfg.to_dict(), args.out)
            print(f"study: the teacher harvest of {reused['from']} ({', '.join(reused['copied'])})",
                  file=sys.stderr, flush=True)  # fmt: skip
    except (ConfigError, HarvestError) as e:
        return fail(str(e), EXIT_CONFIG, json_line=True)
    except OSError as e:
        return fail(f"cannot copy the harvest of {args.harvest_from}: {e}", EXIT_FAILED,
                    json_line=True)  # fmt: skip
    settings = Settings(**{})
    backend = _Backend(cfg.executor, cfg.index_dir, settings.cache_dir, cfg.run_timeout_s,
                       mcp_config=args.mcp_config, vllm_python=settings.vllm_python)
    try:
        summary = run_study(cfg, args.out, backend, budget_h=args.budget_h, nice=args.nice)
    except BudgetSpent as e:
        return fail(str(e), EXIT_BUDGET, json_line=True, complete=False, out=str(args.out))
    except ConfigError as e:
        return fail(str(e), EXIT_CONFIG, json_line=True)
    except (StudyError, ServeError) as e:
        return fail(f"{e}; then rerun the same command", EXIT_FAILED, json_line=True)
    except KeyboardInterrupt:
        return fail(
            f"interrupted; finished work is kept in {args.out}: rerun the same command to continue",
            EXIT_INTERRUPTED, json_line=True,
        )  # fmt: skip
    results = json.loads((args.out / "results.json").read_text())
    emit({"ok": True, **summary, "table": results.get("table")})
    return 0
