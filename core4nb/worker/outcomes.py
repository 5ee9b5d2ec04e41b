"""What a node writes when a trial ends: the job's next state and fields. Pure: no store, no clock
but ``time.time()`` for retry and defer times.

The node turns every ending -- a child's report (:class:`~core4nb.worker.child.Outcome`) or a
child's death -- into a :class:`Write` and keeps it until the store has taken it, so an
outcome survives a store outage; the store applies it only while the job's lease token
still holds (fencing).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

from core4nb import transitions
from core4nb.errors import PayloadError
from core4nb.job import Job, JobError, State, safe_text
from core4nb.worker.child import Outcome, OutcomeKind, exit_description
from core4nb.worker.slot import StopReason

#: A job handed back because this node cannot verify it waits this long before any node tries again.
HAND_BACK_DELAY = 5.0


@dataclass
class Write:
    """One state write a node owes the store: ``job`` (claimed under its lease) → ``state`` with ``fields``."""

    job: Job
    state: State
    fields: dict[str, Any] = field(default_factory=dict)
    tries: int = 0  # refused by a store that answers otherwise (see core4nb.worker.writer)
    retry_at: float = 0.0  # monotonic: not before


def for_outcome(job: Job, outcome: Outcome, key_id: str = "", node: str = "") -> Write:
    """The write for a trial the child reported on: complete, deferred (or inactive), failed or error.
    Its texts are made safe to store first (:func:`~core4nb.job.safe_text`): a job's output can never
    fail the write.

    A payload the node's key (of ``key_id``) cannot verify goes back to the queue, no attempt spent,
    unless the job was signed under that very key id: then its bytes were changed, and it errs. So does
    one the node cannot load because its packages differ from the notebook's (EnvironmentMismatch)."""
    now = time.time()
    if outcome.kind is OutcomeKind.REJECTED and outcome.error.type == "SignatureError" and job.key_id != key_id:
        return hand_back(job, f"node {node} (key id {key_id}) cannot verify its signature (key id "
                         f"{job.key_id or 'not recorded'}): left for a node with the notebook's key", HAND_BACK_DELAY)
    # A node with the notebook's packages may load it:
    if outcome.kind is OutcomeKind.REJECTED and outcome.error.type == "EnvironmentMismatch":
        return hand_back(job, safe_text(f"node {node} cannot load it: {outcome.error.message}")[:500],
                         HAND_BACK_DELAY)
    output, message = safe_text(outcome.output), safe_text(outcome.message)
    if outcome.error is not None or output is not outcome.output or message is not outcome.message:
        error = outcome.error and JobError(*(safe_text(t) for t in (outcome.error.type, outcome.error.message,
                                                                    outcome.error.traceback)), outcome.error.exit_code)
        outcome = dataclasses.replace(outcome, output=output, message=message, error=error)
    if outcome.kind is OutcomeKind.COMPLETE:
        return Write(job, State.COMPLETE, {"result": outcome.result, "runtime": outcome.runtime,
                                           "progress_value": 1.0, "output": outcome.output})
    if outcome.kind is OutcomeKind.DEFERRED:
        move = transitions.defer(job, outcome.message, now)
        return Write(job, move.state, {**move.fields, "runtime": outcome.runtime, "output": outcome.output})
    return failure(job, outcome.error, outcome.result, retry=outcome.kind is OutcomeKind.FAILED,
                   runtime=outcome.runtime, output=outcome.output)


def failure(job: Job, error: JobError, result: bytes | None, *, retry: bool, runtime: float,
            output: str | None = None) -> Write:
    """Failed (retried after error_time) while ``retry`` and attempts are left, else error.
    ``output``: what the trial printed (None: the child died, its output is not known)."""
    move = transitions.retry(job, error, result, time.time(), again=retry)
    fields = {**move.fields, "runtime": runtime}
    return Write(job, move.state, fields if output is None else {**fields, "output": output})


def hand_back(job: Job, message: str, delay: float = 0.0) -> Write:
    """Back to pending as if never claimed (trial and attempts as they were), claimable after ``delay`` s."""
    move = transitions.release(job, message, time.time() + delay)
    return Write(job, move.state, dict(move.fields))


def unstorable(write: Write, exc: Exception, tries: int = 1) -> Write:
    """What a node records when the store refused ``write`` for this job's data (not an outage), ``tries``
    times: the job ends in error saying why, without the data that could not be stored."""
    job, runtime = write.job, write.fields.get("runtime") or 0.0
    times = f" {tries} times" if tries > 1 else ""
    if isinstance(exc, PayloadError):  # a result over the store's size limit: its message says so
        error = JobError("PayloadError", str(exc))
    else:
        error = JobError(type(exc).__name__, safe_text(f"the queue could not store this job's {write.state} "
                                                       f"outcome{times} ({str(exc)[:300]}); its result and "
                                                       "output are lost"))
    return failure(job, error, None, retry=False, runtime=runtime)


def for_death(job: Job, reason: StopReason | None, exitcode: int | None, runtime: float, node: str) -> Write | None:
    """The write for a job whose child died: why it died (the node's ``stop_reason``) decides.

    None for a lost lease: another node owns the job now, so this one writes nothing.
    """
    if reason is StopReason.KILL:
        return Write(job, State.KILLED, {"runtime": runtime,
                                         "error": JobError("Killed", f"killed on request on node {node}")})
    if reason is StopReason.WALL_TIME:
        return failure(job, JobError("WallTimeExceeded", f"ran longer than wall_time={job.wall_time:g} s on node "
                                     f"{node}; raise wall_time or split the work"), None, retry=True, runtime=runtime)
    if reason is StopReason.DRAIN:
        return hand_back(job, f"handed back by stopping node {node}")
    if reason is None:
        return failure(job, JobError("ChildCrashed", f"the process running this job on node {node} "
                                     f"{exit_description(exitcode)}; the node carries on", exit_code=exitcode),
                       None, retry=True, runtime=runtime)
    return None
