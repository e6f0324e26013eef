"""Teacher records -> SFT conversations (`distillery train build-data`).

Keeps an agent trajectory when it answered (not max steps, error or timeout), the
answer is correct, and every step's kept reply parsed; steps whose code raised and
that the teacher then recovered from are kept (the paper's filter). With `repair`, a correct run
that ended through the final-answer call (stuck or at the step limit) is kept without its
repeated steps and the final-answer prompt (training/repair.py). A CoT record is
kept when its boxed answer is correct and the reply was not cut off.

Agent trajectories are re-rendered with the student prompt (the system message the
served student sees, same tools) and the protocol's task message; assistant and
observation turns stay verbatim. With a tokenizer, every kept conversation is
tokenized with the loss mask and verified token by token (training/masking.py), and
conversations longer than `max_length` are dropped.

Two more filters, each an option (training/grounding.py): `grounded` keeps a factual
trajectory only if its answer occurs in a web_search observation read before the
final_answer call; `leak_check` drops a hinted run whose turns mention the hint or name the
answer before an observation showed it. A hinted run (generate's rationalization retries)
is rendered with the question alone, as if the hint had not been there, and its example
says `"hinted": true`; `hinted` counts the kept ones.

The protocol profile (agent/protocol.py) is part of the data: conversations are rendered
with it, every example records its name and sha256, and the whole profile, self-contained,
is written beside the data as `OUT.protocol.json` (`export` copies it into the checkpoint,
so the student is served with what it was trained on). When `prompt` is not `student`, the
recorded profile's `student` prompt is the template actually used, so serving with the
default prompt role reproduces the training conversations. A record generated with
different observation or web_search layouts than the profile's is refused: its kept turns
would teach a layout the served student never sees.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from agent.model_client import Message
from agent.prompts import initial_messages, system_prompt_template
from agent.protocol import Protocol, ProtocolError, default_protocol, load_protocol
from agent.tools import FINAL_ANSWER as FINAL
from agent.tools import KNOWN_TOOLS, ToolSpec, tool_specs
from agent.trajectory import Trajectory
from training.grading import grade
from training.grounding import grounding_drop, leak_drop
from training.masking import MaskError, encode_conversation, verify_encoding
from training.repair import repaired_turns
from training.run_folder import load_records
from training.tasks import TASKS


class BuildDataError(ValueError):
    """The inputs cannot be turned into training data; the message says why."""


@dataclass
class BuildStats:
    records: int = 0
    kept: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    tokens: list[int] = field(default_factory=list)
    repaired: Counter[str] = field(default_factory=Counter)
    """Kept after `repair`, by the run's finish reason (training/repair.py)."""
    hinted: int = 0
    """Kept examples from hinted runs."""
    checks: dict[str, Counter[str]] = field(default_factory=dict)
    """What each optional check dropped, by reason ({"grounded": {...}, "leak_check": ...})."""

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "records": self.records,
            "kept": self.kept,
            "dropped": dict(self.dropped),
            "kinds": dict(self.kinds),
            "repaired": dict(self.repaired),
            "hinted": self.hinted,
            "checks": {name: dict(c) for name, c in self.checks.items()},
        }
        if self.tokens:
            d["tokens"] = {
                "total": sum(self.tokens),
                "mean": round(sum(self.tokens) / len(self.tokens), 1),
                "max": max(self.tokens),
            }
        return d


def read_records(path: Path) -> list[dict[str, Any]]:
    """The last record per question id (generate appends; a retried id has several); a
    `.jsonl.gz` file is read as well."""
    if not path.is_file():
        raise BuildDataError(f"generation output {path} does not exist")
    return list(load_records(path).values())  # a line cut by an interrupted writer: skipped


PROTOCOL_SUFFIX = ".protocol.json"


def protocol_sidecar(data_path: Path) -> Path:
    """Where build-data writes the profile of `data_path` (`train.jsonl.protocol.json`)."""
    data_path = Path(data_path)
    return data_path.with_name(data_path.name + PROTOCOL_SUFFIX)


