"""The students' training: build-data-MODE (data/MODE.jsonl), sft-MODE (sft/MODE) and
export-MODE (export/MODE, merged) for MODE in agent and cot, the same budget for both."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from study.context import BudgetSpent, StudyContext, StudyError, digest

__all__ = ["build_data", "export", "sft"]


def build_data(ctx: StudyContext, mode: str) -> dict[str, Any]:
    """data/MODE.jsonl (training.build_data: correct, parsed, answered only; with grounded /
    leak_check, the checks of training/grounding.py)."""
    from training.build_data import build_data as run_build_data
    from training.build_data import load_tokenizer

    # by name under this folder: the marker's absolute paths name where the study ran,
    # which differs for a study unpacked elsewhere (study.pack)
    files = _agent_files(ctx) if mode == "agent" else [
        ctx.records_dir(mode) / Path(f).name
        for f in (ctx.marker(f"generate-{mode}") or {})["summary"]["files"]
    ]  # fmt: skip
    out = ctx.out / "data" / f"{mode}.jsonl"
    agent = mode == "agent"
    cfg = ctx.cfg
    # regrade: by the current grader, whatever graded the records when they were made
    summary = run_build_data(files, out, prompt="student", tokenizer=load_tokenizer(
        ctx.student_dir()), max_length=cfg.sft.max_length, regrade=True,
        repair=cfg.repair and agent, grounded=cfg.grounded and agent,
        leak_check=cfg.leak_check and agent, unique_ids=True)  # fmt: skip
    ctx.say(f"build-data-{mode}: kept {summary['kept']} of {summary['records']} "
            f"(dropped {summary['dropped']})")  # fmt: skip
    if summary["kept"] == 0:
        raise StudyError(
            f"no {mode} trajectory passed the filter (dropped: {summary['dropped']}); the "
            "teacher solved nothing usable: raise attempts or questions in the config"
        )
    return {**summary, "_output": digest([out])}


def _agent_files(ctx: StudyContext) -> list[Path]:
    """The agent harvest's files build-data reads: without `train_hinted`, the unhinted
    attempts only."""
    files = ctx.agent_files()
    return files if ctx.cfg.train_hinted else [f for f in files if not f.name.startswith("hinted-")]


def sft(ctx: StudyContext, mode: str) -> dict[str, Any]:
    """sft/MODE: training.sft.train_sft on data/MODE.jsonl, stopping at the budget's end at
    a resumable checkpoint."""
    from training.sft import Interrupted, SFTSettings, train_sft

    # training wants every core and the memory: an idle vLLM server still holds its
    # weights and KV cache (6 GB for the teacher) and its OpenMP threads
    ctx.stop_server()
    p = ctx.cfg.sft
    settings = SFTSettings(
        model=ctx.student_dir(), data=[ctx.out / "data" / f"{mode}.jsonl"],
        output_dir=ctx.out / "sft" / mode, method=p.method,  # type: ignore[arg-type]
        lora_r=p.lora_r, lora_alpha=p.lora_alpha, lora_dropout=p.lora_dropout,
        learning_rate=p.learning_rate, epochs=p.epochs, max_steps=p.max_steps,
        batch_size=p.batch_size, effective_batch=p.effective_batch, max_length=p.max_length,
        threads=p.threads, save_steps=p.save_steps, seed=p.seed, progress=False,
        device="cpu", stop_at=ctx.deadline, precision=p.precision,  # type: ignore[arg-type]
    )  # fmt: skip

    def log(rec: dict[str, Any]) -> None:
        if "loss" in rec:
            ctx.say(f"sft-{mode}: step {rec['step']}/{rec['max_steps']} loss "
                    f"{rec['loss']:.4f} ({rec['elapsed_s']:.0f} s)")  # fmt: skip

    try:
        summary = train_sft(settings, on_log=log)
    except Interrupted as e:
        raise BudgetSpent(f"sft-{mode}: {e}") from e
    final = Path(summary["final_dir"])
    return {**summary, "_output": digest([final])}


def export(ctx: StudyContext, mode: str) -> dict[str, Any]:
    """export/MODE: the trained student merged into one folder (training.export)."""
    from training.export import export_model

    out = ctx.out / "export" / mode
    summary = export_model(out, run_dir=ctx.out / "sft" / mode, mode="merge",
                           name=f"student-{mode}", overwrite=True)  # fmt: skip
    return {**summary, "_output": digest([out / "config.json"])}
