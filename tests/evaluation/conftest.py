"""Fixtures for the evaluation tests: a tiny embedded index with its data folder, question
files, and `run_cli` (the real `python -m distillery` in a subprocess)."""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]

PASSAGES = [
    ("1", "Eiffel Tower", "The Eiffel Tower is a wrought-iron lattice tower in Paris, France. "
     "It was designed by the company of Gustave Eiffel."),
    ("2", "Mount Everest", "Mount Everest is Earth's highest mountain above sea level, in the "
     "Himalayas."),
    ("3", "Gustave Eiffel", "Gustave Eiffel was a French civil engineer born in Dijon."),
]


def reply(code: str, thought: str = "I will compute it.") -> str:
    return f"Thought: {thought}\nCode:\n```py\n{code}\n```<end_code>"


def task_of(body: dict[str, Any]) -> str:
    for m in body["messages"]:
        if m["role"] == "user":
            return str(m["content"]).split("New task:", 1)[-1].strip()
    raise AssertionError("no user message in the model request")


def square_handler(body: dict[str, Any]) -> list[str]:
    """'What is the square of N?' -> final_answer(N * N), computed by the executor."""
    match = re.search(r"square of (-?\d+)", task_of(body))
    n = int(match.group(1)) if match else 0
    return [reply(f"x = {n}\nfinal_answer(x * x)")] * int(body.get("n") or 1)


def write_square_questions(path: Path, n: int, wrong: set[int] = frozenset()) -> Path:  # type: ignore[assignment]
    """n questions; the gold answer of the indices in `wrong` is off by one."""
    with path.open("w") as f:
        for i in range(n):
            gold = i * i + (1 if i in wrong else 0)
            f.write(json.dumps({"id": f"q{i}", "question": f"What is the square of {i}?",
                                "answer": str(gold), "task": "math"}) + "\n")
    return path


@pytest.fixture(scope="session")
def wiki_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A data folder (wiki/passages.jsonl.gz, wiki/gold.jsonl, trivia.jsonl) and its index."""
    from retrieval.embedded import EmbeddedIndexWriter
    from retrieval.ingest import IterSource, ingest

    root = tmp_path_factory.mktemp("evaldata")
    (root / "wiki").mkdir()
    with gzip.open(root / "wiki" / "passages.jsonl.gz", "wt") as f:
        for pid, title, text in PASSAGES:
            f.write(json.dumps({"id": pid, "contents": f'"{title}"\n{text}'}) + "\n")
    trivia = root / "trivia.jsonl"
    trivia.write_text(
        json.dumps({"id": "t1", "question": "In which city is the Eiffel Tower?",
                    "answer": "Paris", "task": "factual"}) + "\n"
        + json.dumps({"id": "t2", "question": "Where was Gustave Eiffel born?",
                      "answer": "Dijon", "task": "factual"}) + "\n"
    )
    (root / "wiki" / "gold.jsonl").write_text(
        json.dumps({"question_id": "t1", "question_file": "trivia.jsonl", "passage_ids": ["1"],
                    "gold_titles": ["Eiffel Tower"]}) + "\n"
    )
    index = root / "index"
    rows = [{"id": i, "title": t, "text": x} for i, t, x in PASSAGES]
    ingest(IterSource("eval-test-passages", rows, "1"), EmbeddedIndexWriter(index, heap_mb=32,
           threads=1), progress=False, log=lambda _m: None)
    return {"root": root, "index": index, "trivia": trivia}


@pytest.fixture
def run_cli(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """`python -m distillery ARGS` in the repo, with a fresh cache dir and no retries."""

    def run(*args: str, timeout: float = 240, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
        e = dict(os.environ)
        e.update({"DISTILLERY_CACHE_DIR": str(tmp_path / "cache"), "DISTILLERY_MODEL_RETRIES": "0",
                  "DISTILLERY_SANDBOX_POOL_SIZE": "0"})
        e.update(env or {})
        return subprocess.run([sys.executable, "-m", "distillery", *args], capture_output=True,
                              text=True, cwd=REPO, timeout=timeout, env=e)

    return run


def last_json(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))
