"""Errors of the sandbox package."""

from __future__ import annotations


class SandboxError(Exception):
    """Base class of sandbox failures."""


class SandboxSetupError(SandboxError):
    """The sandbox cannot run on this machine (nsjail missing, cgroups not writable, ...).

    The message says what is wrong and how to fix it.
    """


class WorkerDied(SandboxError):
    """A jailed worker's state process is gone (killed, crashed or unresponsive)."""
