"""What a client is told when a component fails, and what only the server log keeps.

A run that fails on the model server or the sandbox carries the component's own error
text (`Trajectory.error`): the model server's internal URL, the operator's hints
("check DISTILLERY_MODEL_API_KEY"), the jail's log tail. None of that helps a client and
some of it is internal, so the 502/503 bodies say what the client can act on (retry
later, shorten the input, report the request id) and these functions log the full text
once, at warning level, with the request id (`distillery.upstream`).

Contract: the returned messages contain no URL and no text of the component's own
error except, for a model server that refused a request as invalid (HTTP 400/422), its
own message with every URL removed (it says what to change: "prompt too long").
"""

from __future__ import annotations

import logging
import re

from agent.trajectory import Trajectory

__all__ = ["MODEL_ERRORS", "SANDBOX_OUTAGES", "model_error_message", "model_outage_message",
           "public_run_error", "sandbox_outage_message", "without_urls"]

SANDBOX_OUTAGES = {"SandboxError", "SandboxSetupError", "WorkerDied"}
"""Error types of a run that ended because the sandbox is unusable."""
MODEL_ERRORS = {"ModelError", "ModelRequestError"}
"""Error types of a run whose model server refused it or answered unusably (not an outage)."""

log = logging.getLogger("distillery.upstream")

_URL = re.compile(r"(?:model server )?(?:https?|wss?)://[^\s'\"()<>]+")
_REJECTED = re.compile(r"rejected the request \(HTTP (\d{3})\): (.*)", re.S)
_HINT = re.compile(r"\.? (?:The request was invalid for this server|Check the ).*$", re.S)


def _log(kind: str, traj: Trajectory) -> None:
    log.warning("%s: %s", kind, traj.error, extra={"fields": {
        "event": "upstream_error", "kind": kind, "error_type": traj.error_type,
        "run_id": traj.id, "detail": traj.error}})


def without_urls(text: str) -> str:
    """`text` with every URL (and a "model server <URL>" before it) said as "the model
    server"."""
    return _URL.sub("the model server", text)


def model_outage_message(traj: Trajectory) -> str:
    """503 model_unavailable: the model server cannot be used right now (the wait is the
    response's Retry-After, which the caller may still replace with the model server's)."""
    _log("model_unavailable", traj)
    return ("the model server is unavailable (a server-side outage, not a fault of this "
            "request); retry after the Retry-After delay")


def model_error_message(traj: Trajectory) -> str:
    """502 model_error: the model server refused the request, or its reply was unusable."""
    _log("model_error", traj)
    found = _REJECTED.search(traj.error or "") if traj.error_type == "ModelRequestError" else None
    if found is not None and found.group(1) in ("400", "413", "422"):
        upstream = without_urls(_HINT.sub("", found.group(2))).strip()[:300]
        return (f"the model server refused the request the agent built from yours (HTTP "
                f"{found.group(1)}): {upstream}; a shorter input or a smaller max_tokens "
                "may fit")
    if found is not None:
        return (f"the model server refused the gateway's request (HTTP {found.group(1)}): "
                "the gateway's model settings are wrong, not this request; report the "
                "request id to the operator")
    return ("the model server sent a reply that could not be used (malformed or cut "
            "short); a server-side fault, not a fault of this request: retry, and report "
            "the request id if it persists")


def sandbox_outage_message(traj: Trajectory) -> str:
    """503 sandbox_unavailable: code cannot be run right now."""
    _log("sandbox_unavailable", traj)
    return ("the sandbox that runs the agent's code is unusable right now (a server-side "
            f"fault: {traj.error_type}); retry shortly, and see GET /readyz")


def public_run_error(traj: Trajectory) -> str | None:
    """A failed run's `error` as a response body shows it (/v1/solve): for the model server
    and the sandbox, what a client can act on (the full text goes to the log); anything
    else without URLs."""
    if traj.error is None:
        return None
    if traj.error_type == "ModelUnavailable":
        return model_outage_message(traj)
    if traj.error_type in MODEL_ERRORS:
        return model_error_message(traj)
    if traj.error_type in SANDBOX_OUTAGES:
        return sandbox_outage_message(traj)
    return without_urls(traj.error)
