"""A study stage as a unit: its name, the stages it reads, what it writes, and its work.

`Stage.run(ctx)` does the work in a `StudyContext` and returns the summary stored in its
marker; the summary's "_output" key (popped before the marker is written) is the digest of
what it wrote, which the "inputs" digest of every stage that names it upstream is made of.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from study.context import StudyContext

__all__ = ["Stage"]


@dataclass(frozen=True)
class Stage:
    name: str
    """The marker's name (stages/NAME.json); part of every downstream inputs digest."""
    run: Callable[[StudyContext], dict[str, Any]]
    upstream: tuple[str, ...] = ()
    """The stages whose outputs it reads: it runs again when one of their outputs changes."""
    writes: tuple[str, ...] = ()
    """What it writes, relative to the study folder (the folder's layout, stage by stage)."""
