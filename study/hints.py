"""The hint of a hinted retry: what only the teacher sees when it retries a question it failed.

`hint_text(answer, titles)` is appended to the task (training.generate.hinted_task): the gold
answer and, optionally, the titles of the gold passages; it asks the teacher to find the
evidence with `web_search` and not to search for the answer itself or mention the hint (the
leak check of training/grounding.py drops the runs that do anyway). `gold_titles(data_dir)`
reads the titles from the mini-Wikipedia's gold.jsonl (question id -> titles).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

__all__ = ["gold_titles", "hint_text"]


def hint_text(answer: object, titles: Sequence[str] = ()) -> str:
    """The hint for a question whose gold answer is `answer` (a list: its first form)."""
    shown = answer[0] if isinstance(answer, list) and answer else answer
    where = ""
    if titles:
        where = " The evidence is in the Wikipedia articles " + ", ".join(
            f'"{t}"' for t in titles
        ) + "."
    return (
        f'(For you alone, never mention it: the expected answer is "{shown}".{where} Find the '
        "evidence: search for the entities the question names, read the results, follow them "
        "to the next entity if the question needs it, and call final_answer with what a search "
        "result showed. Do not search for the expected answer itself.)"
    )


def gold_titles(data_dir: Path) -> dict[str, list[str]]:
    """Question id -> the titles of its gold passages, from DATA_DIR/wiki/gold.jsonl ({} when
    the file is absent)."""
    path = Path(data_dir) / "wiki" / "gold.jsonl"
    out: dict[str, list[str]] = {}
    if not path.is_file():
        return out
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            row = json.loads(line)
            titles = row.get("gold_titles")
            if isinstance(titles, list):
                out[str(row.get("question_id"))] = [str(t) for t in titles]
    return out
