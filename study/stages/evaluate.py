"""The held-out evaluation: eval-ROW (eval/ROW: the base student, the CoT- and the
agent-distilled students, the agent student with SAG, the teacher as reference) and compare
(compare/: evaluation.compare.compare_runs, paired bootstrap CIs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent import AgentConfig
from study.context import StudyContext, StudyError, digest

__all__ = ["ROW_LABELS", "ROW_ORDER", "compare", "evaluate"]

ROW_LABELS = {
    "base": "base student (agent)",
    "cot": "CoT-distilled",
    "agent": "agent-distilled",
    "agent_sag": "agent-distilled + SAG",
    "teacher": "teacher (agent)",
}
ROW_ORDER = ("base", "cot", "agent", "agent_sag", "teacher")
"""The rows in the comparison's and the results table's order."""


def _agent_config(ctx: StudyContext, row: str) -> AgentConfig:
    cfg = ctx.cfg
    sag = row == "agent_sag"
    return AgentConfig(
        prompt="teacher" if row == "teacher" else "student",
        samples=cfg.sag_samples if sag else 1,
        temperature=0.4 if sag else 0.0, top_p=0.8 if sag else 1.0,
        max_steps=cfg.eval_max_steps, max_tokens=cfg.eval_max_tokens, seed=0,
        timeout_s=cfg.run_timeout_s,
    )  # fmt: skip


def evaluate(ctx: StudyContext, row: str) -> dict[str, Any]:
    """eval/ROW: ROW's model on the held-out sets (hotpot_test, math_test, gsm_hard and each
    task set's NAME_test)."""
    from evaluation.datasets import resolve_sets
    from evaluation.runner import EvalConfig, EvalError, run_eval

    cfg = ctx.cfg
    held_out = ("hotpot_test", "math_test", "gsm_hard",
                *(f"{s['name']}_test" for s in cfg.task_sets))  # fmt: skip
    sets = resolve_sets(
        [str(ctx.qfile(n)) for n in held_out if ctx.qfile(n).stat().st_size],
        Path(cfg.data_dir), limit=cfg.eval_limit,
    )  # fmt: skip
    mode = "cot" if row == "cot" else "agent"
    search = cfg.search and mode == "agent" and any(s.domain == "factual" for s in sets)
    rt, desc = ctx.runtime(row, executor=mode == "agent", search=search)
    ecfg = EvalConfig(
        mode=mode,  # type: ignore[arg-type]
        agent=_agent_config(ctx, row), concurrency=cfg.concurrency, model=desc,
        retrieval={"backend": "embedded", "index_dir": cfg.index_dir} if search else None,
        limit=cfg.eval_limit, cot_temperature=0.0, cot_max_tokens=cfg.cot_max_tokens,
        name=ROW_LABELS[row], progress=False, data_dir=cfg.data_dir,
    )  # fmt: skip
    out = ctx.out / "eval" / row

    async def go() -> dict[str, Any]:
        try:
            return await run_eval(sets, out, ecfg, runtime=rt, html=False)
        except EvalError as e:  # e.g. a task's tools that no --mcp-config server has
            raise StudyError(f"eval-{row}: {e}") from e
        finally:
            await rt.aclose()

    summary = ctx.run_async(go(), f"eval-{row}")
    ctx.say(f"eval-{row}: average accuracy {summary.get('average_accuracy')} "
            f"{summary.get('sets')}")  # fmt: skip
    return {**summary, "_output": digest([out / "records.jsonl"])}


def compare(ctx: StudyContext) -> dict[str, Any]:
    """compare/: every evaluated row against the others, paired by question."""
    from evaluation.compare import compare_runs

    order = [r for r in ROW_ORDER if r in ctx.cfg.rows]
    dirs = [ctx.out / "eval" / r for r in order]
    summary = compare_runs(dirs, ctx.out / "compare", resamples=ctx.cfg.resamples, html=False)
    return {**summary, "_output": digest([ctx.out / "compare"])}
