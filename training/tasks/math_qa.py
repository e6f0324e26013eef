"""The paper's math task: MATH500, GSM-Hard, AIME, OlymMATH and generated arithmetic.

Graded by `training.grading.grade_math` (boxed answers, numbers within 1e-4, sequences,
sympy); the runs get Python only, no host tool (as evaluation and the study always ran
them).
"""

from training.tasks.base import TaskSpec

TASK = TaskSpec(
    name="math",
    grader="math",
    tools=(),
    description="math word problems and competition questions, answered with Python",
)