def student_messages(
    traj: Trajectory,
    *,
    prompt: str,
    tool_names: Sequence[str | ToolSpec],
    protocol: Protocol | None = None,
    turns: Sequence[Message] | None = None,
) -> list[Message]:
    """The trajectory's transcript as the student sees it: student system prompt + task, then
    the teacher's assistant/observation turns verbatim (`turns`, else the recorded ones),
    ending on the last assistant turn."""
    if len(traj.messages) < 3 or traj.messages[0].get("role") != "system":
        raise BuildDataError(f"trajectory {traj.id} has no system/task/assistant transcript")
    turns = [dict(m) for m in (traj.messages[2:] if turns is None else turns)]
    while turns and turns[-1]["role"] != "assistant":
        turns.pop()
    start = initial_messages(
        traj.question, prompt=prompt, tool_names=tool_names, protocol=protocol
    )
    return [*start, *turns]


def check_turns_protocol(rec: dict[str, Any], traj: Trajectory, protocol: Protocol) -> None:
    """Refuse a record whose observation/web_search layouts differ from `protocol`'s (records
    from before profiles existed were made with the default profile)."""
    made = traj.config.get("protocol_fingerprint") or default_protocol().fingerprint()
    if made.get("turns_sha256") == protocol.turns_sha256:
        return
    raise BuildDataError(
        f"record {rec.get('id')} was generated with protocol {made.get('name')!r}, whose "
        f"observation/web_search layout differs from protocol {protocol.name!r} given to "
        "build-data: its observation turns would not match what the served student sees. "
        f"Build with --protocol set to the generation's profile, or generate again with "
        f"--protocol {protocol.name}"
    )


def agent_drop_reason(
    rec: dict[str, Any], traj: Trajectory, correct: bool | None, *, repaired: bool = False
) -> str | None:
    if traj.finish_reason != "answer" and not repaired:
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


def check_drop_reason(
    rec: dict[str, Any], traj: Trajectory, *, grounded: bool, leak_check: bool,
    stats: BuildStats,
) -> str | None:
    """The optional checks on a trajectory that passed the filter: the first that drops it
    (counted in `stats.checks` under the check's name), else None."""
    for name, on, check in (("grounded", grounded, grounding_drop),
                            ("leak_check", leak_check, leak_drop)):  # fmt: skip
        reason = check(rec, traj) if on else None
        if reason:
            stats.checks.setdefault(name, Counter())[reason] += 1
            return reason
    return None


def _correct(rec: dict[str, Any], prediction: Any, regrade: bool) -> bool | None:
    if not regrade and rec.get("correct") is not None:
        return bool(rec["correct"])
    if rec.get("gold") is None:
        return None
    return grade(record_grader(rec), prediction, rec["gold"]).correct


def record_grader(rec: Mapping[str, Any]) -> str:
    """The grader of a record: its own `grader` (generate writes it), else its registered
    task's (records from before: `math` or `factual`, which are graders too)."""
    task = str(rec.get("task") or "math")
    registered = TASKS.get(task)
    return str(rec.get("grader") or (registered.grader if registered else task))


