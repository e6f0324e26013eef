"""Teacher trajectories (first-thought prefix), filtering, SFT/LoRA, export for vLLM.

The names below are what other packages may import (checked by tests/test_architecture.py);
they load lazily (torch only when training runs).
"""

from __future__ import annotations

import importlib
from typing import Any

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
    "SFTError",
    "SFTSettings",
    "build_data",
    "exact_match",
    "export_model",
    "extract_answer",
    "generate",
    "grade",
    "grade_factual",
    "grade_math",
    "grade_with_judge",
    "judge_answer",
    "load_questions",
    "load_tokenizer",
    "normalize_text",
    "task_for_dataset",
    "token_f1",
    "train_sft",
]

_EXPORTS = {
    "BuildDataError": "training.build_data",
    "ExportError": "training.export",
    "GenerateConfig": "training.generate",
    "GenerateError": "training.generate",
    "GenerateSummary": "training.generate",
    "Grade": "training.grading",
    "Interrupted": "training.sft",
    "Question": "training.questions",
    "QuestionSetError": "training.questions",
    "SFTError": "training.sft",
    "SFTSettings": "training.sft",
    "build_data": "training.build_data",
    "exact_match": "training.grading",
    "export_model": "training.export",
    "extract_answer": "training.grading",
    "generate": "training.generate",
    "grade": "training.grading",
    "grade_factual": "training.grading",
    "grade_math": "training.grading",
    "grade_with_judge": "training.grading",
    "judge_answer": "training.grading",
    "load_questions": "training.questions",
    "load_tokenizer": "training.build_data",
    "normalize_text": "training.grading",
    "task_for_dataset": "training.questions",
    "token_f1": "training.grading",
    "train_sft": "training.sft",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
