"""Plain chain-of-thought prompting: the teacher's first pass for the first-thought prefix
(FTP) and the CoT-distillation baseline (a student trained on CoT answers, no tools).
"""

from __future__ import annotations

import re

from agent.model_client import Message
from training.grading import Task

MATH_INSTRUCTION = (
    "Solve the problem step by step. Put the final answer, and only the answer, in "
    "\\boxed{} at the end."
)
FACTUAL_INSTRUCTION = (
    "Answer the question. Reason step by step about the facts you need, then put the final "
    "answer (a short name, date or phrase) in \\boxed{} at the end."
)
MAX_PREFIX_CHARS = 1200


def cot_messages(question: str, task: Task) -> list[Message]:
    """The chat for a CoT answer: one user turn with the question and the instruction."""
    instruction = MATH_INSTRUCTION if task == "math" else FACTUAL_INSTRUCTION
    return [{"role": "user", "content": f"{question.strip()}\n\n{instruction}"}]


def first_paragraph(text: str, max_chars: int = MAX_PREFIX_CHARS) -> str:
    """The first non-empty paragraph of a CoT answer, for the first-thought prefix.

    Paragraphs are separated by blank lines; a leading 'Thought:' label is dropped; a
    paragraph longer than `max_chars` is cut at its last sentence end before the limit.
    """
    for para in re.split(r"\n\s*\n", text.strip()):
        p = re.sub(r"^\s*(?:\**thought\**\s*:\s*)", "", para.strip(), flags=re.I).strip()
        if not p:
            continue
        if len(p) > max_chars:
            cut = max(p.rfind(". ", 0, max_chars), p.rfind(".\n", 0, max_chars))
            p = p[: cut + 1] if cut > 0 else p[:max_chars]
        return p
    return ""
