"""The `results` stage: results.json and results.md, the final table and what every stage
measured; for an unfinished study (`distillery study report`), the harvest and the filter so
far, from the records written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from study.context import StudyContext, write_json
from study.harvest import harvest_source
from study.stages.evaluate import ROW_LABELS, ROW_ORDER
from study.stages.generate import harvest_stats
from training import load_records

__all__ = ["collect_results", "results_markdown", "write_results"]


def write_results(ctx: StudyContext, stages: tuple[str, ...]) -> dict[str, Any]:
    """results.json and results.md from the markers of `stages` and the evaluations."""
    doc = collect_results(ctx, stages)
    write_json(ctx.out / "results.json", doc)
    (ctx.out / "results.md").write_text(results_markdown(doc), encoding="utf-8")
    return {"results": str(ctx.out / "results.json")}


def collect_results(study: StudyContext, names: tuple[str, ...]) -> dict[str, Any]:
    """results.json: the final table and what the stages `names` measured."""
    stages = {name: study.marker(name) or {} for name in names if name != "results"}
    table = []
    compare_md = study.out / "compare" / "compare.md"
    for row in ROW_ORDER:
        rep_path = study.out / "eval" / row / "report.json"
        if not rep_path.is_file():
            continue
        rep = json.loads(rep_path.read_text(encoding="utf-8"))
        table.append({"row": row, "label": ROW_LABELS[row], **_report_row(rep)})
    sft = {}
    for mode in ("agent", "cot"):
        s = stages.get(f"sft-{mode}", {}).get("summary") or {}
        if s:
            sft[mode] = {"examples": (s.get("data") or {}).get("examples"),
                         **{k: (s.get("metrics") or {}).get(k) for k in
                            ("global_step", "train_loss", "final_loss", "tokens_per_s",
                             "trained_tokens", "train_loop_s")}}  # fmt: skip
    return {
        "partial": not all(stages.get(n) for n in stages),
        "config": study.cfg.to_dict(),
        "wall_s": {n: m.get("wall_s_total") for n, m in stages.items() if m},
        "harvest": {m: _pick(stages.get(f"generate-{m}", {}).get("summary"),
                             ("questions", "solved", "by_task", "attempts"))
                    or _partial_harvest(study, m) for m in ("agent", "cot")},  # fmt: skip
        "harvest_hinted": _pick(stages.get("generate-agent-hinted", {}).get("summary"),
                                ("questions", "solved", "by_task", "attempts", "hint_titles")),
        "build_data": {m: _pick(stages.get(f"build-data-{m}", {}).get("summary"),
                                ("records", "kept", "dropped", "tokens", "hinted", "checks"))
                       or _partial_filter(study, m) for m in ("agent", "cot")},  # fmt: skip
        "harvest_from": harvest_source(study.out),
        "sft": sft,
        "table": table,
        "compare_md": str(compare_md) if compare_md.is_file() else None,
    }


def _attempt_files(study: StudyContext, mode: str) -> list[Path]:
    found = study.records_dir(mode).glob("attempt-*.jsonl")
    return sorted(found, key=lambda p: int(p.stem.removeprefix("attempt-")))


def _partial_harvest(study: StudyContext, mode: str) -> dict[str, Any] | None:
    """Harvest numbers of an unfinished generate stage, from the records written so far
    (only the questions with a record count: the others have not run yet)."""
    files = _attempt_files(study, mode)
    if not files or not study.qfile("math_train").is_file():
        return None
    ran = {i for f in files for i in load_records(f)}
    questions = [q for q in study.train_questions() if q.id in ran]
    stats = harvest_stats(questions, files)
    stats["partial"] = True
    stats["planned_questions"] = len(study.train_questions())
    return stats


def _partial_filter(study: StudyContext, mode: str) -> dict[str, Any] | None:
    """What build-data would keep of the records written so far (and why it drops the rest),
    with the study's repair and checks (hinted records included)."""
    files = _attempt_files(study, mode)
    if mode == "agent":
        files += sorted(study.records_dir(mode).glob("hinted-*.jsonl"))
    if not files:
        return None
    import tempfile

    from training.build_data import build_data

    cfg, agent = study.cfg, mode == "agent"
    with tempfile.TemporaryDirectory() as tmp:
        out = build_data(files, Path(tmp) / "data.jsonl", prompt="student", regrade=True,
                         repair=cfg.repair and agent, grounded=cfg.grounded and agent,
                         leak_check=cfg.leak_check and agent, unique_ids=True)  # fmt: skip
    return {"records": out["records"], "kept": out["kept"], "dropped": out["dropped"],
            "hinted": out["hinted"], "checks": out["checks"], "partial": True}  # fmt: skip


