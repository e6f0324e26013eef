"""SFT on the tiny model: the paper's defaults, CPU settings, resume after a crash gives the
same weights as an uninterrupted run, graceful stop + resume through the CLI, bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from distillery.cli import main as cli_main
from tests.training.conftest import lora_settings, read_jsonl
from training.sft import SFTError, SFTSettings, train_sft


def adapter_tensors(run: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(run / "final" / "adapter_model.safetensors"))


def test_defaults_are_the_papers() -> None:
    s = SFTSettings(model=Path("m"), data=[Path("d")], output_dir=Path("o"))
    assert (s.method, s.lora_r, s.lora_alpha, s.lora_dropout, s.target_modules) == (
        "lora", 64, 128, 0.05, "all-linear",
    )  # fmt: skip
    assert (s.learning_rate, s.lr_scheduler, s.epochs, s.effective_batch, s.max_length) == (
        2e-4, "linear", 2.0, 8, 10240,
    )  # fmt: skip


def test_finished_run_layout_and_summary(lora_run: Path, sft_data: Path) -> None:
    summary = json.loads((lora_run / "train_summary.json").read_text())
    assert summary["device"] == "cpu" and summary["precision"] == "fp32"
    assert summary["gradient_checkpointing"] is False  # off on CPU
    assert summary["gradient_accumulation_steps"] == 2
    assert summary["data"]["examples"] == 2 and summary["data"]["learned_tokens"] > 0
    m = summary["metrics"]
    assert m["global_step"] == 4 and m["tokens_per_s"] > 0 and m["peak_memory_mb"] > 0
    assert m["final_loss"] is not None and m["train_loss"] > 0
    assert (lora_run / "final" / "adapter_config.json").is_file()
    assert (lora_run / "final" / "tokenizer.json").is_file()
    cfg = json.loads((lora_run / "final" / "adapter_config.json").read_text())
    assert cfg["r"] == 8 and cfg["lora_alpha"] == 16
    # all linear layers of the Llama blocks, not the output head
    assert {m.rsplit(".", 1)[-1] for m in cfg["target_modules"]} == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
    }  # fmt: skip
    logs = read_jsonl(lora_run / "log.jsonl")
    assert [r["step"] for r in logs if "loss" in r] == [1, 2, 3, 4]
    assert all(r["loss"] > 0 for r in logs if "loss" in r)


class Crash(Exception):
    pass


def test_resume_after_a_crash_matches_the_uninterrupted_run(
    tiny_model_dir: Path, sft_data: Path, lora_run: Path, tmp_path: Path
) -> None:
    import torch
    from transformers import TrainerCallback

    class CrashAtStep3(TrainerCallback):  # type: ignore[misc]
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.global_step == 3:
                raise Crash("simulated hard failure after the step-2 checkpoint")

    out = tmp_path / "run"
    settings = lora_settings(tiny_model_dir, sft_data, out)
    with pytest.raises(Crash):
        train_sft(settings, extra_callbacks=[CrashAtStep3()])
    assert (out / "checkpoints" / "checkpoint-2").is_dir()
    assert not (out / "final").exists()

    summary = train_sft(settings)
    assert summary["resumed_from"].endswith("checkpoint-2")
    assert summary["metrics"]["global_step"] == 4
    resumed, reference = adapter_tensors(out), adapter_tensors(lora_run)
    assert resumed.keys() == reference.keys()
    for k in reference:
        assert torch.allclose(resumed[k], reference[k], atol=1e-6), k
    # and training moved the adapter: B matrices start at zero
    assert any(v.abs().max() > 0 for k, v in resumed.items() if "lora_B" in k)


def test_graceful_stop_and_resume_through_the_cli(
    tiny_model_dir: Path, sft_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    argv = [
        "train", "sft", "--model", str(tiny_model_dir), "--data", str(sft_data),
        "--output-dir", str(out), "--lora-r", "4", "--lora-alpha", "8", "--max-steps", "2",
        "--effective-batch", "2", "--batch-size", "2", "--save-steps", "100", "--no-progress",
    ]  # fmt: skip
    assert cli_main([*argv, "--stop-after-steps", "1"]) == 130  # checkpoint, then stop
    captured = capsys.readouterr()
    assert "run the same command again to resume" in captured.err
    assert json.loads(captured.out.strip().splitlines()[-1])["ok"] is False
    assert (out / "checkpoints" / "checkpoint-1").is_dir()

    # a different setting cannot continue this run
    assert cli_main([*argv, "--lr", "1e-3"]) == 2
    assert "settings differ" in capsys.readouterr().err
    assert cli_main([*argv, "--no-resume"]) == 2

    assert cli_main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["ok"] is True and summary["resumed_from"].endswith("checkpoint-1")
    assert summary["metrics"]["global_step"] == 2


def test_bad_inputs_say_what_to_do(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    with pytest.raises(SFTError, match="build-data"):
        train_sft(SFTSettings(model=tiny_model_dir, data=[data], output_dir=tmp_path / "o"))
    data.write_text('{"text": "no messages"}\n')
    with pytest.raises(SFTError, match="'messages'"):
        train_sft(SFTSettings(model=tiny_model_dir, data=[data], output_dir=tmp_path / "o"))
    with pytest.raises(SFTError, match="config.json"):
        train_sft(SFTSettings(model=tmp_path, data=[data], output_dir=tmp_path / "o"))
    long_row = {"messages": [
        {"role": "user", "content": "q " * 50}, {"role": "assistant", "content": "a " * 50},
    ]}  # fmt: skip
    data.write_text(json.dumps(long_row) + "\n")
    with pytest.raises(SFTError, match="longer than --max-length 20"):
        train_sft(
            SFTSettings(model=tiny_model_dir, data=[data], output_dir=tmp_path / "o", max_length=20)
        )


def test_sigterm_checkpoints_and_stops(
    tiny_model_dir: Path, sft_data: Path, tmp_path: Path
) -> None:
    """A batch job's SIGTERM (e.g. a Kubernetes eviction): checkpoint at the end of the
    current step, exit 130 with the reason, resumable."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    argv = [
        sys.executable, "-m", "distillery.cli", "train", "sft", "--model", str(tiny_model_dir),
        "--data", str(sft_data), "--output-dir", str(out), "--lora-r", "4", "--lora-alpha", "8",
        "--max-steps", "500", "--effective-batch", "2", "--batch-size", "2",
        "--save-steps", "1000", "--no-progress",
    ]  # fmt: skip
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=repo,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not (out / "log.jsonl").is_file() and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr[-2000:]
    assert "SIGTERM" in stderr and "run the same command again to resume" in stderr
    assert json.loads(stdout.strip().splitlines()[-1])["ok"] is False
    (ckpt,) = (out / "checkpoints").glob("checkpoint-*")
    assert 1 <= int(ckpt.name.split("-")[1]) < 500
