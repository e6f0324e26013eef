"""An evaluation folder read back (`load_run`), its report (`build_report`), and the
tables every report shows (`paper_table`, `describe_run`).

Everything is recomputed from the folder alone (config.json, records.jsonl, gold.json,
judgments.jsonl, read through training.run_folder), so `distillery eval report DIR`
rewrites the reports of any run and `compare` reads runs the same way. The report dict:
    {"run": {"name", "out", "mode", "model", "agent", "judge", ...},
     "sets": {NAME: {"n", "accuracy", "em", "f1", "judge_accuracy", "parse_error_rate", ...}},
     "average_accuracy": unweighted mean over sets (the paper's "Avg."),
     "overall": pooled metrics, "missing": questions of the config without a record}
The markdown and HTML writers (evaluation.report, evaluation.html_report) build on this
module and never on each other's internals.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evaluation.datasets import PAPER_SETS, GoldPassages
from evaluation.metrics import QuestionRow, question_row, summarize
from training.run_folder import load_records

__all__ = ["Run", "build_report", "describe_run", "fmt_num", "fmt_pct", "load_run",
           "paper_table"]


@dataclass
class Run:
    out: Path
    config: dict[str, Any]
    records: dict[str, dict[str, Any]]
    rows: dict[str, list[QuestionRow]] = field(default_factory=dict)
    """Set name -> rows, in the config's question order (questions with a record)."""
    missing: int = 0

    @property
    def name(self) -> str:
        return str(self.config.get("name") or self.out.name)

    @property
    def set_names(self) -> list[str]:
        return [str(s["name"]) for s in self.config.get("sets", [])]

    def label(self, set_name: str) -> str:
        for s in self.config.get("sets", []):
            if s["name"] == set_name:
                return str(s.get("label") or set_name)
        return set_name

    @property
    def use_judge(self) -> bool:
        return bool(self.config.get("judge"))


def load_run(out: Path) -> Run:
    """Read an evaluation folder; ValueError when it is not one."""
    out = Path(out)
    cfg_path = out / "config.json"
    if not cfg_path.is_file():
        raise ValueError(f"{out} is not an evaluation folder (no config.json)")
    config = json.loads(cfg_path.read_text(encoding="utf-8"))
    records = load_records(out / "records.jsonl")
    gold_doc: dict[str, Any] = {}
    if (out / "gold.json").is_file():
        gold_doc = json.loads((out / "gold.json").read_text(encoding="utf-8"))
    gold = {qid: GoldPassages(**g) for qid, g in gold_doc.items()}
    judgments = load_records(out / "judgments.jsonl")
    run = Run(out=out, config=config, records=records)
    use_judge = run.use_judge
    by_set: dict[str, list[QuestionRow]] = {name: [] for name in run.set_names}
    domains = {str(s["name"]): str(s["domain"]) for s in config.get("sets", [])}
    for rec_id, rec in records.items():
        set_name = str(rec.get("source") or rec_id.split("/", 1)[0])
        if set_name not in by_set:
            continue
        by_set[set_name].append(
            question_row(
                rec,
                set_name=set_name,
                domain=domains[set_name],
                gold=gold.get(rec_id),
                judgment=judgments.get(rec_id),
                use_judge=use_judge,
            )
        )
    run.rows = by_set
    expected = sum(int(s.get("n", 0)) for s in config.get("sets", []))
    run.missing = max(0, expected - sum(len(r) for r in by_set.values()))
    return run


def build_report(run: Run) -> dict[str, Any]:
    summary = summarize(run.rows, use_judge=run.use_judge, order=run.set_names)
    for s in run.config.get("sets", []):
        m = summary["sets"].get(s["name"])
        if m is not None:
            m["label"] = s.get("label", s["name"])
            m["domain"] = s["domain"]
            m["planned"] = s.get("n")
            m["covered_in_file"] = s.get("covered_total")
            m["total_in_file"] = s.get("total")
    cfg = run.config
    return {
        "run": {
            "name": run.name,
            "out": str(run.out),
            "mode": cfg.get("mode"),
            "model": cfg.get("model"),
            "agent": cfg.get("agent"),
            "cot": cfg.get("cot"),
            "judge": cfg.get("judge"),
            "retrieval": cfg.get("retrieval"),
            "protocol": cfg.get("protocol"),
            "limit": cfg.get("limit"),
            "only_covered": cfg.get("only_covered"),
            "created_at": cfg.get("created_at"),
        },
        "metric": "judge" if run.use_judge else "exact_match",
        **summary,
        "missing": run.missing,
    }


def fmt_pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def fmt_num(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def paper_table(reports: Sequence[dict[str, Any]]) -> str:
    """One row per run, one column per set (the union, in the paper's order), Avg."""
    order = [name for name in PAPER_SETS]
    names: list[str] = []
    labels: dict[str, str] = {}
    for rep in reports:
        for name, m in rep["sets"].items():
            if name not in names:
                names.append(name)
                labels[name] = str(m.get("label") or name)
    names.sort(key=lambda n: (order.index(n) if n in order else len(order)))
    head = "| Run | " + " | ".join(labels[n] for n in names) + " | Avg. |"
    sep = "|---|" + "---:|" * (len(names) + 1)
    lines = [head, sep]
    for rep in reports:
        cells = []
        for n in names:
            m = rep["sets"].get(n)
            cells.append("-" if m is None else f"{fmt_pct(m['accuracy'])} (n={m['n']})")
        lines.append(
            f"| {rep['run']['name']} | "
            + " | ".join(cells)
            + f" | {fmt_pct(rep['average_accuracy'])} |"
        )
    return "\n".join(lines)


def describe_run(rep: dict[str, Any]) -> str:
    r = rep["run"]
    model = r.get("model") or {}
    who = model.get("name") or model.get("path") or model.get("kind")
    where = model.get("url") or model.get("path") or ""
    agent = r.get("agent") or {}
    bits = [f"mode **{r.get('mode')}**", f"model `{who}`" + (f" ({where})" if where else "")]
    if r.get("mode") == "agent" and agent:
        bits.append(
            f"N={agent.get('samples')} policy={agent.get('policy')} "
            f"max_steps={agent.get('max_steps')} T={agent.get('temperature')} "
            f"prompt={agent.get('prompt')} seed={agent.get('seed')}"
        )
    judge = r.get("judge")
    bits.append(
        f"factual accuracy: LLM judge `{judge.get('model')}`" if judge else
        "factual accuracy: normalized exact match (no judge configured)"
    )
    if r.get("only_covered"):
        bits.append("factual sets restricted to questions with gold passages (--only-covered)")
    return "; ".join(bits)
