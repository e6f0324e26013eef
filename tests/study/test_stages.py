"""The stage registry against what existing study folders were written with: the names, the
order, the upstream lists and the digest formats of stages/NAME.json. A study folder made by
an earlier version must resume with every finished stage "done already"; a change here makes
every such folder redo its work, so these values are pinned (the rerun of a finished quick
study, test_study.py::test_rerun_skips_everything, checks the whole walk)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from study.config import load_config
from study.context import digest
from study.pipeline import Study

HARVEST = [
    ("questions", ()), ("student-base", ()), ("generate-agent", ("questions",)),
]  # fmt: skip
TRAINING = [
    ("sft-agent", ("student-base", "build-data-agent")),
    ("sft-cot", ("student-base", "build-data-cot")),
    ("export-agent", ("sft-agent",)), ("export-cot", ("sft-cot",)),
]  # fmt: skip
EVALS = [
    ("eval-agent", ("questions", "export-agent")),
    ("eval-agent_sag", ("questions", "export-agent")),
    ("eval-cot", ("questions", "export-cot")), ("eval-base", ("questions", "student-base")),
    ("eval-teacher", ("questions",)),
]  # fmt: skip
COMPARE = ("compare", ("eval-base", "eval-teacher", "eval-cot", "eval-agent", "eval-agent_sag"))


def _with_results(stages: list[tuple[str, tuple[str, ...]]]) -> list[tuple[str, tuple[str, ...]]]:
    return [*stages, ("results", tuple(n for n, _ in stages))]


PLAIN = _with_results([
    *HARVEST, ("generate-cot", ("questions",)),
    ("build-data-agent", ("student-base", "generate-agent")),
    ("build-data-cot", ("student-base", "generate-cot")),
    *TRAINING, *EVALS, COMPARE,
])  # fmt: skip
HINTED = _with_results([
    *HARVEST, ("generate-agent-hinted", ("questions", "generate-agent")),
    ("generate-cot", ("questions",)),
    ("build-data-agent", ("student-base", "generate-agent", "generate-agent-hinted")),
    ("build-data-cot", ("student-base", "generate-cot")),
    *TRAINING, *EVALS, COMPARE,
])  # fmt: skip
TWO_ROWS = _with_results([
    *HARVEST, ("generate-cot", ("questions",)),
    ("build-data-agent", ("student-base", "generate-agent")),
    ("build-data-cot", ("student-base", "generate-cot")),
    *TRAINING, EVALS[0], EVALS[3], ("compare", ("eval-base", "eval-agent")),
])  # fmt: skip


def _study(tmp_path: Path, **fields: Any) -> Study:
    cfg = load_config(preset_name="quick", student={"path": "smollm2"},
                      teacher={"url": "http://127.0.0.1:9/v1", "name": "t", "path": None},
                      **fields)  # fmt: skip
    return Study(cfg, tmp_path, backend=None)  # type: ignore[arg-type]


@pytest.mark.parametrize(("fields", "expected"), [
    ({}, PLAIN), ({"hint_attempts": 1}, HINTED), ({"rows": ["agent", "base"]}, TWO_ROWS),
])  # fmt: skip
def test_stage_names_order_and_upstreams_are_what_study_folders_hold(
    tmp_path: Path, fields: dict[str, Any], expected: list[tuple[str, tuple[str, ...]]]
) -> None:
    study = _study(tmp_path, **fields)
    assert [(s.name, s.upstream) for s in study.stages] == expected
    assert all(s.writes for s in study.stages), "every stage declares what it writes"


def test_inputs_and_output_digests_keep_their_format(tmp_path: Path) -> None:
    (tmp_path / "questions" / "sub").mkdir(parents=True)
    (tmp_path / "questions" / "x.jsonl").write_text("a\n")
    (tmp_path / "questions" / "sub" / "y").write_text("b")
    (tmp_path / "stages").mkdir()
    for name, output in (("questions", "aaaa"), ("generate-agent", "bbbb")):
        (tmp_path / "stages" / f"{name}.json").write_text(
            json.dumps({"stage": name, "output": output}))
    study = _study(tmp_path)
    # the values an earlier version wrote for the same markers and files
    assert study.inputs_digest(("questions", "generate-agent")) == "b89e6e066fcf2309"
    assert study.inputs_digest(("generate-agent", "questions", "eval-base")) == "2900c7fe91281e21"
    assert study.inputs_digest(()) == "44136fa355b3678a"
    assert digest([tmp_path / "questions"]) == "66e1700d89db65ff"
    assert digest([tmp_path / "questions" / "x.jsonl", tmp_path / "nothere"]) == "b9936c9b6243e1a7"
