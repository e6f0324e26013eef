"""`distillery train sft` under torchrun (DDP, gloo, 2 CPU processes) logs the same loss per
step as one process with the same effective batch: the two ranks split each optimizer step's
micro-batches (accumulation 2 x 2 ranks = 4 x 1 process), the Trainer averages gradients and
normalizes the loss by the tokens of the whole global batch. Rank 0 alone writes the run's
files (one log line per step, one summary)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.training.conftest import ARITH, read_jsonl, short_conversations

REPO = Path(__file__).resolve().parents[2]


def sft_argv(model: Path, data: Path, out: Path) -> list[str]:
    return [
        "-m", "distillery.cli", "train", "sft", "--model", str(model), "--data", str(data),
        "--output-dir", str(out), "--method", "full", "--lr", "1e-3", "--lr-scheduler",
        "constant", "--batch-size", "1", "--effective-batch", "4", "--max-steps", "3",
        "--epochs", "3", "--threads", "1", "--save-steps", "100", "--seed", "7", "--no-progress",
        "--device", "cpu",
    ]  # fmt: skip


def losses(run: Path) -> dict[int, float]:
    rows = [r for r in read_jsonl(run / "log.jsonl") if "loss" in r]
    steps = [r["step"] for r in rows]
    assert len(steps) == len(set(steps)), f"a step was logged twice: {steps}"
    return {r["step"]: r["loss"] for r in rows}


@pytest.mark.slow
def test_torchrun_two_cpu_ranks_match_one_process(tiny_model_dir: Path, tmp_path: Path) -> None:
    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.exists():
        pytest.skip("torchrun is not installed beside this interpreter")
    assert len(ARITH) == 4  # 4 conversations: one optimizer step is exactly one epoch
    data = short_conversations(tmp_path / "train.jsonl", tmp_path / "prompt.md", n=4)
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    one = subprocess.run(
        [sys.executable, *sft_argv(tiny_model_dir, data, tmp_path / "one")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    ddp = subprocess.run(
        [str(torchrun), "--standalone", "--nnodes", "1", "--nproc-per-node", "2",
         *sft_argv(tiny_model_dir, data, tmp_path / "ddp")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert ddp.returncode == 0, ddp.stderr[-3000:]

    single, parallel = losses(tmp_path / "one"), losses(tmp_path / "ddp")
    assert sorted(single) == sorted(parallel) == [1, 2, 3]
    assert [parallel[s] for s in (1, 2, 3)] == pytest.approx(
        [single[s] for s in (1, 2, 3)], rel=1e-4
    )
    assert single[3] < single[1]  # it trains: the comparison is not between two flat lines
    a = json.loads((tmp_path / "one" / "train_summary.json").read_text())
    b = json.loads((tmp_path / "ddp" / "train_summary.json").read_text())
    assert a["gradient_accumulation_steps"] == 4 and b["gradient_accumulation_steps"] == 2
    assert b["data_parallel_world"] == 2 and a["data_parallel_world"] == 1
    # the same number of learned tokens went through the model in both runs
    assert a["metrics"]["trained_tokens"] == b["metrics"]["trained_tokens"]
    assert (tmp_path / "ddp" / "final" / "model.safetensors").is_file()
    shutil.rmtree(tmp_path / "one" / "checkpoints", ignore_errors=True)
