"""Every state change of a job, decided once for every store. Pure: no I/O; the caller passes the clock.

Each function returns a :class:`Transition`: the states the job must be in for the write to apply,
the new state and the fields to set. A store only translates it -- into an ``UPDATE … WHERE state
IN (…)`` or a Mongo filter and ``$set`` -- and adds its own fencing (the lease token a write that
leaves ``running`` names). What a node reports when a trial ends (:func:`defer`, :func:`retry`,
:func:`release`) is the state and fields it hands to ``finish``, which the store completes with
:func:`finish`.

A restart moves no job: it enqueues a new pending copy of a final one (``Queue.restart``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from core4nb.job import CLAIMABLE_STATES, OPEN_STATES, SCALAR_FIELDS, Job, JobError, Lease, State, check_transition

RUNNING_ONLY = frozenset({State.RUNNING})


class Transition(NamedTuple):
    """One conditional write: a job in one of ``expect`` becomes ``state`` (None: keeps its state)
    with ``fields`` set and each field of ``bump`` counted up by one. ``kill_requested``: the kill
    flag the job must carry (None: either). A tuple: every claim and finish makes one, cheaply."""

    expect: frozenset[State]
    state: State | None
    fields: Mapping[str, Any]
    bump: tuple[str, ...] = ()
    kill_requested: bool | None = None

    def values(self) -> dict[str, Any]:
        """The fields to set, the new state among them."""
        return dict(self.fields) if self.state is None else {**self.fields, "state": self.state}


def claim(lease: Lease, now: float) -> Transition:
    """A waiting job without a kill request runs under ``lease``: its next trial."""
    return Transition(CLAIMABLE_STATES, State.RUNNING, {"lease": lease, "started_at": now}, bump=("trial",),
                      kill_requested=False)


def waiting_or_killed(state: State, kill_requested: bool) -> State:
    """A job with a kill request is never claimed again, so instead of waiting it is killed."""
    return State.KILLED if kill_requested and state.is_claimable else state


#: What ``finish`` may set besides the state: the job's scalars (not its identity), result, error.
FINISH_FIELDS = frozenset((set(SCALAR_FIELDS) - {"id", "state"}) | {"result", "error", "output"})


def check_finish(state: State | str, fields: Mapping[str, Any]) -> State:
    """Validate a ``finish`` call the same way in every store; return the new state.

    Raises:
        IllegalTransition: ``running → state`` is not allowed.
        TypeError: a field a job does not have (or may not change).
    """
    state = State(state)
    check_transition(State.RUNNING, state)
    unknown = set(fields) - FINISH_FIELDS
    if unknown:
        raise TypeError(f"finish() got unknown job field(s) {sorted(unknown)}; allowed: {sorted(FINISH_FIELDS)}")
    return state


def finish(state: State | str, fields: Mapping[str, Any], now: float) -> list[Transition]:
    """A running job leaves ``running`` for ``state`` (checked by :func:`check_finish`), its lease
    dropped. The store applies the first of these that matches: a job that would wait again has a
    second, for when it carries a kill request (:func:`waiting_or_killed`), so no store reads the
    flag before it writes."""
    state = check_finish(state, fields)
    flags = (False, True) if state.is_claimable else (None,)
    moves = []
    for flag in flags:
        new = waiting_or_killed(state, bool(flag))
        done = {"finished_at": now} if new.is_final else {}
        moves.append(Transition(RUNNING_ONLY, new, {**fields, **done, "lease": None}, kill_requested=flag))
    return moves


def flag_kill() -> Transition:
    """A kill request: every open job is flagged, so none is claimed again (a running one's node kills it)."""
    return Transition(OPEN_STATES, None, {"kill_requested": True})


#: The states in which no process holds a job: a kill request kills it at once.
UNHELD_OPEN_STATES = CLAIMABLE_STATES | {State.GATHERING}


def kill_waiting(now: float) -> Transition:
    """After :func:`flag_kill`: a flagged job that no process holds (waiting to be claimed, or gathering)
    is killed at once. Flag first, then kill: once both writes are done no job of the request is
    waiting, without a transaction."""
    return Transition(UNHELD_OPEN_STATES, State.KILLED, {"finished_at": now}, kill_requested=True)


def gather(failed: Job | None, any_open: bool, now: float) -> Transition | None:
    """What a gathering root becomes once one of its children changed: killed when a child ``failed`` by
    being killed (a cancelled map, a kill request), error when it ended error or inactive -- the store then
    kills the rest of the tree --, complete when no child is open any more, else nothing yet. The children
    are all there: a root is inserted after them."""
    if failed is not None:
        state = State.KILLED if failed.state is State.KILLED else State.ERROR
        return Transition(frozenset({State.GATHERING}), state, {"error": JobError.child_failed(failed),
                                                                "finished_at": now})
    if any_open:
        return None
    return Transition(frozenset({State.GATHERING}), State.COMPLETE, {"finished_at": now, "progress_value": 1.0})


def gone_because(job: Job, now: float, host: str | None, silent: Mapping[str, Lease]) -> str | None:
    """Why a running job's holder counts as gone for :meth:`Store.reap` (None: it does not)."""
    lease, seen = job.lease, silent.get(job.id)
    if seen is not None and (seen.token, seen.beat) == (lease.token, lease.beat):
        return f"its heartbeat count stood at {lease.beat} for over {lease.period:g} s"
    if lease.until < now and (host is None or lease.node == host):
        return f"its lease expired {now - lease.until:.1f} s ago"
    return None


def reap(job: Job, silence: str, now: float) -> Transition:
    """What an expired lease does to a running job: failed (rerun after ``error_time``), or error when its
    lost-node budget (``lost_retries``) is spent -- never its attempts -- or killed when it had a kill
    request. The store conditions it on the lease it judged, and on the same kill flag."""
    lease = job.lease
    died = f"worker {lease.worker} on {lease.node}"
    lost_on = ", ".join(filter(None, [job.lost_on, died]))
    left = max(0, job.lost_left - 1)
    if job.kill_requested:
        state, outcome = State.KILLED, "it had a kill request, so it is killed"
    elif job.lost_left > 0:
        state, outcome = State.FAILED, (f"rerunning in {job.error_time:g} s ({left} of lost_retries="
                                        f"{job.lost_retries} left; its attempts are untouched)")
    else:
        state, outcome = State.ERROR, (f"every node it ran on died under it ({lost_on}): a job that killed every "
                                       f"node it landed on is a poison job; fix it (memory, native crashes), or "
                                       f"raise lost_retries={job.lost_retries}")
    error = JobError("WorkerLost", f"{died} (pid {lease.pid}) stopped heartbeating ({silence}); {outcome}")
    fields = {"error": error, "lost_left": left, "lost_on": lost_on, "lease": None,
              "query_at": now + job.error_time if state is State.FAILED else job.query_at,
              "finished_at": now if state.is_final else job.finished_at}
    return Transition(RUNNING_ONLY, state, fields, kill_requested=job.kill_requested)


def defer(job: Job, message: str, now: float) -> Transition:
    """A trial that asked to run later: deferred for ``defer_time``, or inactive once it has deferred
    for ``defer_max`` (judged here, at the end of a trial: a waiting deferred job may still complete)."""
    since = job.deferred_since or job.started_at or now
    if job.defer_max is not None and now - since >= job.defer_max:
        text = f"deferred for {now - since:.0f} s, past defer_max={job.defer_max:g} s: {message}"
        return Transition(RUNNING_ONLY, State.INACTIVE, {"progress_message": text})
    return Transition(RUNNING_ONLY, State.DEFERRED, {"query_at": now + job.defer_time, "deferred_since": since,
                                                     "progress_message": message})


def retry(job: Job, error: JobError, result: bytes | None, now: float, *, again: bool) -> Transition:
    """A trial that failed: failed (rerun after ``error_time``) while ``again`` and attempts are left, else error."""
    left = job.attempts_left - 1
    state = State.FAILED if again and left > 0 else State.ERROR
    return Transition(RUNNING_ONLY, state, {"error": error, "result": result, "attempts_left": left,
                                            "query_at": now + job.error_time})


def release(job: Job, message: str, claimable_at: float) -> Transition:
    """Back to pending as if never claimed (trial and attempts as they were), claimable at ``claimable_at``."""
    return Transition(RUNNING_ONLY, State.PENDING, {"trial": job.trial - 1, "query_at": claimable_at,
                                                    "progress_message": message})