def _pick(d: dict[str, Any] | None, keys: tuple[str, ...]) -> dict[str, Any] | None:
    return None if not d else {k: d.get(k) for k in keys}


def _report_row(rep: dict[str, Any]) -> dict[str, Any]:
    sets = rep.get("sets") or {}
    out: dict[str, Any] = {"average_accuracy": rep.get("average_accuracy"), "sets": {}}
    for name, m in sets.items():
        out["sets"][name] = {k: m.get(k) for k in _REPORT_KEYS if k in m}
    overall = rep.get("overall") or {}
    out["overall"] = {k: overall.get(k) for k in _REPORT_KEYS if k in overall}
    return out


_REPORT_KEYS = ("accuracy", "n", "tokens_mean", "completion_tokens_mean", "parse_error_rate",
                "steps_mean", "error_rate")


def results_markdown(doc: dict[str, Any]) -> str:
    lines = ["# Distillation study: results" + (" (PARTIAL)" if doc.get("partial") else ""), ""]
    table = doc.get("table") or []
    if table:
        names = sorted({s for r in table for s in r["sets"]})
        lines += ["| row | " + " | ".join(names)
                  + " | average | tokens/question | parse-error rate |",
                  "|---|" + "---|" * (len(names) + 3)]  # fmt: skip
        for r in table:
            cells = [_fmt(r["sets"].get(n, {}).get("accuracy")) for n in names]
            o = r.get("overall") or {}
            tokens = o.get("tokens_mean")
            per = o.get("parse_error_rate")
            lines.append(f"| {r['label']} | " + " | ".join(cells)
                         + f" | {_fmt(r['average_accuracy'])} | "
                         + ("-" if tokens is None else f"{float(tokens):.0f}") + " | "
                         + ("-" if per is None else f"{float(per):.2f}") + " |")  # fmt: skip
        lines += ["", "Accuracy in %; paired bootstrap 95% CIs against the base student: "
                  "compare/compare.md."]  # fmt: skip
        lines.append("")
    for mode, h in (doc.get("harvest") or {}).items():
        if h:
            ran = (f" (partial: {h['questions']} of {h['planned_questions']} questions ran)"
                   if h.get("partial") else "")  # fmt: skip
            lines.append(f"- teacher {mode}{ran}: solved {h['solved']}/{h['questions']}; "
                         + "; ".join(f"{t}: {v['solved']}/{v['questions']} in {v['runs']} runs"
                                     for t, v in h["by_task"].items()))  # fmt: skip
    hinted = doc.get("harvest_hinted")
    if hinted:
        lines.append(f"- hinted retries: solved {hinted['solved']}/{hinted['questions']} that "
                     "no unhinted attempt solved" + (" (hint: answer and gold titles)"
                     if hinted.get("hint_titles") else " (hint: answer)"))  # fmt: skip
    src = doc.get("harvest_from")
    if src:
        lines.append(f"- the teacher harvest is {src['from']}'s (fingerprint {src['fingerprint']}, "
                     "reused: only fields after the harvest differ)")  # fmt: skip
    for mode, b in (doc.get("build_data") or {}).items():
        if b:
            so_far = " (of the records so far)" if b.get("partial") else ""
            lines.append(f"- build-data {mode}{so_far}: kept {b['kept']} of {b['records']}, "
                         f"dropped {b['dropped']}")  # fmt: skip
            if b.get("hinted") or b.get("checks"):
                lines.append(f"  - hinted examples kept: {b.get('hinted', 0)}; dropped by "
                             f"check: {b.get('checks') or {}}")  # fmt: skip
    for mode, s in (doc.get("sft") or {}).items():
        lines.append(f"- sft {mode}: {s['examples']} examples, {s['global_step']} steps, "
                     f"loss {s['final_loss']}, {s['tokens_per_s']} tokens/s")
    lines += ["", "Wall time per stage (s): " + ", ".join(
        f"{k} {v}" for k, v in (doc.get("wall_s") or {}).items())]  # fmt: skip
    return "\n".join(lines) + "\n"


def _fmt(x: Any) -> str:
    return "-" if x is None else f"{100 * float(x):.1f}"
