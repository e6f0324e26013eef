"""The teacher's harvest: generate-agent, generate-agent-hinted and generate-cot.

Attempt K of a mode writes teacher/MODE/attempt-K.jsonl and runs only the questions without
a correct record yet (K=0 greedy, then sampled); the hinted stage retries the questions of
`hint_tasks` that no unhinted attempt solved, with a hint only the teacher sees
(study/hints.py), into teacher/agent/hinted-K.jsonl. Every file is append-only and resumed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent import AgentConfig, Runtime
from study.context import StudyContext, StudyError, digest
from training import load_records

__all__ = ["generate", "generate_hinted", "harvest_stats"]


def generate(ctx: StudyContext, mode: str) -> dict[str, Any]:
    """teacher/MODE/attempt-K.jsonl for K < attempts, until every question is solved."""
    cfg = ctx.cfg
    questions = ctx.train_questions()
    solved: set[str] = set()
    attempts: list[dict[str, Any]] = []
    files: list[Path] = []
    for k in range(cfg.attempts):
        todo = [q for q in questions if q.id not in solved]
        if not todo:
            break
        path = ctx.records_dir(mode) / f"attempt-{k}.jsonl"
        files.append(path)
        temp = 0.0 if (k == 0 and cfg.first_greedy) else cfg.temperature
        ctx.say(f"generate-{mode}: attempt {k + 1}/{cfg.attempts}, {len(todo)} questions "
                f"(T={temp})")  # fmt: skip
        done = _attempt(ctx, mode, todo, path, seed=k, temp=temp,
                        where=f"generate-{mode} attempt {k + 1}")  # fmt: skip
        solved |= done.pop("solved")
        attempts.append({"attempt": k + 1, **done})
    stats = harvest_stats(questions, files)
    ctx.say(f"generate-{mode}: {stats['solved']}/{stats['questions']} solved "
            f"({stats['by_task']})")  # fmt: skip
    return {**stats, "attempts": attempts, "files": [str(f) for f in files],
            "_output": digest(files)}  # fmt: skip


def _attempt(
    ctx: StudyContext, mode: str, todo: list[Any], path: Path, *, seed: int, temp: float,
    where: str,
) -> dict[str, Any]:  # fmt: skip
    """One teacher pass over `todo` into `path` (resumed: done ids are skipped); returns
    {"temperature", "ran", "correct", "errors", "solved": the ids correct in `path`}."""
    from training.generate import GenerateConfig

    cfg = ctx.cfg
    agent_cfg = AgentConfig(
        prompt=cfg.teacher_prompt, samples=1, temperature=temp,
        top_p=1.0 if temp == 0 else 0.95, max_steps=cfg.teacher_max_steps,
        max_tokens=cfg.teacher_max_tokens, seed=seed, timeout_s=cfg.run_timeout_s,
    )  # fmt: skip
    gen_cfg = GenerateConfig(
        mode="cot" if mode == "cot" else "agent", ftp=cfg.ftp and mode == "agent",
        concurrency=cfg.concurrency, agent=agent_cfg, cot_temperature=temp,
        cot_max_tokens=cfg.cot_max_tokens, progress=False,
    )  # fmt: skip
    url, name = ctx.teacher_endpoint()
    math_qs = [q for q in todo if q.task == "math"]
    fact_qs = [q for q in todo if q.task != "math"]
    # factual first: the runs a weak teacher needs most, and the slowest
    for qs, search in ((fact_qs, cfg.search), (math_qs, False)):
        if not qs:
            continue
        rt = ctx.backend.runtime(url=url, name=name, path=None, executor=mode == "agent",
                                 search=search and mode == "agent")  # fmt: skip
        ctx.run_async(_generate(rt, qs, path, gen_cfg), where)
    recs = load_records(path)
    errors = [r for r in recs.values() if r.get("status") != "ok"]
    if errors and len(errors) == len(recs):
        raise StudyError(
            f"every teacher run of {where} failed ({errors[0].get('error')}); "
            f"is the teacher reachable? records in {path}; rerun to retry them"
        )
    newly = {i for i, r in recs.items() if r.get("correct")}
    return {"temperature": temp, "ran": len(todo), "correct": len(newly),
            "errors": len(errors), "solved": newly}  # fmt: skip


async def _generate(rt: Runtime, qs: list[Any], path: Path, cfg: Any) -> Any:
    from training.generate import GenerateError, tools_by_task
    from training.generate import generate as run_generate

    try:
        await rt.tools.start()  # MCP servers of --mcp-config, closed by rt.aclose()
        # each question gets its task's tools: math none, factual every tool of the runtime
        # (web_search when search is on), a task over MCP tools the ones it names
        return await run_generate(qs, path, model=rt.model, executor=rt.executor,
                                  tools_for=tools_by_task(rt.tools_for_run),
                                  config=cfg)  # fmt: skip
    except GenerateError as e:  # e.g. a task's tools that no --mcp-config server has
        raise StudyError(str(e)) from e
    finally:
        await rt.aclose()


def _hinted_questions(ctx: StudyContext, solved: set[str]) -> list[Any]:
    """The questions of `hint_tasks` no unhinted attempt solved; with `hint_limit`, at most
    that many, the ones already started (hinted-0.jsonl) first."""
    cfg = ctx.cfg
    questions = [q for q in ctx.train_questions()
                 if q.task in cfg.hint_tasks and q.id not in solved]  # fmt: skip
    if cfg.hint_limit is not None:
        started = load_records(ctx.records_dir("agent") / "hinted-0.jsonl")
        questions = sorted(questions, key=lambda q: q.id not in started)[: cfg.hint_limit]
    return questions


def generate_hinted(ctx: StudyContext) -> dict[str, Any]:
    """Hinted retries: the questions of `hint_tasks` that no unhinted attempt solved, with
    the gold answer (and titles) in a hint only the teacher sees (study/hints.py)."""
    from dataclasses import replace

    from study.hints import gold_titles, hint_text

    cfg = ctx.cfg
    solved = {i for f in ctx.agent_files() for i, r in load_records(f).items()
              if _correct_now(r)}  # fmt: skip
    questions = _hinted_questions(ctx, solved)
    titles = gold_titles(Path(cfg.data_dir)) if cfg.hint_titles else {}
    attempts: list[dict[str, Any]] = []
    files: list[Path] = []
    for k in range(cfg.hint_attempts):
        todo = [replace(q, meta={**q.meta, "hint": hint_text(q.answer, titles.get(q.id, []))})
                for q in questions if q.id not in solved]  # fmt: skip
        if not todo:
            break
        path = ctx.records_dir("agent") / f"hinted-{k}.jsonl"
        files.append(path)
        temp = 0.0 if k == 0 else cfg.temperature
        ctx.say(f"generate-agent-hinted: attempt {k + 1}/{cfg.hint_attempts}, "
                f"{len(todo)} questions the teacher failed (T={temp})")  # fmt: skip
        done = _attempt(ctx, "agent", todo, path, seed=100 + k, temp=temp,
                        where=f"generate-agent-hinted attempt {k + 1}")  # fmt: skip
        solved |= done.pop("solved")
        attempts.append({"attempt": k + 1, **done})
    stats = harvest_stats(questions, files)
    stats["hint_titles"] = cfg.hint_titles
    ctx.say(f"generate-agent-hinted: {stats['solved']}/{stats['questions']} solved with a "
            "hint")  # fmt: skip
    return {**stats, "attempts": attempts, "files": [str(f) for f in files],
            "_output": digest(files)}  # fmt: skip


def _correct_now(rec: dict[str, Any]) -> bool:
    """A record's verdict by the current grader (a record graded by an older one may say
    wrong where it is right, e.g. `final_answer(True)` to a yes/no question)."""
    if rec.get("correct"):
        return True
    if rec.get("status") != "ok" or rec.get("gold") is None:
        return False
    from training.grading import grade

    pred = rec.get("prediction") if rec.get("mode") != "cot" else (rec.get("cot") or {}).get(
        "text")
    return grade(rec.get("task", "math"), pred, rec["gold"]).correct


def harvest_stats(questions: list[Any], files: list[Path]) -> dict[str, Any]:
    """Teacher success per task and the attempts spent, from the attempt files."""
    # (the factual questions are HotpotQA's; any other task by its name)
    task_of = {q.id: ("hotpotqa" if q.task == "factual" else q.task) for q in questions}
    by_task: dict[str, dict[str, Any]] = {}
    for name in sorted(set(task_of.values())):
        by_task[name] = {"questions": sum(1 for v in task_of.values() if v == name), "solved": 0,
                      "runs": 0, "errors": 0, "solved_at_attempt": {},
                      "completion_tokens": 0}  # fmt: skip
    solved: set[str] = set()
    for k, path in enumerate(files, 1):
        for qid, rec in load_records(path).items():
            t: dict[str, Any] | None = by_task.get(task_of.get(qid, ""))
            if t is None:
                continue
            t["runs"] += 1
            t["errors"] += rec.get("status") != "ok"
            t["completion_tokens"] += int((rec.get("usage") or {}).get("completion_tokens", 0))
            if rec.get("correct") and qid not in solved:
                solved.add(qid)
                t["solved"] += 1
                t["solved_at_attempt"][str(k)] = t["solved_at_attempt"].get(str(k), 0) + 1
    for row in by_task.values():
        row["success_rate"] = (
            round(row["solved"] / row["questions"], 4) if row["questions"] else None
        )
    return {"questions": len(questions), "solved": len(solved), "by_task": by_task}
