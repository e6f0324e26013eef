"""The study's inputs: the question files (questions) and the student's base folder
(student-base)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from study.context import StudyContext, StudyError, digest
from training import write_jsonl_atomic

__all__ = ["make_questions", "split_of", "student_base"]


def split_of(qid: str) -> str:
    """'train' or 'test' for a HotpotQA id: the parity of the first 8 hex digits of its sha256
    (stable across machines and Python versions)."""
    return "train" if int(hashlib.sha256(qid.encode()).hexdigest()[:8], 16) % 2 == 0 else "test"


def _source_files(data: Path) -> tuple[Path, Path, Path]:
    hotpot_file = data / "questions" / "hotpotqa_500_20250422.json"
    gold_file = data / "wiki" / "gold.jsonl"
    gsm_file = data / "questions" / "gsm_hard_500_20250507.json"
    for f in (hotpot_file, gold_file, gsm_file):
        if not f.is_file():
            raise StudyError(f"{f} is missing: set data_dir to the shared data folder "
                             "(see ../shared/data/README.md)")  # fmt: skip
    return hotpot_file, gold_file, gsm_file


def _hotpot_halves(hotpot_file: Path, gold_file: Path) -> tuple[int, dict[str, list[Any]]]:
    """(how many HotpotQA questions the mini-Wikipedia covers, those split train/test)."""
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
    return len(hotpot), halves


def make_questions(ctx: StudyContext) -> dict[str, Any]:
    """questions/*.jsonl: HotpotQA covered questions split train/test by a stable hash of the
    id, reasoning-gym math (train and held-out seeds), GSM-Hard's first N, and each of
    `task_sets` split like HotpotQA."""
    from training.questions import load_questions

    cfg = ctx.cfg
    hotpot_file, gold_file, gsm_file = _source_files(Path(cfg.data_dir))
    n_covered, halves = _hotpot_halves(hotpot_file, gold_file)
    math_train = _gym(ctx, cfg.math_train, cfg.math_train_seed)
    seen = {r["question"] for r in math_train}
    math_test = [r for r in _gym(ctx, cfg.math_test * 2 + 10, cfg.math_test_seed)
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
        **_task_set_files(cfg.task_sets),
    }
    for name, rows in files.items():
        write_jsonl_atomic(ctx.qfile(name), rows)
    counts = {k: len(v) for k, v in files.items()}
    counts["hotpot_covered"] = n_covered
    counts["hotpot_covered_train_half"] = len(halves["train"])
    counts["hotpot_covered_test_half"] = len(halves["test"])
    overlap = {r["id"] for r in files["hotpot_train"]} & {r["id"] for r in files["hotpot_test"]}
    if overlap:  # cannot happen with a hash split; checked because it would void the study
        raise StudyError(f"train and test share HotpotQA ids {sorted(overlap)[:5]}")
    ctx.say(f"questions: {counts}")
    return {**counts, "_output": digest([ctx.out / "questions"])}


def _task_set_files(task_sets: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """NAME_train and NAME_test of each task set: its file split by `split_of(id)`, the
    first `train` and `test` of each half, each question with its task."""
    from training.questions import QuestionSetError, load_questions

    files: dict[str, list[dict[str, Any]]] = {}
    for ts in task_sets:
        try:
            qs = load_questions(ts["questions"])
        except (QuestionSetError, OSError) as e:
            raise StudyError(f"task set {ts['name']!r}: cannot read {ts['questions']} ({e})") from e
        halves: dict[str, list[dict[str, Any]]] = {"train": [], "test": []}
        for q in qs:
            task = q.task if q.task_spec is None else q.task_spec.to_json()
            halves[split_of(q.id)].append({"id": q.id, "question": q.question,
                                           "answer": q.answer, "task": task,
                                           "source": ts["name"]})  # fmt: skip
        for half in ("train", "test"):
            files[f"{ts['name']}_{half}"] = halves[half][: ts[half]]
    return files


def _gym(ctx: StudyContext, n: int, seed: int) -> list[dict[str, Any]]:
    if n <= 0:
        return []
    try:
        import reasoning_gym
    except ImportError as e:
        raise StudyError("reasoning-gym is not installed: `pip install -e '.[train]'`") from e
    gen = dict(ctx.cfg.math_generator)
    name = str(gen.pop("name"))
    ds = reasoning_gym.create_dataset(name, size=n, seed=seed, **gen)
    return [
        {"id": f"{name}-s{seed}-{i}", "question": str(ds[i]["question"]),
         "answer": str(ds[i]["answer"]), "task": "math", "source": f"reasoning_gym/{name}"}
        for i in range(n)
    ]  # fmt: skip


def student_base(ctx: StudyContext) -> dict[str, Any]:
    """The student's base folder (SmolLM2 converted from its gguf once)."""
    target = ctx.student_dir()
    if str(ctx.cfg.student.path) == "smollm2" and not (target / "config.json").is_file():
        from agent import EmbeddedModelError, convert_gguf_to_hf, smollm2_gguf

        try:
            gguf = smollm2_gguf()
        except EmbeddedModelError as e:
            raise StudyError(str(e)) from e
        tmp = target.with_name(target.name + ".tmp")
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp)
        ctx.say(f"converting {gguf.name} to a Hugging Face folder (once)")
        convert_gguf_to_hf(gguf, tmp)
        os.replace(tmp, target)
    if not (target / "config.json").is_file():
        raise StudyError(f"student base {target} is not a Hugging Face folder (no config.json)")
    return {"path": str(target), "_output": digest([target / "config.json"])}
