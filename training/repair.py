"""Repairing a correct run that ended through the final-answer call (`build-data --repair`).

A small teacher often computes the answer in one step, prints it, and then repeats that step
instead of calling `final_answer`. Stuck detection (agent/agent.py) ends such a run at the
repeat and makes the final-answer call; so does the step limit. The reply to that call is the
teacher's own action `final_answer(...)`, run in the run's state, but the transcript around it
is not one a student should learn: the repeated steps change nothing (same code, same
observation: that is what "stuck" means) and the final-answer prompt ("You have used all your
steps...") never occurs in a normal run.

`repaired_turns` removes exactly those turns: every step flagged `stuck` (its assistant turn
and its observation) and the final-answer prompt, so the transcript reads as the teacher
computing and then answering with `final_answer`. Nothing is rewritten: every kept turn is the
teacher's text verbatim. A trajectory is repairable only when the final-answer reply's code
called `final_answer` and ran (answer_source "final_answer"), the transcript has the layout
the agent writes (one assistant + observation pair per action step), and at least one
non-repeated action step remains. Anything else returns None and the record is dropped for
its finish reason, as without repair.
"""

from __future__ import annotations

from agent.model_client import Message
from agent.trajectory import Trajectory

__all__ = ["REPAIRABLE_FINISHES", "repaired_turns"]

REPAIRABLE_FINISHES = frozenset({"stuck", "max_steps"})


def repaired_turns(traj: Trajectory) -> list[Message] | None:
    """The transcript after the task message (assistant/observation turns, ending on the
    final `final_answer` reply) with repeated steps and the final-answer prompt removed, or
    None when `traj` is not a repairable final-answer-call ending (see the module doc)."""
    if traj.finish_reason not in REPAIRABLE_FINISHES or traj.answer_source != "final_answer":
        return None
    if not traj.steps or traj.steps[-1].kind != "final_answer_call":
        return None
    actions = traj.steps[:-1]
    if any(s.kind != "action" for s in actions):
        return None
    msgs = traj.messages
    # system, task, (assistant, observation) per action step, final prompt, final reply
    if len(msgs) != 2 + 2 * len(actions) + 2:
        return None
    turns: list[Message] = []
    for i, step in enumerate(actions):
        reply, observation = msgs[2 + 2 * i], msgs[3 + 2 * i]
        if reply.get("role") != "assistant" or observation.get("role") != "user":
            return None
        if not step.stuck:
            turns += [dict(reply), dict(observation)]  # type: ignore[list-item]
    prompt, final = msgs[-2], msgs[-1]
    if prompt.get("role") != "user" or final.get("role") != "assistant" or not turns:
        return None
    return [*turns, dict(final)]  # type: ignore[list-item]
