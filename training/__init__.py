"""Teacher trajectories (first-thought prefix), filtering, SFT/LoRA, export for vLLM.

The names below are what other packages may import (checked by tests/test_architecture.py);
importing the package loads no heavy dependency.
"""

from training.build_data import BuildDataError, build_data, load_tokenizer
from training.export import ExportError, export_model, read_eval_report, update_model_card
from training.generate import (
    GenerateConfig,
    GenerateError,
    GenerateSummary,
    generate,
    tools_by_task,
)
from training.grading import (
    Grade,
    exact_match,
    extract_answer,
    grade,
    grade_factual,
    grade_math,
    grade_with_judge,
    judge_answer,
    normalize_text,
    token_f1,
)
from training.grounding import occurs
from training.questions import Question, QuestionSetError, load_questions, task_for_dataset
from training.run_folder import (
    RecordAppender,
    iter_records,
    load_records,
    write_json_atomic,
    write_jsonl_atomic,
)
from training.sft import Interrupted, SFTError, SFTSettings, train_sft
from training.tasks import TASKS, TaskError, TaskSpec, get_task

__all__ = [
    "BuildDataError",
    "ExportError",
    "GenerateConfig",
    "GenerateError",
    "GenerateSummary",
    "Grade",
    "Interrupted",
    "Question",
    "QuestionSetError",
    "RecordAppender",
    "SFTError",
    "SFTSettings",
    "TASKS",
    "TaskError",
    "TaskSpec",
    "build_data",
    "exact_match",
    "export_model",
    "extract_answer",
    "generate",
    "get_task",
    "grade",
    "grade_factual",
    "grade_math",
    "grade_with_judge",
    "iter_records",
    "judge_answer",
    "load_questions",
    "load_records",
    "load_tokenizer",
    "normalize_text",
    "occurs",
    "read_eval_report",
    "task_for_dataset",
    "token_f1",
    "tools_by_task",
    "train_sft",
    "update_model_card",
    "write_json_atomic",
    "write_jsonl_atomic",
]