def build_examples(
    records: Sequence[dict[str, Any]],
    *,
    prompt: str = "student",
    tool_names: Sequence[str] | None = None,
    regrade: bool = False,
    keep_ungraded: bool = False,
    stats: BuildStats | None = None,
    protocol: Protocol | None = None,
    repair: bool = False,
    grounded: bool = False,
    leak_check: bool = False,
) -> list[dict[str, Any]]:
    """Filter and render (see the module docstring). `tool_names` None: the record's tools.
    `repair`: keep correct runs that ended through the final-answer call, minus their
    repeated steps and the final-answer prompt (training/repair.py). `grounded`,
    `leak_check`: the checks of training/grounding.py."""
    stats = stats or BuildStats()
    protocol = protocol or default_protocol()
    out: list[dict[str, Any]] = []
    for rec in records:
        stats.records += 1
        if rec.get("status") != "ok":
            stats.dropped["error"] += 1
            continue
        mode = rec.get("mode", "agent")
        if mode == "cot":
            made = _cot_messages(rec, regrade=regrade, keep_ungraded=keep_ungraded)
        else:
            tools = example_tools(rec, tool_names)
            made = _agent_messages(
                rec, prompt=prompt, tools=tools, protocol=protocol, regrade=regrade,
                keep_ungraded=keep_ungraded, repair=repair, stats=stats,
                grounded=grounded, leak_check=leak_check,
            )  # fmt: skip
        if isinstance(made, str):
            stats.dropped[made] += 1
            continue
        messages = made
        listed = [] if mode == "cot" else tools
        hinted = bool(rec.get("hint")) and mode != "cot"
        out.append(
            {
                "id": str(rec["id"]),
                "kind": "cot" if mode == "cot" else "agent",
                "messages": messages,
                "question": rec.get("question"),
                "answer": rec.get("gold"),
                "source": rec.get("source"),
                "steps": sum(1 for m in messages if m["role"] == "assistant") if mode != "cot"
                else 0,
                "ftp": bool(rec.get("ftp")),
                "hinted": hinted,
                "protocol": {"name": protocol.name, "sha256": protocol.sha256},
                "tools": [spec.to_json() for spec in listed],
            }
        )  # fmt: skip
        stats.kept += 1
        stats.hinted += hinted
        stats.kinds[out[-1]["kind"]] += 1
    return out


def _cot_messages(
    rec: dict[str, Any], *, regrade: bool, keep_ungraded: bool
) -> list[Message] | str:
    """A CoT record's conversation, or why it is dropped."""
    cot = rec.get("cot") or {}
    correct = _correct(rec, cot.get("text"), regrade)
    if correct is None and keep_ungraded:
        correct = True
    if cot.get("finish_reason") == "length":
        return "truncated"
    if correct is None:
        return "ungraded"
    if not correct:
        return "incorrect"
    return [*cot["messages"], {"role": "assistant", "content": cot["text"]}]


def record_tool_specs(rec: Mapping[str, Any]) -> list[ToolSpec]:
    """The host tools the teacher was shown in a record: its `tool_specs` (generate writes
    them), else its trajectory's `config.tools`, else its tool names (records from before
    specs were recorded: names the project knows get their built-in text)."""
    recorded = rec.get("tool_specs")
    if recorded is None and isinstance(rec.get("trajectory"), Mapping):
        shown = (rec["trajectory"].get("config") or {}).get("tools")
        if isinstance(shown, list):
            recorded = [t for t in shown if isinstance(t, Mapping) and t.get("name") != FINAL]
    if isinstance(recorded, list):
        try:
            return [ToolSpec.from_json(t) for t in recorded]
        except ValueError as e:
            raise BuildDataError(f"record {rec.get('id')}: {e}") from None
    names = [str(n) for n in rec.get("tools") or []]
    return [spec for spec in tool_specs(names) if spec.name != FINAL]


def example_tools(rec: Mapping[str, Any], tool_names: Sequence[str] | None) -> list[ToolSpec]:
    """The tools an example's prompt lists: the record's (`tool_names` None), or those named,
    each with the spec the record has for it (else the project's own text)."""
    recorded = record_tool_specs(rec)
    if tool_names is None:
        return recorded
    by_name = {spec.name: spec for spec in recorded}
    known = {spec.name: spec for spec in tool_specs(tool_names) if spec.name != FINAL}
    return [by_name.get(name, spec) for name, spec in known.items()]


def _prompt_tools(tools: Sequence[ToolSpec]) -> list[str | ToolSpec]:
    """What `initial_messages` gets: a tool the project knows by its name (its text, byte for
    byte as the served prompt renders it), any other by its recorded spec."""
    return [spec.name if spec.name in KNOWN_TOOLS else spec for spec in tools]


