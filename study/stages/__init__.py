"""The study's stages as a registry: `stages_for(cfg)` lists them in the order they run.

Each `Stage` names the stages it reads (upstream) and what it writes; it runs only when every
stage before it is complete, and again only when an upstream output changed. The names, the
order and the upstream lists are what a study folder's markers (stages/NAME.json) were
written against, so changing them makes existing study folders redo their work.

    questions        questions/*.jsonl (stages/questions.py)
    student-base     models/student-base: SmolLM2 converted from its gguf once
    generate-agent   teacher/agent/attempt-K.jsonl (stages/generate.py)
    generate-agent-hinted (only with hint_attempts > 0) teacher/agent/hinted-K.jsonl
    generate-cot     teacher/cot/attempt-K.jsonl
    build-data-MODE  data/MODE.jsonl (stages/train.py), MODE agent then cot
    sft-MODE         sft/MODE
    export-MODE      export/MODE (merged)
    eval-ROW         eval/ROW for the configured rows (stages/evaluate.py): agent, agent_sag,
                     cot, then the reference rows base and teacher (the longest, so a budget
                     that runs out loses it first)
    compare          compare/ (paired bootstrap CIs)
    results          results.json + results.md (stages/results.py)
"""

from __future__ import annotations

import functools

from study.config import StudyConfig
from study.stages import evaluate, generate, questions, results, train
from study.stages.base import Stage

__all__ = ["Stage", "stages_for"]

MODES = ("agent", "cot")


def _harvest(cfg: StudyConfig) -> list[Stage]:
    hinted = cfg.hint_attempts > 0
    st = [
        Stage("questions", questions.make_questions, (), ("questions/",)),
        Stage("student-base", questions.student_base, (), ("models/student-base/",)),
        Stage("generate-agent", functools.partial(generate.generate, mode="agent"),
              ("questions",), ("teacher/agent/attempt-K.jsonl",)),  # fmt: skip
    ]
    if hinted:  # (a study without hints keeps its stages and their digests)
        st.append(Stage("generate-agent-hinted", generate.generate_hinted,
                        ("questions", "generate-agent"),
                        ("teacher/agent/hinted-K.jsonl",)))  # fmt: skip
    st.append(Stage("generate-cot", functools.partial(generate.generate, mode="cot"),
                    ("questions",), ("teacher/cot/attempt-K.jsonl",)))  # fmt: skip
    return st


def _training(cfg: StudyConfig) -> list[Stage]:
    hinted = ("generate-agent-hinted",) if cfg.hint_attempts > 0 else ()
    # a study without the CoT row trains no CoT twin (one with it keeps its stage list)
    modes = MODES if "cot" in cfg.rows else ("agent",)
    st = [
        Stage(f"build-data-{mode}", functools.partial(train.build_data, mode=mode),
              ("student-base", f"generate-{mode}", *(hinted if mode == "agent" else ())),
              (f"data/{mode}.jsonl",))  # fmt: skip
        for mode in modes
    ]
    st += [Stage(f"sft-{mode}", functools.partial(train.sft, mode=mode),
                 ("student-base", f"build-data-{mode}"), (f"sft/{mode}/",))
           for mode in modes]  # fmt: skip
    st += [Stage(f"export-{mode}", functools.partial(train.export, mode=mode),
                 (f"sft-{mode}",), (f"export/{mode}/",))
           for mode in modes]  # fmt: skip
    return st


def _evaluation(cfg: StudyConfig) -> list[Stage]:
    rows = cfg.rows
    sources = (("agent", "export-agent"), ("agent_sag", "export-agent"), ("cot", "export-cot"),
               ("base", "student-base"), ("teacher", None))  # fmt: skip
    st = [
        Stage(f"eval-{row}", functools.partial(evaluate.evaluate, row=row),
              ("questions", src) if src else ("questions",), (f"eval/{row}/",))
        for row, src in sources if row in rows
    ]  # fmt: skip
    evals = tuple(f"eval-{r}" for r in ("base", "teacher", "cot", "agent", "agent_sag")
                  if r in rows)  # fmt: skip
    st.append(Stage("compare", evaluate.compare, evals, ("compare/",)))
    return st


def stages_for(cfg: StudyConfig) -> list[Stage]:
    """Every stage of a study with `cfg`, in the order they run."""
    st = [*_harvest(cfg), *_training(cfg), *_evaluation(cfg)]
    names = tuple(s.name for s in st)
    st.append(Stage("results", functools.partial(results.write_results, stages=names), names,
                    ("results.json", "results.md")))  # fmt: skip
    return st
