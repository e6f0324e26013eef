"""A candidate process inside a jail, as the host sees it: its pids and its channel."""

from __future__ import annotations

from dataclasses import dataclass

from sandbox.channel import Channel


@dataclass
class Fork:
    """A candidate process inside the jail and its channel."""

    cid: int
    pid: int
    channel: Channel
    dead: bool = False
    """It exited, was killed or broke the protocol: it cannot become the state."""
    spare: bool = False
    """Forked ahead, without code: it waits for `run` (sandbox.spares)."""
    started: bool = True
    """False for a spare given its code until it says `started` (it took the code)."""
    host_pid: int | None = None
    """Its pid on the host, once looked up (spares: the stray killer keeps them)."""

    @property
    def usable(self) -> bool:
        return not self.dead and not self.channel.broken and not self.channel.closed