def _agent_messages(
    rec: dict[str, Any], *, prompt: str, tools: list[ToolSpec], protocol: Protocol, regrade: bool,
    keep_ungraded: bool, repair: bool, stats: BuildStats, grounded: bool, leak_check: bool,
) -> list[Message] | str:
    """An agent record's conversation as the student sees it, or why it is dropped. A hinted
    run is rendered with the record's question alone (the hint was the teacher's only)."""
    traj = Trajectory.from_dict(rec["trajectory"])
    correct = _correct(rec, traj.answer, regrade)
    if correct is None and keep_ungraded:
        correct = True
    turns = repaired_turns(traj) if repair and correct else None
    reason = agent_drop_reason(rec, traj, correct, repaired=turns is not None) or (
        check_drop_reason(rec, traj, grounded=grounded, leak_check=leak_check, stats=stats)
    )
    if reason:
        return reason
    check_turns_protocol(rec, traj, protocol)
    if rec.get("hint"):
        traj = replace(traj, question=str(rec["question"]))
    messages = student_messages(traj, prompt=prompt, tool_names=_prompt_tools(tools),
                                protocol=protocol, turns=turns)  # fmt: skip
    if turns is not None:
        stats.repaired[traj.finish_reason] += 1
    return messages


def _first_per_id(examples: list[dict[str, Any]], stats: BuildStats) -> list[dict[str, Any]]:
    seen: set[str] = set()
    kept = []
    for ex in examples:
        if ex["id"] in seen:
            stats.dropped["duplicate_id"] += 1
            stats.kept -= 1
            stats.kinds[ex["kind"]] -= 1
            stats.hinted -= bool(ex.get("hinted"))
            continue
        seen.add(ex["id"])
        kept.append(ex)
    return kept


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
    protocol: str | Protocol | None = None,
    repair: bool = False,
    grounded: bool = False,
    leak_check: bool = False,
    unique_ids: bool = False,
) -> dict[str, Any]:
    """Write the kept conversations to `out` (JSONL, atomically) and the profile they were
    rendered with to `OUT.protocol.json`; returns the summary. `protocol`: a Protocol, a
    name/file/folder for `load_protocol`, or None (the default profile). `unique_ids`: one
    example per question id, from the first input that kept one (unhinted attempts before
    hinted retries); the others count as dropped `duplicate_id`."""
    recorded = training_protocol(protocol, prompt)
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
            protocol=recorded,
            repair=repair,
            grounded=grounded,
            leak_check=leak_check,
        )
    if unique_ids:
        examples = _first_per_id(examples, stats)
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
    sidecar = protocol_sidecar(out)
    # the profile first: examples name its sha256, so a crash in between is detectable
    _write_atomic(sidecar, [recorded.to_json()])
    _write_atomic(out, (json.dumps(ex, ensure_ascii=False) + "\n" for ex in examples))
    return {
        "out": str(out),
        **stats.to_dict(),
        "tools": sorted({t["name"] for ex in examples for t in ex["tools"]}),
        "protocol": {**recorded.fingerprint(), "file": str(sidecar)},
    }


def training_protocol(protocol: str | Protocol | None, prompt: str = "student") -> Protocol:
    """The profile recorded with the data: `protocol` loaded, with its `student` prompt set
    to the template of `prompt` when another prompt renders the conversations."""
    try:
        loaded = protocol if isinstance(protocol, Protocol) else load_protocol(protocol)
        if prompt == "student":
            return loaded
        template = system_prompt_template(prompt, loaded)
    except (ProtocolError, ValueError) as e:
        raise BuildDataError(str(e)) from None
    renamed = f"{loaded.name}, student prompt from {prompt}"
    return replace(loaded.with_prompt("student", template), name=renamed)


