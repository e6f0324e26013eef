"""The gateway wired from Settings: `create_app(settings, components=None)`.

`service.app.create_app` takes plain values; this maps Settings onto them and, without
`components`, lets the app build its own at startup. `create_app_from_env` is the uvicorn
factory used with several workers (each worker builds its own components from DISTILLERY_*).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from agent.runtime import Runtime
from distillery.components import build_components, service_config
from distillery.settings import Settings

__all__ = ["create_app", "create_app_from_env"]


def create_app(settings: Settings | None = None, components: Runtime | None = None) -> FastAPI:
    from service.app import create_app as create_service_app

    settings = settings or settings_from_env()
    config = service_config(settings)
    if components is not None:
        return create_service_app(config, components)
    chosen = settings
    return create_service_app(config, build=lambda: build_components(chosen))


def create_app_from_env() -> FastAPI:
    """uvicorn factory (`--factory`): settings from DISTILLERY_* variables."""
    from service.logs import configure_logging

    settings = settings_from_env()
    configure_logging(settings.log_level)
    return create_app(settings)


def settings_from_env() -> Settings:
    no_overrides: dict[str, Any] = {}  # (spelled so that mypy, without the pydantic
    return Settings(**no_overrides)  # plugin, does not demand every field)
