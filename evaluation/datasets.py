"""The paper's eight test sets, other question files, and the mini-Wikipedia's gold passages.

`resolve_sets(specs, data_dir)` turns `--questions` arguments into `EvalSet`s:
- `paper` expands to the eight test sets of the paper, in its table's order
  (MATH500, GSM-Hard, AIME, OlymMATH; HotpotQA, Bamboogle, MuSiQue, 2WikiMultiHopQA);
- a set name (`math500`, `gsm_hard`, `aime`, `olymmath`, `hotpotqa`, `bamboogle`, `musique`,
  `2wiki`, or a file stem such as `hotpotqa_500_20250422`) reads `<data_dir>/questions/<file>`;
- anything else is a question file (the paper's JSON or JSONL, see `training.questions`)
  whose domain is inferred from its dataset name unless `--task` says it.
Each set knows its domain (`math` | `factual`), its file and the file's sha256.

Question ids inside an evaluation are `<set>/<id>` (unique across sets; the paired
comparison matches runs on them). Gold passages come from `<data_dir>/wiki/gold.jsonl`
(`{"question_id", "question_file", "passage_ids", "gold_titles"}`); a question is
*covered* when it has a row there (every gold passage of such a row is in the corpus).
The gold passages' texts, read from `<data_dir>/wiki/passages.jsonl.gz`, are what the
retrieval recall looks for in `web_search` results.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.questions import Question, QuestionSetError, load_questions, task_for_dataset

Task = str
"""A task's name (training.tasks): math, factual, or any other registered or inline task."""

__all__ = [
    "PAPER_SETS",
    "DatasetError",
    "EvalSet",
    "GoldPassages",
    "PaperSet",
    "file_sha256",
    "load_gold",
    "resolve_sets",
]


class DatasetError(ValueError):
    """A `--questions` argument cannot be read; the message says why and what to do."""


@dataclass(frozen=True)
class PaperSet:
    name: str
    label: str
    """The column name of the paper's table."""
    file: str
    domain: Task
    in_domain: bool


PAPER_SETS: dict[str, PaperSet] = {
    s.name: s
    for s in [
        PaperSet("math500", "MATH500", "math_500_20250414.json", "math", True),
        PaperSet("gsm_hard", "GSM-Hard", "gsm_hard_500_20250507.json", "math", False),
        PaperSet("aime", "AIME", "aime_90_20250504.json", "math", False),
        PaperSet("olymmath", "OlymMATH", "olymath_200_20250511.json", "math", False),
        PaperSet("hotpotqa", "HotpotQA", "hotpotqa_500_20250422.json", "factual", True),
        PaperSet("bamboogle", "Bamboogle", "bamboogle_125_20250507.json", "factual", False),
        PaperSet("musique", "MuSiQue", "musique_500_20250504.json", "factual", False),
        PaperSet("2wiki", "2Wiki", "2wikimultihopqa_500_20250511.json", "factual", False),
    ]
}
_BY_STEM = {Path(s.file).stem: s for s in PAPER_SETS.values()}


@dataclass
class GoldPassages:
    """Gold passages of one question: ids, titles and (when the corpus is there) contents."""

    passage_ids: list[str]
    titles: list[str]
    contents: list[str] = field(default_factory=list)
    """`"Title"\\ntext` of each passage, as web_search prints it; empty without the corpus."""


@dataclass
class EvalSet:
    name: str
    label: str
    domain: Task
    path: Path
    sha256: str
    questions: list[Question]
    total: int
    """Questions in the file (before --limit / --only-covered)."""
    gold: dict[str, GoldPassages] = field(default_factory=dict)
    """Evaluation question id (`<set>/<id>`) -> gold passages, for covered questions."""
    covered_total: int = 0
    """Questions of the whole file that have gold passages in the mini-Wikipedia."""

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "label": self.label,
            "domain": self.domain,
            "file": str(self.path),
            "sha256": self.sha256,
            "n": len(self.questions),
            "total": self.total,
            "covered": sum(q.id in self.gold for q in self.questions),
            "covered_total": self.covered_total,
        }


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_gold(data_dir: Path) -> dict[tuple[str, str], GoldPassages]:
    """(question file name, question id) -> gold passages; {} when the wiki folder is absent."""
    wiki = Path(data_dir) / "wiki"
    gold_file = wiki / "gold.jsonl"
    if not gold_file.is_file():
        return {}
    out: dict[tuple[str, str], GoldPassages] = {}
    with gold_file.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                key = (str(row["question_file"]), str(row["question_id"]))
                out[key] = GoldPassages(
                    [str(i) for i in row["passage_ids"]],
                    [str(t) for t in row.get("gold_titles", [])],
                )
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise DatasetError(
                    f"{gold_file}:{n}: expected {{'question_id', 'question_file', 'passage_ids'}} "
                    f"({type(e).__name__}: {e})"
                ) from e
    passages = wiki / "passages.jsonl.gz"
    wanted = {pid for g in out.values() for pid in g.passage_ids}
    if wanted and passages.is_file():
        contents: dict[str, str] = {}
        with gzip.open(passages, "rt", encoding="utf-8") as f:
            for line in f:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                pid = str(row.get("id"))
                if pid in wanted and isinstance(row.get("contents"), str):
                    contents[pid] = row["contents"]
        for g in out.values():
            g.contents = [contents[p] for p in g.passage_ids if p in contents]
    return out


