"""Question sets for teacher generation and evaluation.

Three sources, one record type (`Question`):
- the paper's JSON files (`{"metadata": ..., "examples": [{"id", "question", "answer", ...}]}`,
  as in ../shared/data/questions),
- JSONL, one `{"question": ..., "answer"?: ..., "id"?: ..., "task"?: ...}` per line,
- a reasoning-gym generator, written `gym:<dataset>[?size=N&seed=S]`
  (e.g. `gym:gsm_symbolic?size=200&seed=1`): procedural GSM8K-style math.

Each question has a task (training.tasks: its grader and the tools its runs get). A
question's `"task"` names a registered one (`"math"`, `"factual"`, `"shop"`) or defines its
own (`{"name", "grader", "tools"?}`); in the paper's JSON, `metadata.task` sets it for the
whole file. Without one, the dataset's name decides between math and factual
(`task_for_dataset`); the `task` argument (`--task`) overrides them all.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from training.grading import Task
from training.tasks import TASKS, TaskError, TaskSpec, task_from_json

MATH_DATASETS = ("math", "aime", "gsm", "olymath", "amc", "gsm_symbolic")


class QuestionSetError(ValueError):
    """The question source cannot be read; the message says why and what to do."""


@dataclass
class Question:
    id: str
    question: str
    answer: Any = None
    """Gold answer (None when unknown: generation still runs, grading is skipped)."""
    task: Task = "math"
    """The task's name: a registered task (training.tasks.TASKS) unless `task_spec` is set."""
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    task_spec: TaskSpec | None = None
    """A task the question file defined itself (None: the registered task `task`)."""

    @property
    def spec(self) -> TaskSpec:
        """The question's task: its grader and the tools its runs get."""
        if self.task_spec is not None:
            return self.task_spec
        try:
            return TASKS[self.task]
        except KeyError:
            raise TaskError(f"question {self.id}: unknown task {self.task!r}") from None


def _task_fields(value: Any, where: str) -> dict[str, Any]:
    """`task` and `task_spec` of a Question from a file's `"task"` value."""
    try:
        spec = task_from_json(value, TASKS)
    except TaskError as e:
        raise QuestionSetError(f"{where}: {e}") from None
    return {"task": spec.name, "task_spec": None if TASKS.get(spec.name) == spec else spec}


def task_for_dataset(name: str) -> Task:
    """'math' for MATH/AIME/GSM/OlymMATH-like dataset names, else 'factual'."""
    low = name.lower()
    return "math" if any(k in low for k in MATH_DATASETS) else "factual"


def load_questions(
    source: str | Path, *, task: Task | None = None, limit: int | None = None
) -> list[Question]:
    """Read a question set; `task` overrides the inferred kind; `limit` keeps the first N."""
    src = str(source)
    if task is not None and task not in TASKS:
        raise QuestionSetError(f"unknown task {task!r}: registered tasks are {', '.join(TASKS)}")
    if src.startswith("gym:"):
        qs = _load_gym(src[4:], task)
    else:
        path = Path(src)
        if not path.is_file():
            raise QuestionSetError(f"question file {path} does not exist")
        if path.suffix == ".jsonl":
            qs = _load_jsonl(path, task)
        else:
            qs = _load_paper_json(path, task)
    if limit is not None:
        qs = qs[:limit]
    ids = [q.id for q in qs]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise QuestionSetError(f"{src}: question id {dup!r} appears more than once")
    return qs


def _load_paper_json(path: Path, task: Task | None) -> list[Question]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise QuestionSetError(
            f"{path} is not valid JSON ({e}); JSONL files must end in .jsonl"
        ) from e
    examples = data.get("examples") if isinstance(data, dict) else data
    if not isinstance(examples, list):
        raise QuestionSetError(
            f"{path}: expected {{'examples': [...]}} (the paper's format) or a JSON list"
        )
    metadata = data.get("metadata", {}) if isinstance(data, dict) else {}
    info = metadata.get("dataset_info", {}) if isinstance(metadata, dict) else {}
    default_name = str(info.get("name") or path.stem)
    file_task = metadata.get("task") if isinstance(metadata, dict) else None
    out = []
    for i, ex in enumerate(examples):
        if not isinstance(ex, dict) or not isinstance(ex.get("question"), str):
            raise QuestionSetError(f"{path}: example {i} has no 'question' string")
        name = str(ex.get("dataset_name") or default_name)
        meta = {k: v for k, v in ex.items() if k not in ("id", "question", "answer")}
        named = ex.get("task", file_task)
        fields = (
            {"task": task} if task else
            _task_fields(named, f"{path}: example {i}") if named is not None
            else {"task": task_for_dataset(name)}
        )  # fmt: skip
        out.append(
            Question(
                id=str(ex.get("id", i)),
                question=ex["question"],
                answer=ex.get("answer"),
                source=name,
                meta=meta,
                **fields,
            )
        )
    return out


def _load_jsonl(path: Path, task: Task | None) -> list[Question]:
    out = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                ex = json.loads(line)
            except json.JSONDecodeError as e:
                raise QuestionSetError(f"{path}:{n}: not JSON ({e})") from e
            if not isinstance(ex, dict) or not isinstance(ex.get("question"), str):
                raise QuestionSetError(f"{path}:{n}: expected an object with a 'question' string")
            name = str(ex.get("dataset_name") or ex.get("source") or path.stem)
            ex_task = ex.get("task")
            fields = (
                {"task": task} if task else
                _task_fields(ex_task, f"{path}:{n}") if ex_task is not None
                else {"task": task_for_dataset(name)}
            )  # fmt: skip
            out.append(
                Question(
                    id=str(ex.get("id", n - 1)),
                    question=ex["question"],
                    answer=ex.get("answer"),
                    source=name,
                    meta={k: v for k, v in ex.items() if k not in ("id", "question", "answer")},
                    **fields,
                )
            )
    return out


def _load_gym(spec: str, task: Task | None) -> list[Question]:
    name, _, query = spec.partition("?")
    params = {k: v[-1] for k, v in parse_qs(query).items()}
    unknown = set(params) - {"size", "seed"}
    if unknown:
        raise QuestionSetError(
            f"gym:{spec}: unknown parameter(s) {sorted(unknown)}; use size, seed"
        )
    try:
        size, seed = int(params.get("size", 100)), int(params.get("seed", 0))
    except ValueError as e:
        raise QuestionSetError(f"gym:{spec}: size and seed must be integers") from e
    try:
        import reasoning_gym
    except ImportError as e:
        raise QuestionSetError("reasoning-gym is not installed: `pip install -e '.[train]'`") from e
    try:
        dataset = reasoning_gym.create_dataset(name, size=size, seed=seed)
    except Exception as e:  # noqa: BLE001 - unknown names raise various errors
        raise QuestionSetError(f"reasoning-gym cannot build dataset {name!r}: {e}") from e
    out = []
    for i in range(size):
        item = dataset[i]
        out.append(
            Question(
                id=f"{name}-s{seed}-{i}",
                question=str(item["question"]),
                answer=item.get("answer"),
                task=task or "math",
                source=f"reasoning_gym/{name}",
                meta={"metadata": _json_safe(item.get("metadata", {}))},
            )
        )
    return out


def _json_safe(x: Any) -> Any:
    try:
        json.dumps(x)
        return x
    except TypeError:
        return json.loads(json.dumps(x, default=str))
