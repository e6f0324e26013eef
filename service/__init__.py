"""The HTTP gateway (FastAPI): /v1/solve, the OpenAI-compatible chat API, probes, metrics.

`create_app(ServiceConfig, components | build=...)` is the whole surface; the composition
root (`distillery.app`) maps Settings onto it. service/ never reads the environment.
"""

__all__ = ["ServiceConfig", "create_app"]

from service.app import create_app
from service.config import ServiceConfig
