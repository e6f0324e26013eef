"""Report numbers recomputed by hand from the fixture records (tests/evaluation/fixtures.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evaluation.metrics import percentile
from evaluation.report import write_reports
from tests.evaluation.fixtures import fixture_records, write_run


def test_percentiles_interpolate_between_ranks() -> None:
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0], 95) == pytest.approx(3.85)
    assert percentile([7.0], 95) == 7.0
    assert percentile([], 50) is None


def test_report_numbers_match_a_hand_count(tmp_path: Path) -> None:
    out = write_run(tmp_path / "run", fixture_records())
    rep = write_reports(out, html=False)
    m, f = rep["sets"]["m"], rep["sets"]["f"]
    # math: correct m/1, m/3 of 4 (m/4 failed and counts wrong)
    assert (m["n"], m["correct"], m["accuracy"]) == (4, 2, 0.5)
    assert m["em"] is None and m["f1"] is None
    # 5 action steps: valid 3 (m/1 s2, m/2 s1, m/3 s2), parse 1 (m/1 s1), exec 1 (m/3 s1);
    # the final-answer call of m/3 is not an action step
    assert m["steps"] == 5
    assert (m["valid_step_rate"], m["parse_error_rate"], m["execution_error_rate"]) == (
        0.6, 0.2, 0.2,
    )
    # 8 candidates: 3 parse errors, 2 execution errors
    assert m["candidate_parse_error_rate"] == 0.375
    assert m["candidate_execution_error_rate"] == 0.25
    assert m["max_steps_rate"] == 0.25 and m["finish_reasons"] == {
        "answer": 2, "error": 1, "max_steps": 1,
    }
    assert (m["errors"], m["error_rate"]) == (1, 0.25)
    assert m["steps_mean"] == 1.25
    assert (m["prompt_tokens_mean"], m["completion_tokens_mean"], m["tokens_mean"]) == (
        150, 30, 180,
    )
    assert (m["latency_p50_s"], m["latency_p95_s"]) == (2.5, 3.85)
    # factual, no judge: EM a=1, b=0, c=0; F1 1, 2/3, 0
    assert (f["n"], f["correct"]) == (3, 1)
    assert f["accuracy"] == pytest.approx(1 / 3, abs=1e-4)
    assert f["em"] == pytest.approx(1 / 3, abs=1e-4)
    assert f["f1"] == pytest.approx((1 + 2 / 3 + 0) / 3, abs=1e-4)
    assert f["judge_accuracy"] is None and f["n_judged"] == 0
    # recall over the covered f/a, f/b: only f/a's web_search result held its gold passage
    assert (f["covered"], f["retrieval_recall"], f["retrieval_recall_all"]) == (2, 0.5, 0.5)
    assert f["parse_error_rate"] == 0.0 and f["steps"] == 4
    # web_search: f/a and f/b searched once each, f/c never; only f/a's result names its
    # gold answer ("Eiffel Tower" in the passage; "Paris" is not in the Louvre's)
    assert (f["searches_mean"], f["search_rate"]) == (
        pytest.approx(2 / 3, abs=1e-4), pytest.approx(2 / 3, abs=1e-4))
    assert f["answer_seen_rate"] == pytest.approx(1 / 3, abs=1e-4)
    assert (m["searches_mean"], m["search_rate"], m["answer_seen_rate"]) == (0.0, 0.0, None)
    # the paper's Avg.: unweighted mean over the two sets; overall pools the 7 questions
    assert rep["average_accuracy"] == pytest.approx((1 / 2 + 1 / 3) / 2, abs=1e-4)
    assert rep["overall"]["n"] == 7 and rep["overall"]["correct"] == 3
    assert rep["missing"] == 0 and rep["metric"] == "exact_match"
    saved = json.loads((out / "report.json").read_text())
    assert saved["sets"]["m"]["accuracy"] == 0.5
    md = (out / "report.md").read_text()
    assert "| Run | M | F | Avg. |" in md
    assert "| fixture | 50.0 (n=4) | 33.3 (n=3) | 41.7 |" in md


def test_the_judge_decides_factual_accuracy_when_configured(tmp_path: Path) -> None:
    out = write_run(
        tmp_path / "run", fixture_records(), judge={"url": "http://judge/v1", "model": "j"}
    )
    with (out / "judgments.jsonl").open("w") as fh:
        for qid, verdict, error in [("f/a", True, None), ("f/b", False, None),
                                    ("f/c", None, "judge unavailable: down")]:
            fh.write(json.dumps({"id": qid, "verdict": verdict, "error": error}) + "\n")
    rep = write_reports(out, html=False)
    f = rep["sets"]["f"]
    assert rep["metric"] == "judge"
    # a judged correct, b wrong, c's judge call failed: counted wrong, reported as an error
    assert (f["correct"], f["n_judged"], f["judge_errors"]) == (1, 2, 1)
    assert f["judge_accuracy"] == 0.5
    assert f["em"] == pytest.approx(1 / 3, abs=1e-4)  # EM and F1 are reported regardless
    assert "judge call(s) failed" in (out / "report.md").read_text()

    (out / "judgments.jsonl").write_text(
        "".join(json.dumps({"id": q, "verdict": True, "error": None}) + "\n"
                for q in ("f/a", "f/b", "f/c"))
    )
    assert write_reports(out, html=False)["sets"]["f"]["accuracy"] == 1.0


def test_a_missing_record_is_reported_and_a_cut_last_line_is_skipped(tmp_path: Path) -> None:
    recs = fixture_records()
    out = write_run(tmp_path / "run", recs[:-1])
    with (out / "records.jsonl").open("a") as fh:
        fh.write(json.dumps(recs[-1])[:40])  # a writer killed mid-line
    rep = write_reports(out, html=False)
    assert rep["missing"] == 1 and rep["sets"]["f"]["n"] == 2
    assert "have no record yet" in (out / "report.md").read_text()


def test_eval_report_rewrites_the_reports_from_the_folder(tmp_path: Path) -> None:
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    out = write_run(tmp_path / "run", fixture_records())
    proc = subprocess.run([sys.executable, "-m", "distillery", "eval", "report", str(out)],
                          capture_output=True, text=True, cwd=repo, timeout=120)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.splitlines()[-1])
    assert summary["sets"] == {"m": 0.5, "f": 0.3333} and summary["missing"] == 0
    assert all((out / f).is_file() for f in ("report.json", "report.md", "report.html"))
    proc = subprocess.run([sys.executable, "-m", "distillery", "eval", "report", str(tmp_path)],
                          capture_output=True, text=True, cwd=repo, timeout=120)
    assert proc.returncode == 2 and "is not an evaluation folder (no config.json)" in proc.stderr
