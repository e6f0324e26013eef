"""Pack a study folder so that another machine (or a later session) continues it.

`pack_study(out, dest)` writes a .tar.gz of what took the study's time and is small: the
configuration (study.json), the stage markers, the teacher's records, the built training
data, the trained students' final weights (the LoRA adapter), the evaluation records and the
reports. It leaves out what a rerun rebuilds in seconds or minutes and what is large: the
question files (rebuilt from the shared data, bit for bit), the converted base student, the
merged exports, SFT checkpoints of finished runs, and the vLLM logs. The markers of the stages
whose outputs are left out are left out too, so `distillery study run` on the unpacked folder
reruns exactly those stages; their outputs digest the same, so every later stage is skipped.

`unpack_study(archive, out)` extracts an archive into a new folder (refusing a non-empty one
and any member that would land outside it).

A stage still running when the study was packed (no marker yet) keeps its partial work: the
teacher's records so far, or the SFT run's checkpoints (`train sft` resumes from the last).
"""

from __future__ import annotations

import io
import json
import tarfile
import time
from pathlib import Path
from typing import Any

__all__ = ["PackError", "pack_study", "unpack_study"]

_REBUILT = {
    "questions": ("questions",),
    "models": ("student-base",),
    "export": ("export-agent", "export-cot"),
}
"""Folders not packed, and the stages that write them (their markers are dropped too)."""
_TRAINED = {"sft": ("sft-agent", "sft-cot")}
"""Left out too without the weights (`weights=False`): a continued study trains again."""


def _rebuilt(weights: bool) -> dict[str, tuple[str, ...]]:
    """The folders an archive leaves out and the stages that write them again."""
    return _REBUILT if weights else {**_REBUILT, **_TRAINED}


def _stages(rebuilt: dict[str, tuple[str, ...]]) -> list[str]:
    return [stage for stages in rebuilt.values() for stage in stages]


class PackError(ValueError):
    """The folder is not a study, or the archive cannot be unpacked; the message says why."""


def _members(out: Path, rebuilt: dict[str, tuple[str, ...]]) -> list[Path]:
    if not (out / "study.json").is_file():
        raise PackError(f"{out} is not a study folder (no study.json): run `distillery study run "
                        "--out DIR` first")  # fmt: skip
    left_out, dropped = (*rebuilt, "logs"), _stages(rebuilt)
    keep: list[Path] = []
    for p in sorted(out.rglob("*")):
        rel = p.relative_to(out)
        if not p.is_file() or p.name.endswith(".tmp") or str(rel) == "PACKED.json":
            continue
        top = rel.parts[0]
        if top in left_out or (top == "stages" and p.stem in dropped):
            continue
        if top == "sft" and len(rel.parts) > 2 and rel.parts[2] == "checkpoints":
            if (out / "stages" / f"sft-{rel.parts[1]}.json").is_file():
                continue  # finished: the final weights are enough
        keep.append(rel)
    return keep


def pack_study(out: Path, dest: Path, *, weights: bool = True) -> dict[str, Any]:
    """Write DEST (.tar.gz) from the study folder OUT; returns what went in. Without
    `weights` the trained students (sft/) are left out too: an archive of the study's record
    (configuration, teacher records, data, evaluation records, reports) a few MB small,
    whose continuation trains the students again (SFT is seeded: the same weights)."""
    out = Path(out)
    left_out = _rebuilt(weights)
    members = _members(out, left_out)
    rebuilt = _stages(left_out)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    manifest = {
        "packed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "from": str(out),
        "files": len(members),
        "weights": weights,
        "rebuilt_on_resume": rebuilt,
        "finished_stages": sorted(
            p.stem for p in (out / "stages").glob("*.json") if p.stem not in rebuilt
        ),
    }
    with tarfile.open(tmp, "w:gz") as tar:
        for rel in members:
            tar.add(out / rel, arcname=str(rel), recursive=False)
        blob = json.dumps(manifest, indent=2).encode() + b"\n"
        info = tarfile.TarInfo("PACKED.json")
        info.size, info.mtime = len(blob), int(time.time())
        tar.addfile(info, io.BytesIO(blob))
    tmp.replace(dest)
    return {**manifest, "archive": str(dest), "bytes": dest.stat().st_size}


def unpack_study(archive: Path, out: Path) -> dict[str, Any]:
    """Extract ARCHIVE into OUT (new or empty); returns the archive's manifest."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise PackError(f"{out} is not empty: unpack into a new folder")
    try:
        tar = tarfile.open(archive, "r:gz")
    except (OSError, tarfile.TarError) as e:
        raise PackError(f"cannot read {archive}: {e}") from e
    with tar:
        members = tar.getmembers()
        if not {"PACKED.json", "study.json"} <= {m.name for m in members}:
            raise PackError(f"{archive} is not a packed study (no PACKED.json/study.json)")
        for member in members:  # all checked before anything is written
            try:
                tarfile.data_filter(member, str(out.resolve()))
            except tarfile.FilterError as e:
                raise PackError(
                    f"{archive}: {member.name!r} would land outside {out} or is "
                    f"not a plain file or folder ({e})"
                ) from e
        out.mkdir(parents=True, exist_ok=True)
        tar.extractall(out, filter="data")
    manifest: dict[str, Any] = json.loads((out / "PACKED.json").read_text(encoding="utf-8"))
    return manifest