def _paper_set(spec: str) -> PaperSet | None:
    low = spec.lower()
    if low in PAPER_SETS:
        return PAPER_SETS[low]
    return _BY_STEM.get(Path(spec).stem) if "/" not in spec else None


def _locate(spec: str, data_dir: Path, task: Task | None) -> tuple[Path, str, str, Task, bool]:
    """(file, name, label, domain, is a paper set) of one `--questions` argument."""
    paper = _paper_set(spec)
    if paper is not None:
        path = data_dir / "questions" / paper.file
        if not path.is_file():
            raise DatasetError(
                f"set {paper.name!r} reads {path}, which does not exist: point --data-dir "
                "(DISTILLERY_DATA_DIR) at the folder holding questions/ and wiki/"
            )
        return path, paper.name, paper.label, task or paper.domain, True
    path = Path(spec)
    if not path.is_file():
        known = ", ".join(["paper", *PAPER_SETS])
        raise DatasetError(
            f"unknown question set {spec!r}: use one of {known} or a question file "
            "(the paper's JSON or .jsonl)"
        )
    return path, path.stem, path.stem, task or task_for_dataset(path.stem), False


def _gold_of(
    gold: dict[tuple[str, str], GoldPassages], file_name: str, qid: str, *, factual: bool
) -> GoldPassages | None:
    """A question's gold passages: by (file name, id); for a factual question of a file the
    gold rows do not name (a subset written elsewhere, e.g. the study's hotpot_test.jsonl),
    by its id alone when exactly one gold row carries it."""
    if (file_name, qid) in gold:
        return gold[(file_name, qid)]
    if not factual:
        return None
    hits = [g for (_, i), g in gold.items() if i == qid]
    return hits[0] if len(hits) == 1 else None


def _load_set(
    spec: str,
    data_dir: Path,
    gold: dict[tuple[str, str], GoldPassages],
    *,
    limit: int | None,
    only_covered: bool,
    task: Task | None,
) -> EvalSet:
    path, name, label, domain, is_paper = _locate(spec, data_dir, task)
    try:
        qs = load_questions(path, task=task)
    except QuestionSetError as e:
        raise DatasetError(str(e)) from e
    if not qs:
        raise DatasetError(f"{path} holds no questions")
    if not is_paper and task is None:
        kinds = {q.task for q in qs}
        domain = kinds.pop() if len(kinds) == 1 else domain
    eval_qs = [
        Question(
            id=f"{name}/{q.id}",
            question=q.question,
            answer=q.answer,
            task=domain if is_paper else q.task,
            source=name,
            meta={**q.meta, "qid": q.id},
            task_spec=None if is_paper else q.task_spec,
        )
        for q in qs
    ]
    set_gold = {f"{name}/{q.id}": g for q in qs
                if (g := _gold_of(gold, path.name, q.id, factual=q.task == "factual"))}  # fmt: skip
    chosen = eval_qs
    if only_covered and domain == "factual":  # coverage is about Wikipedia: math runs whole
        chosen = [q for q in eval_qs if q.id in set_gold]
        if not chosen:
            raise DatasetError(
                f"--only-covered: no question of {name!r} has gold passages in "
                f"{data_dir / 'wiki' / 'gold.jsonl'} (see {data_dir / 'README.md'})"
            )
    if limit is not None:
        chosen = chosen[:limit]
    chosen_ids = {q.id for q in chosen}
    return EvalSet(
        name=name,
        label=label,
        domain=domain,
        path=path.resolve(),
        sha256=file_sha256(path),
        questions=chosen,
        total=len(eval_qs),
        gold={qid: g for qid, g in set_gold.items() if qid in chosen_ids},
        covered_total=len(set_gold),
    )


def resolve_sets(
    specs: list[str],
    data_dir: Path,
    *,
    limit: int | None = None,
    only_covered: bool = False,
    task: Task | None = None,
) -> list[EvalSet]:
    """`--questions` arguments -> sets (see the module docstring); `limit` is per set."""
    if limit is not None and limit < 1:
        raise DatasetError("--limit must be at least 1")
    data_dir = Path(data_dir)
    names: list[str] = []
    for spec in specs:
        names.extend(PAPER_SETS if spec.lower() == "paper" else [spec])
    gold = load_gold(data_dir)
    sets: list[EvalSet] = []
    for spec in names:
        s = _load_set(spec, data_dir, gold, limit=limit, only_covered=only_covered, task=task)
        if any(s.name == other.name for other in sets):
            raise DatasetError(f"set {s.name!r} is given twice")
        sets.append(s)
    return sets
