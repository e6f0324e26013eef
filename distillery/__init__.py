"""The composition root: settings (`DISTILLERY_*`), their mapping onto components, and the CLI.

Everything above the packages lives here: `Settings` owns the configuration,
`build_components` turns it into the model client, executor and retriever an agent run needs,
`create_app` wires the HTTP gateway, and `distillery.cli` holds every command. Nothing below
(service, training, agent, sandbox, retrieval) imports this package.
"""

from distillery.components import ConfigError, build_components
from distillery.settings import Settings

__all__ = ["ConfigError", "Settings", "build_components"]
