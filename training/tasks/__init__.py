"""Tasks: what a question is graded with and which tools its runs get (`TaskSpec`).

One file per task, each defining `TASK` (and whatever the task needs besides: its data,
its tool server); registering it is one line in `TASKS` below:

- `math` (math_qa.py): the paper's math sets, grader `math`, Python only;
- `factual` (factual_qa.py): the paper's factual sets, grader `factual`, every tool the
  job offers (web_search);
- `shop` (shop.py): the worked example of a task over your own MCP server: questions
  answered from a generated SQLite database through the server's `tables` and `query`.

A question names its task by name (`"task": "shop"`) or defines it (`"task": {"name",
"grader", "tools"}`), per question or, in the paper's JSON format, per file
(`metadata.task`); see training/questions.py. `get_task(name)` looks a registered one up.
"""

from training.tasks import factual_qa, math_qa, shop
from training.tasks.base import TaskError, TaskSpec, task_from_json

TASKS: dict[str, TaskSpec] = {t.name: t for t in (math_qa.TASK, factual_qa.TASK, shop.TASK)}
"""Every registered task by name."""

__all__ = ["TASKS", "TaskError", "TaskSpec", "get_task", "task_from_json"]


def get_task(name: str) -> TaskSpec:
    """The registered task `name`; TaskError naming the registered ones when there is none."""
    task = TASKS.get(name)
    if task is None:
        raise TaskError(f"unknown task {name!r}: registered tasks are {', '.join(TASKS)}")
    return task
