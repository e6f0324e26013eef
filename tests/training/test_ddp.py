"""`distillery train sft` under torchrun (DDP, gloo, 2 CPU processes) logs the same loss per
step as one process with the same effective batch: the two ranks split each optimizer step's
micro-batches (accumulation 2 x 2 ranks = 4 x 1 process), the Trainer averages gradients and
normalizes the loss by the tokens of the whole global batch. Rank 0 alone writes the run's
files (one log line per step, one summary). Tolerance: rel 1e-4 on each step's loss (float32;
the all-reduce sums in another order than one process's accumulation). `--strategy fsdp`
needs GPUs and is refused on CPU (last test)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from distillery.cli import main as cli_main
from tests.training.conftest import ARITH, read_jsonl, short_conversations

REPO = Path(__file__).resolve().parents[2]


def sft_argv(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "-m", "distillery.cli", "train", "sft", "--model", str(model), "--data", str(data),
        "--output-dir", str(out), "--method", "full", "--lr", "1e-3", "--lr-scheduler",
        "constant", "--batch-size", "1", "--effective-batch", "4", "--max-steps", "3",
        "--epochs", "3", "--threads", "1", "--save-steps", "100", "--seed", "7", "--no-progress",
        "--device", "cpu", *extra,
    ]  # fmt: skip


def losses(run: Path) -> dict[int, float]:
    rows = [r for r in read_jsonl(run / "log.jsonl") if "loss" in r]
    steps = [r["step"] for r in rows]
    assert len(steps) == len(set(steps)), f"a step was logged twice: {steps}"
    return {r["step"]: r["loss"] for r in rows}


def env() -> dict[str, str]:
    e = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    e.pop("WORLD_SIZE", None)
    return e


def torchrun() -> Path:
    path = Path(sys.executable).parent / "torchrun"
    if not path.exists():
        pytest.skip("torchrun is not installed beside this interpreter")
    return path


def run_two_ranks(model: Path, data: Path, out: Path, *extra: str) -> None:
    proc = subprocess.run(
        [str(torchrun()), "--standalone", "--nnodes", "1", "--nproc-per-node", "2",
         *sft_argv(model, data, out, *extra)],
        cwd=REPO, env=env(), capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def one_process(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: one process, accumulation 4 (its folder holds train.jsonl and one/)."""
    torchrun()
    tmp = tmp_path_factory.mktemp("one-process")
    assert len(ARITH) == 4  # 4 conversations: one optimizer step is exactly one epoch
    data = short_conversations(tmp / "train.jsonl", tmp / "prompt.md", n=4)
    one = subprocess.run(
        [sys.executable, *sft_argv(tiny_model_dir, data, tmp / "one")],
        cwd=REPO, env=env(), capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    shutil.rmtree(tmp / "one" / "checkpoints", ignore_errors=True)
    return tmp


@pytest.mark.slow
def test_torchrun_two_cpu_ranks_match_one_process(
    tiny_model_dir: Path, one_process: Path, tmp_path: Path
) -> None:
    run_two_ranks(tiny_model_dir, one_process / "train.jsonl", tmp_path / "ddp")
    single, parallel = losses(one_process / "one"), losses(tmp_path / "ddp")
    assert sorted(single) == sorted(parallel) == [1, 2, 3]
    assert [parallel[s] for s in (1, 2, 3)] == pytest.approx(
        [single[s] for s in (1, 2, 3)], rel=1e-4
    )
    assert single[3] < single[1]  # it trains: the comparison is not between two flat lines
    a = json.loads((one_process / "one" / "train_summary.json").read_text())
    b = json.loads((tmp_path / "ddp" / "train_summary.json").read_text())
    assert a["gradient_accumulation_steps"] == 4 and b["gradient_accumulation_steps"] == 2
    assert b["data_parallel_world"] == 2 and a["data_parallel_world"] == 1
    # the same number of learned tokens went through the model in both runs
    assert a["metrics"]["trained_tokens"] == b["metrics"]["trained_tokens"]
    assert (tmp_path / "ddp" / "final" / "model.safetensors").is_file()


def test_fsdp_on_cpu_is_a_config_error(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # accelerate enables the Trainer's FSDP plugin only on GPUs (and other accelerators);
    # two gloo CPU ranks with it trained plain DDP (same losses, no parameter sharded), so
    # the CPU case is refused before anything runs instead of pretending to shard
    data = short_conversations(tmp_path / "train.jsonl", tmp_path / "prompt.md", n=1)
    argv = sft_argv(tiny_model_dir, data, tmp_path / "run", "--strategy", "fsdp")[2:]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert "--strategy fsdp needs CUDA GPUs" in err and "--strategy ddp" in err
    assert not (tmp_path / "run" / "sft_config.json").exists()
