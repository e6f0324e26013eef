"""Start a new study from another study's teacher harvest: `reuse_harvest(src, config, out)`.

The teacher's runs are what a CPU study spends most of its hours on; what the study does with
them afterwards (build-data's repair, the SFT plan, the evaluation) is cheap to change. So a
new study folder may begin with SRC's teacher records when its configuration differs from
SRC's only in fields that come after the harvest (`DOWNSTREAM`). The records and SRC's
generate markers are copied; the question files are rebuilt by the new study (the same
digest, so the generate stages are skipped, or resumed from the copied records if SRC's
harvest was not finished) and every later stage runs with the new configuration.

DIR/HARVEST_FROM.json records where the harvest came from (SRC's path and fingerprint); the
results carry it. Running the same command again continues the new study.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

__all__ = ["DOWNSTREAM", "HarvestError", "harvest_source", "reuse_harvest"]

DOWNSTREAM = frozenset({
    "repair", "student", "sft", "serve", "rows", "eval_max_steps", "eval_max_tokens",
    "sag_samples", "eval_limit", "resamples", "grounded", "leak_check", "train_hinted",
    # where things are or how fast they run, not what the teacher produced
    "index_dir", "concurrency", "run_timeout_s", "vllm_kv_cache_gb",
})  # fmt: skip
"""Config fields that do not decide the teacher harvest. Every other field (the questions,
the held-out set sizes, whose files the harvest's markers digest, the teacher, its prompt,
sampling and attempts) must be equal for the harvest to be reused."""

MARKER = "HARVEST_FROM.json"


class HarvestError(ValueError):
    """SRC's harvest cannot start this study; the message says why and what to do."""


def _config_of(folder: Path) -> tuple[dict[str, Any], str | None]:
    path = folder / "study.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise HarvestError(f"{folder} is not a study folder ({path}: {e})") from e
    config = doc.get("config") if isinstance(doc, dict) else None
    if not isinstance(config, dict):
        raise HarvestError(f"{path} holds no study configuration")
    return config, doc.get("fingerprint")


def _defaults(preset_name: str) -> dict[str, Any]:
    """The fields of the preset `preset_name` ({} for an unknown one)."""
    from study.config import ConfigError, preset

    try:
        return preset(preset_name).to_dict()
    except ConfigError:
        return {}


def harvest_source(out: Path) -> dict[str, Any] | None:
    """What DIR/HARVEST_FROM.json says (None: the study made its own harvest)."""
    try:
        doc = json.loads((Path(out) / MARKER).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


def reuse_harvest(src: Path, config: dict[str, Any], out: Path) -> dict[str, Any]:
    """Copy SRC's teacher records and generate markers into the new study folder OUT.

    Returns what HARVEST_FROM.json holds. A rerun on OUT started from the same SRC copies
    nothing and returns the same; OUT holding any other study is refused, and so is a SRC
    whose harvest fields differ from `config` (nothing is written then)."""
    src, out = Path(src).resolve(), Path(out)
    if out.resolve() == src:
        raise HarvestError("--harvest-from names the study folder itself")
    previous = harvest_source(out)
    if (out / "study.json").is_file():
        if previous is not None and previous.get("from") == str(src):
            return previous  # the same command again: the study continues
        raise HarvestError(
            f"{out} holds a study already; --harvest-from starts a new study only (choose a "
            "new --out, or rerun without --harvest-from to continue this one)"
        )
    old, old_fp = _config_of(src)
    old = {**_defaults(str(old.get("preset"))), **old}  # a field SRC predates: its default
    keys = (set(config) | set(old)) - DOWNSTREAM
    diffs = sorted(k for k in keys if config.get(k) != old.get(k))
    if diffs:
        raise HarvestError(
            f"{src}'s harvest was made with other values of {', '.join(diffs)} "
            f"(reusable only when just {', '.join(sorted(DOWNSTREAM))} differ); use the same "
            "values, or let this study generate its own harvest"
        )
    teacher = src / "teacher"
    if not any(teacher.glob("*/attempt-*.jsonl")):
        raise HarvestError(f"{src} has no teacher records yet ({teacher}/*/attempt-K.jsonl)")
    copied = []
    shutil.copytree(teacher, out / "teacher", dirs_exist_ok=True)
    copied.append("teacher/")
    (out / "stages").mkdir(parents=True, exist_ok=True)
    for marker in sorted((src / "stages").glob("generate-*")):
        if marker.suffix in (".json", ".wall"):
            shutil.copy2(marker, out / "stages" / marker.name)
            copied.append(f"stages/{marker.name}")
    doc = {"from": str(src), "fingerprint": old_fp, "copied": copied,
           "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}  # fmt: skip
    tmp = out / f"{MARKER}.tmp"
    tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    tmp.replace(out / MARKER)
    return doc