def data_protocol(paths: Sequence[Path]) -> Protocol | None:
    """The profile recorded with build-data outputs `paths` (all must agree); None when
    none records one (data built before profiles existed: the default protocol)."""
    found: dict[str, tuple[Path, Protocol]] = {}
    missing: list[Path] = []
    for path in map(Path, paths):
        sidecar = protocol_sidecar(path)
        first = _first_example(path)
        named = (first or {}).get("protocol")
        if not sidecar.is_file():
            if named:
                raise BuildDataError(
                    f"{path} was built with protocol {named.get('name')!r} but {sidecar} is "
                    "missing: copy it next to the data, or build the data again"
                )
            missing.append(path)
            continue
        try:
            prof = load_protocol(sidecar)
        except ProtocolError as e:
            raise BuildDataError(str(e)) from None
        if named and named.get("sha256") != prof.sha256:
            raise BuildDataError(
                f"{sidecar} does not belong to {path} (its examples name protocol sha256 "
                f"{str(named.get('sha256'))[:12]}, the file holds {prof.sha256[:12]}): build "
                "the data again"
            )
        found.setdefault(prof.sha256, (path, prof))
    if len(found) > 1:
        listing = "; ".join(f"{p}: {prof.name!r}" for p, prof in found.values())
        raise BuildDataError(f"the training data mixes protocol profiles ({listing})")
    if found and missing:
        (path, prof), = found.values()
        if prof.sha256 != default_protocol().sha256:
            raise BuildDataError(
                f"{', '.join(map(str, missing))} record(s) no protocol (the default) but {path} "
                f"was built with {prof.name!r}: the data mixes protocols"
            )
    return next(iter(found.values()))[1] if found else None


def _first_example(path: Path) -> dict[str, Any] | None:
    try:
        with path.open(encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    rec = json.loads(line)
                    return rec if isinstance(rec, dict) else None
    except (OSError, json.JSONDecodeError):
        return None
    return None


def _write_atomic(path: Path, chunks: Iterable[str]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for chunk in chunks:
                f.write(chunk)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def data_tools(paths: Sequence[Path]) -> list[dict[str, Any]] | None:
    """The tools the examples of `paths` list in their prompts (each once, as first seen);
    None when no example records them (data built before tools were recorded)."""
    found: dict[str, dict[str, Any]] = {}
    recorded = False
    for path in paths:
        with Path(path).open(encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                tools = json.loads(line).get("tools")
                if isinstance(tools, list):
                    recorded = True
                    for t in tools:
                        found.setdefault(str(t.get("name")), t)
    return list(found.values()) if recorded else None


def export_protocol(training: Mapping[str, Any], explicit: str | None) -> tuple[Protocol, str]:
    """The profile an export writes, and where it came from: the one recorded with the sft
    run's data (`training` = train_summary.json); `explicit` must agree with that record, and
    chooses when the data records none; with neither, the default profile."""
    paths = [Path(p) for p in (training.get("settings") or {}).get("data") or []]
    absent = [p for p in paths if not p.is_file()]
    chosen: Protocol | None = None
    if explicit:
        try:
            chosen = load_protocol(explicit)
        except ProtocolError as e:
            raise BuildDataError(str(e)) from None
    if absent:
        if chosen is not None:
            return chosen, f"--protocol {explicit} (training data not found: {absent[0]})"
        raise BuildDataError(
            f"the run's training data {absent[0]} is not here, so the protocol it was built with "
            "is unknown: pass --protocol (its OUT.protocol.json, or the profile used)"
        )
    recorded = data_protocol(paths) if paths else None
    if chosen is not None:
        if recorded is not None and recorded.sha256 != chosen.sha256:
            raise BuildDataError(
                f"--protocol {explicit} ({chosen.name!r}, sha256 {chosen.sha256[:12]}) differs "
                f"from the profile the training data was built with ({recorded.name!r}, sha256 "
                f"{recorded.sha256[:12]}): a checkpoint must be served with the protocol it was "
                "trained on; drop --protocol"
            )
        return chosen, f"--protocol {explicit}"
    if recorded is not None:
        return recorded, "training data"
    return default_protocol(), "default (the training data records no profile)"
