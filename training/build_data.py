"""Teacher records -> SFT conversations (`distillery train build-data`).

Keeps an agent trajectory when it answered (not max steps, error or timeout), the
answer is correct, and every step's kept reply parsed; steps whose code raised and
that the teacher then recovered from are kept (the paper's filter). A CoT record is
kept when its boxed answer is correct and the reply was not cut off.

Agent trajectories are re-rendered with the student prompt (the system message the
served student sees, same tools) and the protocol's task message; assistant and
observation turns stay verbatim. With a tokenizer, every kept conversation is
tokenized with the loss mask and verified token by token (training/masking.py), and
conversations longer than `max_length` are dropped.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.model_client import Message
from agent.trajectory import Trajectory
from training.grading import grade
from training.masking import MaskError, encode_conversation, verify_encoding


class BuildDataError(ValueError):
    """The inputs cannot be turned into training data; the message says why."""


@dataclass
class BuildStats:
    records: int = 0
    kept: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    tokens: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "records": self.records,
            "kept": self.kept,
            "dropped": dict(self.dropped),
            "kinds": dict(self.kinds),
        }
        if self.tokens:
            d["tokens"] = {
                "total": sum(self.tokens),
                "mean": round(sum(self.tokens) / len(self.tokens), 1),
                "max": max(self.tokens),
            }
        return d


def read_records(path: Path) -> list[dict[str, Any]]:
    """The last record per question id (generate appends; a retried id has several)."""
    if not path.is_file():
        raise BuildDataError(f"generation output {path} does not exist")
    latest: dict[str, dict[str, Any]] = {}
    with path.open(encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by an interrupted writer
            if isinstance(rec, dict) and "id" in rec:
                latest[str(rec["id"])] = rec
    return list(latest.values())


def student_messages(traj: Trajectory, *, prompt: str, tool_names: Sequence[str]) -> list[Message]:
    """The trajectory's transcript as the student sees it: student system prompt + task, then
    the teacher's assistant/observation turns verbatim, ending on the last assistant turn."""
    from agent.prompts import initial_messages

    if len(traj.messages) < 3 or traj.messages[0].get("role") != "system":
        raise BuildDataError(f"trajectory {traj.id} has no system/task/assistant transcript")
    turns = [dict(m) for m in traj.messages[2:]]
    while turns and turns[-1]["role"] != "assistant":
        turns.pop()
    return [*initial_messages(traj.question, prompt=prompt, tool_names=tool_names), *turns]


def agent_drop_reason(rec: dict[str, Any], traj: Trajectory, correct: bool | None) -> str | None:
    if traj.finish_reason != "answer":
        return f"finish_{traj.finish_reason}"
    if correct is None:
        return "ungraded"
    if not correct:
        return "incorrect"
    actions = [s for s in traj.steps if s.kind == "action"]
    if not actions:
        return "no_steps"
    if any(s.kept.parse_error is not None for s in actions):
        return "parse_error"
    return None


def _correct(rec: dict[str, Any], prediction: Any, regrade: bool) -> bool | None:
    if not regrade and rec.get("correct") is not None:
        return bool(rec["correct"])
    if rec.get("gold") is None:
        return None
    return grade(rec.get("task", "math"), prediction, rec["gold"]).correct


def build_examples(
    records: Sequence[dict[str, Any]],
    *,
    prompt: str = "student",
    tool_names: Sequence[str] | None = None,
    regrade: bool = False,
    keep_ungraded: bool = False,
    stats: BuildStats | None = None,
) -> list[dict[str, Any]]:
    """Filter and render (see the module docstring). `tool_names` None: the record's tools."""
    stats = stats or BuildStats()
    out: list[dict[str, Any]] = []
    for rec in records:
        stats.records += 1
        if rec.get("status") != "ok":
            stats.dropped["error"] += 1
            continue
        mode = rec.get("mode", "agent")
        if mode == "cot":
            cot = rec.get("cot") or {}
            correct = _correct(rec, cot.get("text"), regrade)
            if correct is None and keep_ungraded:
                correct = True
            reason = None
            if cot.get("finish_reason") == "length":
                reason = "truncated"
            elif correct is None:
                reason = "ungraded"
            elif not correct:
                reason = "incorrect"
            if reason:
                stats.dropped[reason] += 1
                continue
            messages = [*cot["messages"], {"role": "assistant", "content": cot["text"]}]
            n_steps = 0
        else:
            traj = Trajectory.from_dict(rec["trajectory"])
            correct = _correct(rec, traj.answer, regrade)
            if correct is None and keep_ungraded:
                correct = True
            reason = agent_drop_reason(rec, traj, correct)
            if reason:
                stats.dropped[reason] += 1
                continue
            tools = list(tool_names) if tool_names is not None else list(rec.get("tools", []))
            messages = student_messages(traj, prompt=prompt, tool_names=tools)
            n_steps = sum(1 for s in traj.steps if s.kind == "action")
        out.append(
            {
                "id": str(rec["id"]),
                "kind": "cot" if mode == "cot" else "agent",
                "messages": messages,
                "question": rec.get("question"),
                "answer": rec.get("gold"),
                "source": rec.get("source"),
                "steps": n_steps,
                "ftp": bool(rec.get("ftp")),
            }
        )
        stats.kept += 1
        stats.kinds[out[-1]["kind"]] += 1
    return out


def load_tokenizer(path: Path) -> Any:
    """A fast tokenizer from an HF folder or a .gguf file (chat template included)."""
    from transformers import AutoTokenizer

    path = Path(path)
    if path.suffix == ".gguf":
        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    if not path.is_dir():
        raise BuildDataError(f"tokenizer {path} is neither a model folder nor a .gguf file")
    return AutoTokenizer.from_pretrained(str(path))


def build_data(
    inputs: Sequence[Path],
    out: Path,
    *,
    prompt: str = "student",
    tool_names: Sequence[str] | None = None,
    regrade: bool = False,
    keep_ungraded: bool = False,
    tokenizer: Any = None,
    max_length: int = 10240,
) -> dict[str, Any]:
    """Write the kept conversations to `out` (JSONL, atomically); returns the summary."""
    stats = BuildStats()
    examples: list[dict[str, Any]] = []
    for path in inputs:
        examples += build_examples(
            read_records(Path(path)),
            prompt=prompt,
            tool_names=tool_names,
            regrade=regrade,
            keep_ungraded=keep_ungraded,
            stats=stats,
        )
    if tokenizer is not None:
        kept = []
        for ex in examples:
            try:
                enc = encode_conversation(tokenizer, ex["messages"])
                verify_encoding(tokenizer, enc)
            except MaskError as e:
                raise BuildDataError(f"example {ex['id']}: loss mask check failed: {e}") from e
            if len(enc) > max_length:
                stats.dropped["too_long"] += 1
                stats.kept -= 1
                stats.kinds[ex["kind"]] -= 1
                continue
            ex["n_tokens"] = len(enc)
            ex["n_learned"] = enc.n_learned
            stats.tokens.append(len(enc))
            kept.append(ex)
        examples = kept
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for ex in examples:
                f.write(json.dumps(ex, ensure_ascii=False) + "\n")
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return {"out": str(out), **stats.to_dict()}
