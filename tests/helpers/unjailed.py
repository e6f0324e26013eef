"""The sandbox's unjailed mode for tests that exercise the agent loop, not the jail.

`SandboxExecutor(unjailed_config())` runs the real sandbox worker (fork per candidate,
commit/discard, import allow-list, output cap, tool cache) as a plain subprocess: no
nsjail, no cgroups, no root. It is what `DISTILLERY_EXECUTOR=local` builds. Tests of
isolation (files, network, limits) use the jailed sandbox in tests/sandbox instead.
"""

from __future__ import annotations

import dataclasses

from sandbox.config import SandboxConfig


def unjailed_config(**overrides: object) -> SandboxConfig:
    """An unjailed SandboxConfig with no pre-started workers; `overrides` set other fields."""
    base = SandboxConfig(unjailed=True, pool_size=0)
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]
