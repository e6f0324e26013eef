"""The one settings class: flags override `DISTILLERY_*` environment variables override defaults.

Every component receives plain values from here; nothing else reads the environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from sandbox.config import DEFAULT_ALLOWED_IMPORTS


def default_cache_dir() -> Path:
    import os

    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "distillery"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DISTILLERY_", extra="ignore")

    # --- model ---------------------------------------------------------------
    model_url: str | None = Field(
        None,
        description="OpenAI-compatible base URL (http://vllm:8000/v1); unset = embedded engine",
    )
    model: str | None = Field(None, description="Served model name at model_url")
    model_path: Path | None = Field(None, description="Local HF folder for the in-process engine")
    model_api_key: SecretStr | None = None
    engine_threads: int | None = Field(
        None, ge=1, description="CPU threads of the in-process engine; unset = cores - 1"
    )
    model_timeout_s: float = 120.0
    model_retries: int = 3

    # --- agent / SAG ------------------------------------------------------------
    samples: int = Field(8, ge=1, le=64, description="N candidate actions per step")
    policy: Literal["first", "majority"] = "first"
    max_steps: int = Field(5, ge=1, le=50)
    temperature: float = Field(0.4, ge=0.0, le=2.0)
    top_p: float = Field(0.8, gt=0.0, le=1.0)
    max_tokens: int = Field(1024, ge=1, le=32768)
    seed: int | None = None
    prompt: str = Field("student", description="'student', 'teacher', or a path to a prompt file")
    observation_max_chars: int = Field(8000, ge=200)

    # --- sandbox ---------------------------------------------------------------
    executor: Literal["sandbox", "local"] = Field(
        "sandbox", description="'sandbox' = nsjail; 'local' = unjailed subprocess, development only"
    )
    sandbox_pool_size: int = Field(2, ge=0)
    sandbox_fork_width: int = Field(8, ge=1)
    sandbox_memory_mb: int = Field(512, ge=64)
    sandbox_pids: int = Field(32, ge=4)
    sandbox_step_timeout_s: float = Field(10.0, gt=0)
    sandbox_cpu_s: int = Field(10, ge=1)
    sandbox_file_size_mb: int = Field(16, ge=1)
    sandbox_tmpfs_mb: int = Field(64, ge=1)
    sandbox_output_max_bytes: int = Field(1_000_000, ge=1024)
    sandbox_allowed_imports: list[str] = Field(
        default_factory=lambda: list(DEFAULT_ALLOWED_IMPORTS)
    )

    # --- retrieval -------------------------------------------------------------
    es_url: str | None = Field(None, description="Elasticsearch URL; unset = embedded index")
    es_index: str = "wiki"
    es_api_key: SecretStr | None = None
    index_dir: Path | None = Field(
        None, description="Embedded index folder; unset = the demo index under cache_dir"
    )
    search_k: int = Field(3, ge=1, le=50)
    search_timeout_s: float = Field(10.0, gt=0)

    # --- data / cache ----------------------------------------------------------
    cache_dir: Path = Field(default_factory=default_cache_dir)
    data_dir: Path = Field(
        Path("../shared/data"), description="Benchmark question sets and wiki corpus"
    )

    # --- service ---------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    api_keys: list[SecretStr] = Field(default_factory=list)
    max_concurrency: int = Field(16, ge=1)
    max_queue: int = Field(64, ge=0)
    request_timeout_s: float = Field(300.0, gt=0)
    max_body_bytes: int = Field(1_000_000, ge=1024)
    log_level: str = "info"
