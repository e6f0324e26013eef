"""`distillery eval compare`: runs side by side, with paired bootstrap confidence intervals.

The first run is the baseline. For every other run and every set both evaluated, the
difference in accuracy is computed on the questions both runs answered (paired on the
question id), with a 95% confidence interval from a paired bootstrap: the shared question
ids are resampled with replacement `resamples` times (seeded, so a comparison is
reproducible), the percentile interval of the resampled mean differences is reported.
The average row resamples every set independently and takes the unweighted mean of the
per-set differences (the paper's Avg.). A set evaluated from different files (sha256) in
two runs is refused, and so are runs that share no question at all: there is nothing to
pair. Writes DIR/compare.json, compare.md and compare.html.
"""

from __future__ import annotations

import html as _html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.html_report import md_table_html, write_html
from evaluation.results import Run, build_report, load_run, paper_table
from training.run_folder import write_json_atomic

__all__ = ["CompareError", "bootstrap_diff", "compare_runs", "pair_runs"]


class CompareError(ValueError):
    """The runs cannot be compared; the message says why."""


def bootstrap_diff(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    resamples: int = 10_000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(mean(b - a), CI low, CI high) of paired values, percentile bootstrap at 95%."""
    av, bv = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if av.shape != bv.shape or av.ndim != 1 or not av.size:
        raise ValueError("bootstrap_diff needs two paired, non-empty 1-d samples")
    d = bv - av
    rng = np.random.default_rng(seed)
    means = _resampled_means(d, resamples, rng)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(d.mean()), float(lo), float(hi)


def _resampled_means(d: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    out = np.empty(resamples)
    chunk = max(1, 2_000_000 // max(1, d.size))
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        idx = rng.integers(0, d.size, size=(stop - start, d.size))
        out[start:stop] = d[idx].mean(axis=1)
    return out


def _set_files(run: Run) -> dict[str, str]:
    return {str(s["name"]): str(s.get("sha256")) for s in run.config.get("sets", [])}


def pair_runs(
    base: Run, other: Run, *, resamples: int = 10_000, seed: int = 0
) -> dict[str, Any]:
    """Per-set paired differences other - base, and the average row."""
    files_a, files_b = _set_files(base), _set_files(other)
    sets: dict[str, Any] = {}
    diffs: dict[str, np.ndarray] = {}
    for name in base.set_names:
        if name not in other.rows:
            continue
        if files_a.get(name) != files_b.get(name):
            raise CompareError(
                f"set {name!r} was read from different files in {base.out} and {other.out} "
                "(sha256 differs): the same ids may be different questions"
            )
        a = {r.id: float(r.correct) for r in base.rows.get(name, [])}
        b = {r.id: float(r.correct) for r in other.rows.get(name, [])}
        shared = [qid for qid in a if qid in b]
        if not shared:
            continue
        av = np.array([a[q] for q in shared])
        bv = np.array([b[q] for q in shared])
        mean, lo, hi = bootstrap_diff(av, bv, resamples=resamples, seed=seed)
        diffs[name] = bv - av
        sets[name] = {
            "label": base.label(name),
            "n": len(shared),
            "only_in_base": len(a) - len(shared),
            "only_in_other": len(b) - len(shared),
            "base_accuracy": round(float(av.mean()), 4),
            "other_accuracy": round(float(bv.mean()), 4),
            "diff": round(mean, 4),
            "ci_low": round(lo, 4),
            "ci_high": round(hi, 4),
            "significant": bool(lo > 0 or hi < 0),
            "wins": int((bv > av).sum()),
            "losses": int((bv < av).sum()),
        }
    avg: dict[str, Any] | None = None
    if diffs:
        rng = np.random.default_rng(seed)
        per_set = [_resampled_means(d, resamples, rng) for d in diffs.values()]
        means = np.mean(per_set, axis=0)
        lo, hi = np.percentile(means, [2.5, 97.5])
        point = float(np.mean([d.mean() for d in diffs.values()]))
        avg = {
            "sets": len(diffs),
            "diff": round(point, 4),
            "ci_low": round(float(lo), 4),
            "ci_high": round(float(hi), 4),
            "significant": bool(lo > 0 or hi < 0),
        }
    return {"base": base.name, "other": other.name, "sets": sets, "average": avg}


def _signed(x: float) -> str:
    return f"{100 * x:+.1f}"


def _pairs_md(pairs: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| Run vs baseline | Set | n paired | Baseline % | Run % | Diff (pts) | 95% CI | "
        "Wins / losses |",
        "|---|---|---:|---:|---:|---:|---|---:|",
    ]
    for p in pairs:
        for s in p["sets"].values():
            star = " *" if s["significant"] else ""
            lines.append(
                f"| {p['other']} vs {p['base']} | {s['label']} | {s['n']} | "
                f"{100 * s['base_accuracy']:.1f} | {100 * s['other_accuracy']:.1f} | "
                f"{_signed(s['diff'])}{star} | [{_signed(s['ci_low'])}, {_signed(s['ci_high'])}] | "
                f"{s['wins']} / {s['losses']} |"
            )
        if p["average"]:
            a = p["average"]
            star = " *" if a["significant"] else ""
            lines.append(
                f"| {p['other']} vs {p['base']} | **Avg.** ({a['sets']} sets) | | | | "
                f"{_signed(a['diff'])}{star} | "
                f"[{_signed(a['ci_low'])}, {_signed(a['ci_high'])}] | |"
            )
    return "\n".join(lines)


def _load_runs(dirs: Sequence[Path]) -> list[Run]:
    if len(dirs) < 2:
        raise CompareError("compare needs at least two run folders (the first is the baseline)")
    runs = []
    for d in dirs:
        try:
            runs.append(load_run(Path(d)))
        except (ValueError, OSError) as e:
            raise CompareError(str(e)) from e
    if len({r.name for r in runs}) != len(runs):
        # folder names may repeat (a/run, b/run): label by path then
        for r in runs:
            r.config = {**r.config, "name": str(r.out)}
    return runs


def _refuse_unpaired(runs: Sequence[Run], pairs: Sequence[dict[str, Any]]) -> None:
    for p in pairs:
        if p["sets"]:
            continue
        other = next(r for r in runs if r.name == p["other"])
        base_sets = ", ".join(f"{k} ({len(v)})" for k, v in runs[0].rows.items()) or "none"
        other_sets = ", ".join(f"{k} ({len(v)})" for k, v in other.rows.items()) or "none"
        raise CompareError(
            f"runs {p['base']} and {p['other']} share no questions (baseline: {base_sets}; "
            f"other: {other_sets}): compare runs of the same question sets"
        )


def _warnings(reports: Sequence[dict[str, Any]]) -> list[str]:
    """Differences between the runs that make a factual difference hard to read."""
    out = []
    metrics = {rep["run"]["name"]: rep["metric"] for rep in reports}
    if len(set(metrics.values())) > 1:
        shown = ", ".join(f"{k}: {v}" for k, v in metrics.items())
        out.append(f"factual accuracy is measured differently ({shown}); compare EM/F1 instead")
    return out


def _write_comparison(
    out: Path,
    runs: Sequence[Run],
    reports: Sequence[dict[str, Any]],
    pairs: Sequence[dict[str, Any]],
    *,
    resamples: int,
    seed: int,
    html: bool,
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    doc = {
        "runs": [{"name": r.name, "out": str(r.out)} for r in runs],
        "reports": list(reports),
        "pairs": list(pairs),
        "resamples": resamples,
        "seed": seed,
    }
    write_json_atomic(out / "compare.json", doc)
    md = [
        "# Comparison: " + " vs ".join(r.name for r in runs),
        "",
        "## Accuracy (%)",
        "",
        paper_table(reports),
        "",
        f"## Paired differences (baseline: {runs[0].name})",
        "",
        _pairs_md(pairs),
        "",
        f"Paired on question id; 95% percentile bootstrap over {resamples:,} resamples "
        f"(seed {seed}). * the interval excludes 0.",
        "",
        *[f"**Warning**: {w}\n" for w in _warnings(reports)],
    ]
    (out / "compare.md").write_text("\n".join(md), encoding="utf-8")
    if html:
        section = (
            f'<section id="pairs"><h2>Paired differences (baseline: {_html.escape(runs[0].name)}), '
            f"95% bootstrap CI</h2>{md_table_html(_pairs_md(pairs))}</section>"
        )
        write_html(out / "compare.html", runs, reports, extra_sections=[section])


def compare_runs(
    dirs: Sequence[Path], out: Path, *, resamples: int = 10_000, seed: int = 0, html: bool = True
) -> dict[str, Any]:
    """Compare evaluation folders (the first is the baseline); writes the comparison to `out`."""
    runs = _load_runs(dirs)
    reports = [build_report(r) for r in runs]
    pairs = [pair_runs(runs[0], r, resamples=resamples, seed=seed) for r in runs[1:]]
    _refuse_unpaired(runs, pairs)
    out = Path(out)
    _write_comparison(out, runs, reports, pairs, resamples=resamples, seed=seed, html=html)
    return {
        "out": str(out),
        "runs": [r.name for r in runs],
        "pairs": [
            {
                "other": p["other"],
                "average": p["average"],
                "sets": {
                    k: {x: v[x] for x in ("n", "diff", "ci_low", "ci_high")}
                    for k, v in p["sets"].items()
                },
            }
            for p in pairs
        ],
        "files": {k: str(out / f"compare.{k}") for k in ["json", "md", "html"][: 3 if html else 2]},
        "warnings": _warnings(reports),
    }
