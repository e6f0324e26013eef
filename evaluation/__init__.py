"""Evaluation: `distillery eval` on the paper's eight tasks, with reports people can read.

- `evaluation.datasets`: the paper's eight test sets (domain, file, sha256), other question
  files, the mini-Wikipedia's gold passages (coverage, retrieval recall);
- `evaluation.runner`: run + resume in a folder (config.json, records.jsonl) on top of
  `training.generate`; `evaluation.gateway_client`: the same through a gateway's /v1/solve;
- `evaluation.metrics`: the paper's metrics per set and overall;
- `evaluation.judge`: the LLM judge for factual answers, verdicts cached;
- `evaluation.report` / `evaluation.html_report`: report.json, report.md, report.html;
- `evaluation.compare`: runs side by side with paired bootstrap confidence intervals.

The names below are what other packages may import; they load lazily.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "PAPER_SETS",
    "CompareError",
    "DatasetError",
    "EvalConfig",
    "EvalError",
    "EvalSet",
    "GatewayClient",
    "GatewayError",
    "Judge",
    "JudgeCache",
    "aggregate",
    "bootstrap_diff",
    "build_report",
    "compare_runs",
    "load_run",
    "question_row",
    "resolve_sets",
    "run_eval",
    "write_reports",
]

_EXPORTS = {
    "PAPER_SETS": "evaluation.datasets",
    "CompareError": "evaluation.compare",
    "DatasetError": "evaluation.datasets",
    "EvalConfig": "evaluation.runner",
    "EvalError": "evaluation.runner",
    "EvalSet": "evaluation.datasets",
    "GatewayClient": "evaluation.gateway_client",
    "GatewayError": "evaluation.gateway_client",
    "Judge": "evaluation.judge",
    "JudgeCache": "evaluation.judge",
    "aggregate": "evaluation.metrics",
    "bootstrap_diff": "evaluation.compare",
    "build_report": "evaluation.results",
    "compare_runs": "evaluation.compare",
    "load_run": "evaluation.results",
    "question_row": "evaluation.metrics",
    "resolve_sets": "evaluation.datasets",
    "run_eval": "evaluation.runner",
    "write_reports": "evaluation.report",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
