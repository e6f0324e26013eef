"""Paired bootstrap CIs on data with a known answer; comparisons of fixture runs; refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from evaluation.compare import CompareError, bootstrap_diff, compare_runs
from tests.evaluation.fixtures import fixture_records, write_run

REPO = Path(__file__).resolve().parents[2]


def test_a_constant_difference_has_a_zero_width_interval() -> None:
    a, b = np.zeros(50), np.ones(50)
    assert bootstrap_diff(a, b, resamples=2000) == (1.0, 1.0, 1.0)
    assert bootstrap_diff(b, b, resamples=2000) == (0.0, 0.0, 0.0)


def test_the_interval_matches_the_normal_approximation() -> None:
    # d = b - a is 1 on half of 400 questions, 0 on the rest: mean 0.5, standard error
    # sqrt(0.25 / 400) = 0.025, so the 95% interval is about 0.5 +- 1.96 * 0.025 = +-0.049
    a = np.zeros(400)
    b = np.array([1.0, 0.0] * 200)
    mean, lo, hi = bootstrap_diff(a, b, resamples=20_000, seed=1)
    assert mean == 0.5
    assert lo == pytest.approx(0.5 - 0.049, abs=0.006)
    assert hi == pytest.approx(0.5 + 0.049, abs=0.006)
    assert bootstrap_diff(a, b, resamples=20_000, seed=1) == (mean, lo, hi)  # seeded


def test_pairing_removes_the_shared_noise() -> None:
    # the two runs agree on every question but 20 of 400, where b wins: paired, the gain
    # of 0.05 is clearly above zero even though both accuracies are near 0.5
    rng = np.random.default_rng(0)
    a = (rng.random(400) < 0.5).astype(float)
    b = a.copy()
    flip = np.flatnonzero(a == 0)[:20]
    b[flip] = 1.0
    mean, lo, hi = bootstrap_diff(a, b, resamples=10_000)
    assert mean == pytest.approx(0.05)
    assert lo > 0.02 and hi < 0.08


def test_compare_runs_pairs_on_question_ids(tmp_path: Path) -> None:
    base = write_run(tmp_path / "base", fixture_records(), name="base")
    better = fixture_records()
    better[1]["correct"] = True  # m/2 now right
    better.pop()  # f/c missing in this run: only the shared questions are paired
    other = write_run(tmp_path / "other", better, name="other")
    summary = compare_runs([base, other], tmp_path / "cmp", resamples=2000)
    doc = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    (pair,) = doc["pairs"]
    m, f = pair["sets"]["m"], pair["sets"]["f"]
    assert (m["n"], m["base_accuracy"], m["other_accuracy"], m["diff"]) == (4, 0.5, 0.75, 0.25)
    assert (m["wins"], m["losses"]) == (1, 0)
    assert m["ci_low"] == 0.0 and m["ci_high"] == 0.75  # 1 win in 4: resamples hold 0..3 wins
    assert (f["n"], f["only_in_base"], f["diff"]) == (2, 1, 0.0)
    assert pair["average"]["diff"] == pytest.approx(0.125)
    assert summary["runs"] == ["base", "other"]
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| other vs base | M | 4 | 50.0 | 75.0 | +25.0 | [+0.0, +75.0] | 1 / 0 |" in md
    html = (tmp_path / "cmp" / "compare.html").read_text()
    assert 'id="pairs"' in html and html.count('data-chart="accuracy"') == 1


def test_runs_without_shared_questions_are_refused(tmp_path: Path) -> None:
    base = write_run(tmp_path / "base", fixture_records(), name="base")
    recs = fixture_records()
    for r in recs:
        r["id"] = r["id"] + "-other"
    other = write_run(tmp_path / "other", recs, name="other")
    with pytest.raises(CompareError, match="share no questions"):
        compare_runs([base, other], tmp_path / "cmp")
    proc = subprocess.run(
        [sys.executable, "-m", "distillery", "eval", "compare", str(base), str(other),
         "--out", str(tmp_path / "cmp")],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert proc.returncode == 2
    assert "share no questions" in proc.stderr and proc.stderr.count("\n") == 1
    assert json.loads(proc.stdout.splitlines()[-1])["ok"] is False
    assert not (tmp_path / "cmp").exists()


def test_a_set_read_from_different_files_is_refused(tmp_path: Path) -> None:
    base = write_run(tmp_path / "base", fixture_records(), name="base")
    other = write_run(tmp_path / "other", fixture_records(), name="other")
    cfg = json.loads((other / "config.json").read_text())
    cfg["sets"][0]["sha256"] = "different"
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CompareError, match="different files"):
        compare_runs([base, other], tmp_path / "cmp")


def test_runs_graded_differently_are_compared_with_a_warning(tmp_path: Path) -> None:
    base = write_run(tmp_path / "base", fixture_records(), name="base")
    other = write_run(tmp_path / "other", fixture_records(), name="other",
                      judge={"url": "http://judge/v1", "model": "j"})
    summary = compare_runs([base, other], tmp_path / "cmp", resamples=500, html=False)
    assert summary["warnings"] == [
        "factual accuracy is measured differently (base: exact_match, other: judge); "
        "compare EM/F1 instead"
    ]
    assert "**Warning**: factual accuracy" in (tmp_path / "cmp" / "compare.md").read_text()
