"""Reports of an evaluation folder: `report.json`, `report.md` (and `report.html`).

`write_reports(DIR)` reads the folder (evaluation.results.load_run), builds its report and
writes report.json (the report dict), report.md (the paper-style table: one row per run,
one column per set, Avg., accuracy in percent; then one row per set with every metric)
and report.html (evaluation.html_report).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evaluation.html_report import write_html
from evaluation.results import (
    Run,
    build_report,
    describe_run,
    fmt_num,
    fmt_pct,
    load_run,
    paper_table,
)
from training.run_folder import write_json_atomic

__all__ = ["Run", "build_report", "load_run", "markdown_report", "paper_table", "write_reports"]


def details_table(rep: dict[str, Any]) -> str:
    head = (
        "| Set | n | Acc. | EM | F1 | Judge | Parse err/step | Exec err/step | Max steps | "
        "Steps | Prompt tok | Compl. tok | p50 s | p95 s | Covered | Recall | Searches | "
        "Answer seen |"
    )
    lines = [head, "|---|" + "---:|" * 17]
    for name, m in [*rep["sets"].items(), ("overall", rep["overall"])]:
        label = m.get("label", name) if name != "overall" else "**all**"
        lines.append(
            f"| {label} | {m['n']} | {fmt_pct(m['accuracy'])} | {fmt_pct(m['em'])} | "
            f"{fmt_pct(m['f1'])} | "
            f"{fmt_pct(m['judge_accuracy'])} | {fmt_pct(m['parse_error_rate'])} | "
            f"{fmt_pct(m['execution_error_rate'])} | {fmt_pct(m['max_steps_rate'])} | "
            f"{fmt_num(m['steps_mean'], 2)} | {fmt_num(m['prompt_tokens_mean'], 0)} | "
            f"{fmt_num(m['completion_tokens_mean'], 0)} | {fmt_num(m['latency_p50_s'], 2)} | "
            f"{fmt_num(m['latency_p95_s'], 2)} | {m['covered']} | "
            f"{fmt_pct(m['retrieval_recall'])} | {fmt_num(m['searches_mean'], 2)} | "
            f"{fmt_pct(m['answer_seen_rate'])} |"
        )
    return "\n".join(lines)


def markdown_report(rep: dict[str, Any]) -> str:
    lines = [
        f"# Evaluation: {rep['run']['name']}",
        "",
        describe_run(rep),
        "",
        "## Accuracy (%)",
        "",
        paper_table([rep]),
        "",
        "Avg. is the unweighted mean over the sets (the paper's). Math: answer checking of "
        "`training.grading`; factual: " + ("the LLM judge." if rep["metric"] == "judge" else
                                           "normalized exact match."),
        "",
        "## Per set",
        "",
        details_table(rep),
        "",
        "Rates are percentages. Parse/exec err per step: action steps where no candidate was "
        "kept, by the shown candidate's failure. Recall: covered questions whose kept "
        "web_search results contained a gold passage. Searches: web_search calls per "
        "question. Answer seen: factual questions whose gold answer occurred in one of the "
        "run's web_search results.",
    ]
    if rep.get("missing"):
        lines += [
            "",
            f"**{rep['missing']} planned question(s) have no record yet**: rerun the same "
            "command to finish the run.",
        ]
    errors = sum(m["judge_errors"] for m in rep["sets"].values())
    if errors:
        lines += [
            "",
            f"**{errors} judge call(s) failed** (counted wrong): rerun the same command to "
            "judge them again (verdicts are cached).",
        ]
    return "\n".join(lines) + "\n"


def write_reports(out: Path, *, html: bool = True) -> dict[str, Any]:
    """(Re)write report.json, report.md and report.html of an evaluation folder."""
    run = load_run(out)
    rep = build_report(run)
    write_json_atomic(Path(out) / "report.json", rep)
    (Path(out) / "report.md").write_text(markdown_report(rep), encoding="utf-8")
    if html:
        write_html(Path(out) / "report.html", [run], [rep])
    return rep
