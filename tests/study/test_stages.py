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
# without the CoT row, no CoT twin is trained (the CoT harvest stays: it is shared)
TWO_ROWS = _with_results([
    *HARVEST, ("generate-cot", ("questions",)),
    ("build-data-agent", ("student-base", "generate-agent")),
    TRAINING[0], TRAINING[2], EVALS[0], EVALS[3], ("compare", ("eval-base", "eval-agent")),
])  # fmt: skip


def _study(tmp_path: Path, **fields: Any) -> Study:
    cfg = load_config(preset_name="quick", student={"path": "smollm2"},
                      teacher={"url": "http://127.0.0.1:9/v1", "name": "t", "path": None},
                      **fields)  # fmt: skip
    return Study(cfg, tmp_path, backend=None)  # type: ignore[arg-type]


@pytest.mark.parametrize(("fields", "expected"), [
    ({}, PLAIN), ({"hint_attempts": 1}, HINTED), ({"rows": ["agent", "base"]}, TWO_ROWS),
    # a task set adds question files, not stages
    ({"task_sets": [{"name": "shop", "questions": "q.jsonl", "train": 1, "test": 1}]}, PLAIN),
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


def test_a_study_without_the_cot_row_trains_no_cot_twin_but_keeps_the_harvest(
    tmp_path: Path,
) -> None:
    names = [s.name for s in _study(tmp_path, rows=["agent"]).stages]
    assert "generate-cot" in names
    assert [n for n in names if n.endswith("-cot")] == ["generate-cot"]
    assert [n for n in names if n.endswith("-agent")] == [
        "generate-agent", "build-data-agent", "sft-agent", "export-agent", "eval-agent"]


def test_sft_precision_keeps_old_fingerprints_at_fp32_and_refuses_fp16() -> None:
    from study.config import ConfigError, fingerprint

    base = _study(Path("/nonexistent")).cfg.to_dict()
    old = {**base, "sft": {k: v for k, v in base["sft"].items() if k != "precision"}}
    assert base["sft"]["precision"] == "fp32"
    assert fingerprint(base) == fingerprint(old), "a study written before the field resumes"
    bf16 = {**base, "sft": {**base["sft"], "precision": "bf16"}}
    assert fingerprint(bf16) != fingerprint(base), "bf16 changes the numbers: not the same study"
    with pytest.raises(ConfigError, match="sft.precision"):
        load_config(preset_name="quick", student={"path": "smollm2"},
                    teacher={"url": "http://127.0.0.1:9/v1", "name": "t", "path": None},
                    sft={"precision": "fp16"})  # fmt: skip
