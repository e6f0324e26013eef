"""The paper's factual task: multi-hop questions over Wikipedia (HotpotQA, Bamboogle,
MuSiQue, 2Wiki).

Graded by `training.grading.grade_factual` (normalized exact match, token F1 recorded; an
LLM judge on top when one is configured); the runs get every tool the job offers
(web_search over the index, and any MCP server's tools).
"""

from training.tasks.base import TaskSpec

TASK = TaskSpec(
    name="factual",
    grader="factual",
    tools=None,
    description="factual questions answered by searching Wikipedia",
)
