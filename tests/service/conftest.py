"""Fixtures for the gateway tests: a real uvicorn gateway in front of the scripted model
server (real HTTP), the real executor and an embedded index built from a few passages."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from distillery.settings import Settings
from tests.helpers.gateway_server import GatewayServer
from tests.helpers.scripted_server import ScriptedServer

MODEL = "scripted-model"

PASSAGES = [
    ("1", "Eiffel Tower", "The Eiffel Tower is a wrought-iron lattice tower in Paris, France. "
     "It is 330 metres tall and was completed in 1889."),
    ("2", "Mount Everest", "Mount Everest is Earth's highest mountain above sea level, "
     "8,849 metres, in the Himalayas."),
    ("3", "Python (programming language)", "Python is a high-level programming language "
     "created by Guido van Rossum and first released in 1991."),
]


def executor_kind() -> str:
    """The jailed sandbox; DISTILLERY_TEST_EXECUTOR=local runs the tests on its unjailed mode."""
    return os.environ.get("DISTILLERY_TEST_EXECUTOR") or "sandbox"


def reply(code: str, thought: str = "I will compute it.") -> str:
    return f"Thought: {thought}\nCode:\n```py\n{code}\n```<end_code>"


NOT_CODE = "I am not sure what to do."
"""A candidate that fails to parse (so a step runs exactly one candidate's code)."""


def one_valid(body: dict[str, Any], text: str) -> list[str]:
    """`text` as the first choice and unparsable replies for the rest of the n."""
    n = int(body.get("n") or 1)
    return [text] + [NOT_CODE] * (n - 1)


def task_of(body: dict[str, Any]) -> str:
    """The question the agent was given (the first user turn: 'New task:\\n<question>...')."""
    for m in body["messages"]:
        if m["role"] == "user":
            text = m["content"]
            return text.split("New task:", 1)[-1].strip()
    raise AssertionError("no user message in the model request")


def square_handler(body: dict[str, Any]) -> list[str]:
    """Answers 'square N' with final_answer(N*N) computed in the executor."""
    match = re.search(r"square (-?\d+)", task_of(body))
    n = int(match.group(1)) if match else 0
    return one_valid(body, reply(f"x = {n}\nfinal_answer(x * x)"))


def final_handler(body: dict[str, Any]) -> list[str]:
    return one_valid(body, reply("final_answer(42)"))


@pytest.fixture(scope="session")
def index_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An embedded (tantivy) index of a few passages."""
    from retrieval.embedded import EmbeddedIndexWriter
    from retrieval.ingest import IterSource, ingest

    d = tmp_path_factory.mktemp("index") / "wiki"
    rows = [{"id": i, "title": t, "text": x} for i, t, x in PASSAGES]
    report = ingest(
        IterSource("service-test-passages", rows, "1"),
        EmbeddedIndexWriter(d, heap_mb=32, threads=1),
        progress=False,
        log=lambda _msg: None,
    )
    assert report.indexed == len(PASSAGES)
    return d


def make_settings(srv: ScriptedServer, index_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "model_url": srv.url,
        "model": MODEL,
        "model_retries": 0,
        "model_timeout_s": 30.0,
        "executor": executor_kind(),
        "sandbox_pool_size": 1,
        "samples": 2,
        "max_steps": 3,
        "index_dir": index_dir,
        "max_concurrency": 16,
        "max_queue": 64,
        "request_timeout_s": 60.0,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="session")
def gateway_session(
    scripted_server_session: ScriptedServer, index_dir: Path
) -> Iterator[GatewayServer]:
    """One gateway for the session (default test settings, no API keys)."""
    with GatewayServer(make_settings(scripted_server_session, index_dir)) as gw:
        yield gw


@pytest.fixture
def gateway(gateway_session: GatewayServer, scripted_server: ScriptedServer) -> GatewayServer:
    """The session gateway; its model server (`scripted_server`) is reset for this test."""
    return gateway_session


def sse_events(text: str) -> list[tuple[str | None, str]]:
    """(event, data) pairs of a text/event-stream body; comments are skipped."""
    out = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        event, data = None, []
        for line in block.split("\n"):
            if line.startswith(":") or not line:
                continue
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                event = value
            elif field == "data":
                data.append(value)
        if event is not None or data:
            out.append((event, "\n".join(data)))
    return out


def metric_value(metrics_text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in metrics_text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, label_text = head.partition("{")
        if metric != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', label_text))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(value)
    return total


def dumps(obj: Any) -> str:
    return json.dumps(obj)
