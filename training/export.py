"""Export a trained student as a self-contained Hugging Face folder that vLLM serves.

From an `sft` run directory (or an adapter + base model):
- merged (default for LoRA): the adapter folded into the base weights -> a plain model
  (`vllm serve OUT`, `distillery serve --model-path OUT`);
- adapter: the LoRA adapter alone, for `vllm serve BASE --enable-lora --lora-modules NAME=OUT`;
- full fine-tuning runs are copied (and cast to the requested dtype).

Every export holds safetensors, the tokenizer with its chat template, the generation
config, a model card (README.md: data, settings, final metrics, how to serve) and
`distillery.json` (the same, machine-readable), and `distillery_protocol.json`: the
protocol profile the training data was rendered with (recorded by build-data), which
distillery picks up when it loads this folder. Written to a temp folder and renamed,
so a failed export never leaves a half folder behind.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
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
) -> dict[str, Any]:
    """Write the export; returns its summary (also in OUT/distillery.json). `protocol`: the
    profile to write when the training data records none (else it must agree with it)."""
    from agent.protocol import PROTOCOL_FILE
    from training.build_data import BuildDataError, export_protocol

    started = time.monotonic()
    source = _resolve_source(run_dir, adapter, base)
    _check_export(source, mode)
    try:
        profile, profile_source = export_protocol(source.training, protocol)
    except BuildDataError as e:
        raise ExportError(str(e)) from None
    protocol_info = {**profile.fingerprint(), "file": PROTOCOL_FILE, "source": profile_source}
    out_dir = _prepare_out_dir(Path(out_dir), overwrite)
    name = name or out_dir.name
    as_adapter = source.method == "lora" and mode == "adapter"
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        tokenizer = _load_tokenizer(source)
        if as_adapter:
            _write_adapter(source, tmp)
        else:
            _write_merged(source, dtype, tmp)
        tokenizer.save_pretrained(str(tmp))
        (tmp / PROTOCOL_FILE).write_text(profile.to_json(), encoding="utf-8")
        info = _write_metadata(source, name, as_adapter, dtype, tmp, protocol_info)
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
    }


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


def _write_adapter(source: _Source, tmp: Path) -> None:
    """Copy the LoRA adapter, pointing its config at the base's absolute path."""
    for f in source.trained.iterdir():
        if f.name.startswith("adapter_") or f.name == "README.md":
            shutil.copy2(f, tmp / f.name)
    cfg_path = tmp / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = str(Path(source.base).resolve()) if source.base else None
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
) -> dict[str, Any]:
    """Generation config, distillery.json and the model card; returns distillery.json."""
    base = source.base
    if base is not None and (base / "generation_config.json").is_file():
        shutil.copy2(base / "generation_config.json", tmp / "generation_config.json")
    info = {
        "name": name,
        "format": "adapter" if as_adapter else "model",
        "base_model": str(base) if base else None,
        "method": source.method,
        "dtype": dtype,
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "training": source.training,
        "protocol": protocol,
    }
    (tmp / "distillery.json").write_text(json.dumps(info, indent=2))
    (tmp / "README.md").write_text(model_card(info))
    return info


def _replace_dir(tmp: Path, out_dir: Path) -> None:
    """Put the finished export in place (an old one under --overwrite goes first)."""
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
        f"- data: {', '.join(f'`{p}`' for p in s.get('data', [])) or '-'}: "
        f"{_fmt(d.get('examples'))} conversations {d.get('kinds', {})}, "
        f"{_fmt(d.get('tokens'))} tokens ({_fmt(d.get('learned_tokens'))} learned), "
        f"{_fmt(d.get('dropped_too_long'))} dropped as longer than {_fmt(s.get('max_length'))}",
        f"- lr {_fmt(s.get('learning_rate'))} ({s.get('lr_scheduler')}), epochs "
        f"{_fmt(s.get('epochs'))}, effective batch {_fmt(s.get('effective_batch'))}, "
        f"precision {t.get('precision')}, device {t.get('device')}, seed {_fmt(s.get('seed'))}",
        "",
        "## Final metrics",
        f"- train loss (mean): {_fmt(m.get('train_loss'))}; last logged loss: "
        f"{_fmt(m.get('final_loss'))}",
        f"- steps: {_fmt(m.get('global_step'))}, epochs: {_fmt(m.get('epochs'))}, "
        f"runtime: {_fmt(m.get('runtime_s'))} s, {_fmt(m.get('tokens_per_s'))} tokens/s, "
        f"peak memory {_fmt(m.get('peak_memory_mb'))} MB",
        "",
        "## Serving",
    ]
    proto = info.get("protocol") or {}
    if proto:
        lines += [
            f"Protocol profile: `{proto.get('name')}` (sha256 {str(proto.get('sha256'))[:12]}), "
            f"in `{proto.get('file')}`: every text the student was trained to read. distillery "
            "picks it up when it loads this folder (`--model-path`, or a `--model` name that "
            "is this folder); elsewhere pass `--protocol <this folder>`.",
            "",
        ]
    if info["format"] == "adapter":
        lines += [
            "```",
            f"vllm serve {info.get('base_model')} --enable-lora --max-lora-rank "
            f"{s.get('lora_r', 64)} --lora-modules {name}=<this folder>",
            f'distillery solve --model-url http://HOST:8000/v1 --model {name} "QUESTION"',
            "```",
        ]
    else:
        lines += [
            "```",
            f"vllm serve <this folder> --served-model-name {name}",
            f'distillery solve --model-url http://HOST:8000/v1 --model {name} "QUESTION"',
            'distillery solve --model-path <this folder> "QUESTION"   # in-process',
            "```",
        ]
    return "\n".join(lines) + "\n"
